//! The curve points of keys whose packets verified recently, so that a republish does not
//! decompress its key again.
//!
//! A PUT's signature is checked against its key as a curve point, and turning the URL's 32 bytes
//! into that point (a square root in the field) cost 3.9 % of a single node's CPU under `make
//! bench`'s load (`perf`, docs/BENCHMARKS.md "Keys kept as curve points"). An iroh endpoint
//! republishes under the same key every few minutes, so the point is kept, by the key's bytes.
//!
//! Why a hit is safe: the point is a function of the 32 bytes alone, so a hit gives exactly what
//! the decompression would have given; the packet's signature is checked against it as before.
//! Only keys whose packet verified are kept (a key that merely decodes would cost an attacker
//! nothing; this way each entry costs a signature by that key), and the cache is bounded by
//! entries (`http.key_cache_entries`, about [`ENTRY_BYTES`] each), evicting by quick_cache's
//! S3-FIFO policy: scan resistant, so a flood of new keys does not flush the keys that republish.

use pkarr::PublicKey;
use pkraft_types::{KeyBytes, KeyError, VerifiedPacket, decode_z32_key};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Memory to count for one entry: the key (32 bytes) and the point with its compressed form
/// (192) in a quick_cache slot (about 240 bytes), plus the slots of the evicted keys quick_cache
/// remembers (up to half as many again) and the slot array's growth by doubling. With the
/// default 65,536 entries, at most about 32 MiB.
pub const ENTRY_BYTES: usize = 512;

/// See the module docs.
pub struct KeyCache {
    /// `None` when `http.key_cache_entries` is 0: every PUT decompresses its key.
    points: Option<quick_cache::sync::Cache<KeyBytes, PublicKey>>,
    /// `pkraft_http_key_cache_lookups_total{result}`.
    lookups: IntCounterVec,
    hits: IntCounter,
    misses: IntCounter,
}

/// A key parsed from a URL, and whether it came from the cache.
pub struct ParsedKey {
    pub key: PublicKey,
    cached: bool,
}

impl KeyCache {
    /// A cache of at most `entries` points (0: none).
    pub fn new(entries: usize) -> prometheus::Result<KeyCache> {
        let lookups = IntCounterVec::new(
            Opts::new(
                "pkraft_http_key_cache_lookups_total",
                "Relay PUTs whose key's curve point was found among the recently verified keys (hit) or decompressed (miss).",
            ),
            &["result"],
        )?;
        Ok(KeyCache {
            points: (entries > 0).then(|| quick_cache::sync::Cache::new(entries)),
            hits: lookups.with_label_values(&["hit"]),
            misses: lookups.with_label_values(&["miss"]),
            lookups,
        })
    }

    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.lookups.clone()))
    }

    /// The key of a z-base-32 `text`, with the errors of [`pkraft_types::parse_z32_key`].
    pub fn parse(&self, text: &str) -> Result<ParsedKey, KeyError> {
        let bytes = decode_z32_key(text)?;
        if let Some(key) = self.points.as_ref().and_then(|points| points.get(&bytes)) {
            self.hits.inc();
            return Ok(ParsedKey { key, cached: true });
        }
        self.misses.inc();
        let key = PublicKey::try_from(&bytes).map_err(|_| KeyError::InvalidPoint)?;
        Ok(ParsedKey { key, cached: false })
    }

    /// Keeps the point of `packet`'s key, parsed as `parsed`: only a verified packet's key is
    /// kept.
    pub fn keep_verified(&self, parsed: &ParsedKey, packet: &VerifiedPacket) {
        if let (Some(points), false) = (&self.points, parsed.cached) {
            points.insert(packet.key_bytes(), packet.key().clone());
        }
    }

    /// Points held now.
    pub fn len(&self) -> usize {
        self.points.as_ref().map_or(0, |points| points.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pkraft_types::{encode_z32_key, parse_z32_key};

    fn keypair(seed: u8) -> pkarr::Keypair {
        pkarr::Keypair::from_secret_key(&[seed; 32])
    }

    fn z32(seed: u8) -> String {
        encode_z32_key(&keypair(seed).public_key().to_bytes())
    }

    /// A verified packet signed by `seed`'s key.
    fn verified(seed: u8) -> VerifiedPacket {
        let packet = pkraft_testkit::iroh_packet(&keypair(seed), 1_000, &["192.0.2.1:1"]);
        VerifiedPacket::verify(&keypair(seed).public_key(), packet.to_relay_payload())
            .expect("a valid packet")
    }

    #[test]
    fn a_kept_key_is_the_key_parsing_gives() {
        let cache = KeyCache::new(16).expect("metrics");
        let text = z32(1);
        let first = cache.parse(&text).expect("valid key");
        assert!(!first.cached);
        assert!(
            cache.is_empty(),
            "nothing is kept before the packet verified"
        );
        cache.keep_verified(&first, &verified(1));
        let again = cache.parse(&text.to_uppercase()).expect("valid key");
        assert!(again.cached);
        assert_eq!(again.key, parse_z32_key(&text).expect("valid key"));
        assert_eq!((cache.hits.get(), cache.misses.get()), (1, 1));
    }

    #[test]
    fn bad_keys_get_the_errors_of_parsing_and_are_not_kept() {
        let cache = KeyCache::new(16).expect("metrics");
        let not_a_point = (0..=255u8)
            .map(|byte| encode_z32_key(&[byte; 32]))
            .find(|text| parse_z32_key(text) == Err(KeyError::InvalidPoint))
            .expect("some constant byte string is not a point");
        for text in [
            not_a_point,
            z32(2)[1..].to_string(),
            format!("v{}", &z32(2)[1..]),
        ] {
            assert_eq!(
                cache.parse(&text).err(),
                parse_z32_key(&text).err(),
                "{text}"
            );
        }
        assert!(cache.is_empty());
    }

    #[test]
    fn the_cache_holds_at_most_its_entries() {
        let cache = KeyCache::new(8).expect("metrics");
        for seed in 0..64 {
            let parsed = cache.parse(&z32(seed)).expect("valid key");
            cache.keep_verified(&parsed, &verified(seed));
        }
        assert!(cache.len() <= 8, "{} points held", cache.len());

        let off = KeyCache::new(0).expect("metrics");
        let parsed = off.parse(&z32(3)).expect("valid key");
        off.keep_verified(&parsed, &verified(3));
        assert!(!off.parse(&z32(3)).expect("valid key").cached);
        assert_eq!(off.len(), 0);
    }
}
