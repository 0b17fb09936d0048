//! Test helpers shared by pkraft's test suites, the chaos harness and the benchmarks
//! (dev-only).
//!
//! Keys come from a seed so that a failing test reproduces with the same keys; packets are shaped
//! like the ones iroh publishes (`_iroh` TXT records `relay=` / `addr=`). The harness pieces:
//! [`node`] (listen flags and lines, config files), [`process`] (a running node on port 0),
//! [`cluster`] (the one cluster of the integration tests, the chaos harness, the namespace
//! lab and `pkraft-bench cluster`: its members' proxies, configs, data dirs and clocks),
//! [`proxy`] (the fault-injecting peer proxy), [`ports`] (free loopback ports), [`lossy`] (data dirs on a lossy disk), [`netns`] (a network
//! namespace lab and the cluster of its nodes), [`rng`] (a seeded generator that never
//! changes), [`clock`] (a node's wall clock stepped by the test),
//! [`waits`] (the bounds, the poll and the reading of who leads that every cluster runner
//! shares), [`manifest`] (which pkraft crates a manifest depends on, for the layering guards),
//! and [`code_shape`] (function lengths and `impl` blocks, for the code-shape guards).

pub mod clock;
pub mod cluster;
pub mod code_shape;
pub mod damage;
pub mod imports;
pub mod lossy;
pub mod manifest;
pub mod netns;
pub mod node;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod rng;
pub mod waits;

pub use node::LOOPBACK_PORT_0_ARGS;

use bytes::Bytes;
use pkarr::dns::rdata::TXT;
use pkarr::{Keypair, SignedPacket, Timestamp};

/// TTL iroh puts on its records, in seconds.
pub const IROH_TTL_SECS: u32 = 30;

/// A keypair derived from `seed`: the same seed gives the same key in every run.
pub fn keypair(seed: u64) -> Keypair {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&seed.to_le_bytes());
    secret[31] = 0x5a;
    Keypair::from_secret_key(&secret)
}

/// An iroh-style endpoint record: one `_iroh` TXT string per address, signed at `timestamp_micros`.
pub fn iroh_packet(keypair: &Keypair, timestamp_micros: u64, addrs: &[&str]) -> SignedPacket {
    let mut builder = SignedPacket::builder();
    for addr in addrs {
        builder = builder.txt(
            "_iroh".try_into().expect("static name"),
            txt(&format!("addr={addr}")),
            IROH_TTL_SECS,
        );
    }
    builder
        .timestamp(Timestamp::from(timestamp_micros))
        .sign(keypair)
        .expect("small packet signs")
}

/// A single-string TXT record.
pub fn txt(text: &str) -> TXT<'static> {
    let mut txt = TXT::new();
    txt.add_string(text).expect("short ASCII string");
    txt.into_owned()
}

/// A relay payload with a valid signature over arbitrary `dns` bytes, which need not be a DNS
/// packet: for testing what happens after the signature check.
pub fn sign_raw(keypair: &Keypair, timestamp_micros: u64, dns: &[u8]) -> Bytes {
    let mut signable = format!("3:seqi{timestamp_micros}e1:v{}:", dns.len()).into_bytes();
    signable.extend_from_slice(dns);
    let signature = keypair.sign(&signable);
    let mut payload = signature.to_bytes().to_vec();
    payload.extend_from_slice(&timestamp_micros.to_be_bytes());
    payload.extend_from_slice(dns);
    Bytes::from(payload)
}
pub use pkarr;
