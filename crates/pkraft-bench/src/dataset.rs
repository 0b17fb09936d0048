//! The benchmark data set: `keys` keypairs derived from a seed, each with `versions` signed
//! packets shaped like iroh's, with increasing timestamps. Generated once and written to a file,
//! so that signing stays out of every measurement and every system gets the same bytes.

use std::path::Path;

use anyhow::Context;
use pkarr::dns::rdata::TXT;
use pkarr::{Keypair, SignedPacket, Timestamp};
use serde::{Deserialize, Serialize};

/// TTL iroh puts on its records, in seconds.
pub const IROH_TTL_SECS: u32 = 30;
/// Microseconds between the timestamps of consecutive versions of one key.
const VERSION_STEP_MICROS: u64 = 1_000_000;

#[derive(Debug, Serialize, Deserialize)]
pub struct DataSet {
    pub seed: u64,
    pub keys: Vec<KeyData>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KeyData {
    /// The public key, z-base-32.
    pub z32: String,
    /// Oldest first: each version's timestamp is larger than the one before.
    pub versions: Vec<Version>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Version {
    /// The relay payload (PUT body).
    pub payload: Vec<u8>,
    /// The `_iroh` TXT strings in the packet, for zone files and visibility checks.
    pub txt: Vec<String>,
}

/// What the versions of a key carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Records {
    /// Each version's records differ from the one before (its `addr=` ports), so that a reader
    /// can tell which version it was answered (the visibility checks need it).
    #[default]
    NewEachVersion,
    /// Every version carries version 0's records under a new timestamp and signature: iroh's
    /// republish of an endpoint whose addresses did not change.
    Unchanged,
}

impl DataSet {
    /// Signs `keys × versions` packets. Version `v` of every key is signed at
    /// `base_time_micros + v` seconds; each packet has one `relay=` and two `addr=` strings, and
    /// the first `large_keys` keys [`LARGE_ADDRS`] `addr=` strings (an answer too large for a
    /// UDP message without EDNS); `records` says whether the versions' records differ.
    pub fn generate(
        keys: usize,
        versions: usize,
        seed: u64,
        base_time_micros: u64,
        large_keys: usize,
        records: Records,
    ) -> anyhow::Result<DataSet> {
        let mut data = Vec::with_capacity(keys);
        for index in 0..keys {
            let keypair = keypair(seed, index as u64);
            let mut key_versions = Vec::with_capacity(versions);
            for version in 0..versions {
                let addrs = if index < large_keys { LARGE_ADDRS } else { 2 };
                let records_of = match records {
                    Records::NewEachVersion => version,
                    Records::Unchanged => 0,
                };
                let txt = iroh_strings(index, records_of, addrs);
                let timestamp = base_time_micros + version as u64 * VERSION_STEP_MICROS;
                let packet = sign(&keypair, &txt, timestamp)?;
                key_versions.push(Version {
                    payload: packet.to_relay_payload().to_vec(),
                    txt,
                });
            }
            data.push(KeyData {
                z32: keypair.public_key().to_z32(),
                versions: key_versions,
            });
        }
        Ok(DataSet { seed, keys: data })
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let bytes = postcard::to_stdvec(self).context("encode data set")?;
        std::fs::write(path, bytes).with_context(|| format!("write {}", path.display()))
    }

    pub fn read(path: &Path) -> anyhow::Result<DataSet> {
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        postcard::from_bytes(&bytes)
            .with_context(|| format!("{} is not a data set", path.display()))
    }

    /// Number of versions every key has.
    pub fn version_count(&self) -> usize {
        self.keys.first().map_or(0, |k| k.versions.len())
    }

    /// Checks that `version` exists for every key.
    pub fn check_version(&self, version: usize) -> anyhow::Result<()> {
        let count = self.version_count();
        anyhow::ensure!(
            version < count,
            "version {version} requested; the data set has {count} (0..{count})"
        );
        Ok(())
    }
}

/// The keypair for key `index` of a data set: the same seed gives the same keys in every run.
fn keypair(seed: u64, index: u64) -> Keypair {
    let mut secret = [0x42u8; 32];
    secret[..8].copy_from_slice(&seed.to_le_bytes());
    secret[8..16].copy_from_slice(&index.to_le_bytes());
    Keypair::from_secret_key(&secret)
}

/// iroh's `_iroh` TXT strings: a relay URL and one `addr=` per direct address. The port changes
/// with the version so that every version is a different record.
/// `addr=` strings in a large key's packet: its answer is about 800 bytes.
pub const LARGE_ADDRS: usize = 16;

/// One `relay=` and `addrs` `addr=` strings (IPv4 and IPv6 in turn, unique per key and version).
fn iroh_strings(index: usize, version: usize, addrs: usize) -> Vec<String> {
    let port = 10_000 + version;
    let mut strings = vec!["relay=https://relay.bench.test./".to_string()];
    for n in 0..addrs {
        strings.push(if n % 2 == 0 {
            format!("addr=192.0.{}.{}:{port}", n / 2 + 2, index % 250 + 1)
        } else {
            match n / 2 {
                0 => format!("addr=[2001:db8::{:x}]:{port}", index + 1),
                block => format!("addr=[2001:db8:{block:x}::{:x}]:{port}", index + 1),
            }
        });
    }
    strings
}

fn sign(
    keypair: &Keypair,
    strings: &[String],
    timestamp_micros: u64,
) -> anyhow::Result<SignedPacket> {
    let mut builder = SignedPacket::builder();
    for string in strings {
        let mut txt = TXT::new();
        txt.add_string(string).context("TXT string")?;
        builder = builder.txt(
            "_iroh".try_into().context("name")?,
            txt.into_owned(),
            IROH_TTL_SECS,
        );
    }
    builder
        .timestamp(Timestamp::from(timestamp_micros))
        .sign(keypair)
        .context("sign packet")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With unchanged records the versions of a key differ in their signature and timestamp
    /// only (the relay payload's first 72 bytes): the DNS message after them is the same, as the
    /// store's check for a republish of the same records compares it. By default it differs.
    #[test]
    fn unchanged_records_differ_only_in_signature_and_timestamp() {
        let header = 64 + 8;
        for (records, same) in [(Records::Unchanged, true), (Records::NewEachVersion, false)] {
            let data =
                DataSet::generate(2, 3, 7, 1_700_000_000_000_000, 1, records).expect("generate");
            for key in &data.keys {
                let first = &key.versions[0].payload;
                for version in &key.versions[1..] {
                    assert_ne!(version.payload[..header], first[..header], "{records:?}");
                    assert_eq!(
                        version.payload[header..] == first[header..],
                        same,
                        "{records:?}"
                    );
                }
            }
        }
    }
}
