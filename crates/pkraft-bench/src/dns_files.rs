//! Inputs for DNS benchmarks: a dnsperf query file and a zone file holding the same records, for
//! serving them from a reference server (NSD).

use std::fmt::Write as _;

use crate::dataset::{DataSet, IROH_TTL_SECS};

/// One `_iroh.<z32>.<origin> TXT` line per key, for `dnsperf -d`.
pub fn dnsperf_queries(data: &DataSet, origin: &str) -> String {
    let origin = origin.trim_end_matches('.');
    let mut out = String::new();
    for key in &data.keys {
        let _ = writeln!(out, "_iroh.{}.{origin} TXT", key.z32);
    }
    out
}

/// A zone file for `origin` with the `_iroh` TXT records of `version` of every key, an SOA whose
/// MINIMUM matches pkraft's default negative TTL, and the apex as its own nameserver.
pub fn zone_file(data: &DataSet, origin: &str, version: usize) -> String {
    let origin = origin.trim_end_matches('.');
    let mut out = String::new();
    let _ = writeln!(out, "$ORIGIN {origin}.");
    let _ = writeln!(out, "$TTL 300");
    let _ = writeln!(
        out,
        "@ IN SOA {origin}. hostmaster.{origin}. 1 3600 600 1209600 30"
    );
    let _ = writeln!(out, "@ IN NS {origin}.");
    let _ = writeln!(out, "@ IN A 127.0.0.1");
    for key in &data.keys {
        if let Some(version) = key.versions.get(version) {
            for txt in &version.txt {
                let _ = writeln!(
                    out,
                    "_iroh.{} {IROH_TTL_SECS} IN TXT \"{}\"",
                    key.z32,
                    escape(txt)
                );
            }
        }
    }
    out
}

/// Zone-file string escaping (RFC 1035 §5.1).
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Records;

    #[test]
    fn files_name_every_key() {
        let data = DataSet::generate(3, 2, 7, 1_700_000_000_000_000, 1, Records::NewEachVersion)
            .expect("generate");
        let queries = dnsperf_queries(&data, "pkarr.test.");
        assert_eq!(queries.lines().count(), 3);
        assert!(queries.starts_with(&format!("_iroh.{}.pkarr.test TXT", data.keys[0].z32)));
        let zone = zone_file(&data, "pkarr.test", 1);
        // Key 0 is large: a relay and 16 addresses; the others a relay and 2.
        assert_eq!(
            zone.lines().filter(|l| l.contains(" TXT ")).count(),
            17 + 2 * 3
        );
        assert!(zone.contains("addr=192.0.2.1:10001"));
        assert!(!zone.contains(":10000\""), "only the requested version");
    }
}
