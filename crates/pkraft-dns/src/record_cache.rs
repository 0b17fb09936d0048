//! [`RecordCache`]: the parsed DNS records of recently asked keys, so that a query does not read
//! the store and parse the packet again.
//!
//! Each entry carries the [`KeyVersion`] read before its packet was read, and is served only while
//! the store still reports that version: a packet applied to the local replica retires the
//! entries of its key at once, so an answer never lags the replica. Keys with no packet are cached
//! too (a resolver asking again for a key that is not published yet is common).
//!
//! The bound is in bytes, estimated per entry from the stored payload and the records parsed from
//! it; quick_cache evicts by its S3-FIFO policy once the bound is reached (scan resistant: a
//! stream of keys asked once does not push out the keys asked again and again).

use std::mem::size_of;
use std::sync::Arc;

use hickory_proto::rr::Record;
use pkraft_state::{KeyVersion, Store, StoreError};
use pkraft_types::KeyBytes;
use pkraft_types::packet::{PacketError, dns_records};

/// The records of one key's packet, shared by the cache and the queries answered from it.
pub type Records = Arc<[Record]>;

/// What the cache keeps for one key.
#[derive(Debug)]
struct Entry {
    version: KeyVersion,
    /// `None`: no packet is stored for the key.
    records: Option<Records>,
    weight: u32,
}

/// Why the records of a key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("store read: {0}")]
    Store(#[from] StoreError),
    #[error("stored packet does not parse: {0}")]
    Packet(#[from] PacketError),
}

/// The records of recently asked keys; see the module docs.
pub struct RecordCache {
    store: Store,
    /// `None` when the bound is 0: every query reads the store.
    entries: Option<quick_cache::sync::Cache<KeyBytes, Arc<Entry>, Weight>>,
}

/// Fixed cost of an entry beyond its records: the key, the `Arc`s and the map's own slot (an
/// estimate; a cached miss costs about this much, so a flood of random keys stays bounded).
const ENTRY_OVERHEAD: usize = 384;
/// The weight of an iroh-sized packet's entry, to size the map up front.
const TYPICAL_ENTRY_BYTES: u64 = 1_024;

/// An entry's weight against the bound, computed once when it is made.
#[derive(Clone, Copy)]
struct Weight;

impl quick_cache::Weighter<KeyBytes, Arc<Entry>> for Weight {
    fn weight(&self, _key: &KeyBytes, entry: &Arc<Entry>) -> u64 {
        u64::from(entry.weight)
    }
}

impl RecordCache {
    /// A cache over `store` holding about `max_bytes` of entries (0: no cache).
    pub fn new(store: Store, max_bytes: u64) -> Self {
        let entries = (max_bytes > 0).then(|| {
            let estimated_entries = usize::try_from(max_bytes / TYPICAL_ENTRY_BYTES)
                .unwrap_or(usize::MAX)
                .max(16);
            quick_cache::sync::Cache::with_weighter(estimated_entries, max_bytes, Weight)
        });
        RecordCache { store, entries }
    }

    /// The records of the packet stored for `key` (`None`: no packet), as the local replica has
    /// them now.
    pub fn records(&self, key: &KeyBytes) -> Result<Option<Records>, LookupError> {
        Ok(self.versioned(key)?.1)
    }

    /// [`RecordCache::records`], with the key's version read before them: an answer built from
    /// these records stays current while the store reports that version.
    pub fn versioned(&self, key: &KeyBytes) -> Result<(KeyVersion, Option<Records>), LookupError> {
        // Before the store read: a change committed after this point moves the version on.
        let version = self.store.key_version(key);
        let Some(entries) = &self.entries else {
            return Ok((version, read(&self.store, key)?.0));
        };
        if let Some(entry) = entries.get(key)
            && entry.version == version
        {
            return Ok((version, entry.records.clone()));
        }
        let (records, payload_len) = read(&self.store, key)?;
        let weight = ENTRY_OVERHEAD
            + payload_len
            + records
                .as_ref()
                .map_or(0, |r| r.len() * (size_of::<Record>() + 64));
        let entry = Entry {
            version,
            records: records.clone(),
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
        };
        entries.insert(*key, Arc::new(entry));
        Ok((version, records))
    }

    /// Entries held and their estimated bytes.
    pub fn size(&self) -> (u64, u64) {
        self.entries.as_ref().map_or((0, 0), |entries| {
            (
                u64::try_from(entries.len()).unwrap_or(u64::MAX),
                entries.weight(),
            )
        })
    }

    /// The store the records are read from.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Entries held; for tests.
    pub fn entry_count(&self) -> u64 {
        self.size().0
    }
}

/// The parsed records of `key`'s packet and the payload's length (for the weight).
fn read(store: &Store, key: &KeyBytes) -> Result<(Option<Records>, usize), LookupError> {
    // A synchronous redb read on an async worker: an MVCC read of one key from the page cache
    // takes microseconds and never waits for the writer, so it is cheaper than a hop to the
    // blocking pool.
    let Some(stored) = store.get(key)? else {
        return Ok((None, 0));
    };
    let records = dns_records(&stored.payload)?;
    Ok((Some(records.into()), stored.payload.byte_len()))
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::RData;
    use pkraft_testkit::{iroh_packet, keypair};
    use pkraft_types::{Command, Payload, PublishItem};

    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.redb")).expect("open");
        (dir, store)
    }

    fn apply(store: &Store, command: Command) {
        let mut txn = store.begin_apply(false).expect("begin");
        txn.apply(&command).expect("apply");
        txn.commit(b"state").expect("commit");
    }

    /// Publishes version `timestamp` of key `seed`, with one `addr=` naming the timestamp.
    fn publish(store: &Store, seed: u64, timestamp: u64) -> KeyBytes {
        let kp = keypair(seed);
        let addr = format!("192.0.2.1:{timestamp}");
        let payload = iroh_packet(&kp, timestamp, &[&addr]).to_relay_payload();
        let key = kp.public_key().to_bytes();
        apply(
            store,
            Command::Publish {
                leader_time_micros: timestamp,
                packets: vec![PublishItem {
                    key,
                    payload: Payload::new(payload).expect("length"),
                }],
            },
        );
        key
    }

    /// The port of the `addr=` in the cached `_iroh` TXT record: the packet's timestamp.
    fn served_timestamp(cache: &RecordCache, key: &KeyBytes) -> Option<u64> {
        let records = cache.records(key).expect("lookup")?;
        let RData::TXT(txt) = &records[0].data else {
            panic!("not a TXT record: {records:?}");
        };
        let text = txt.to_string();
        let port = text.rsplit(':').next().expect("addr=ip:port");
        Some(port.trim_matches('"').parse().expect("a port"))
    }

    #[test]
    fn an_applied_packet_replaces_the_cached_one_at_once() {
        let (_dir, store) = open();
        let cache = RecordCache::new(store.clone(), 1 << 20);
        let key = publish(&store, 1, 1_000);
        assert_eq!(served_timestamp(&cache, &key), Some(1_000));
        assert_eq!(
            served_timestamp(&cache, &key),
            Some(1_000),
            "from the cache"
        );
        assert_eq!(cache.entry_count(), 1);

        publish(&store, 1, 2_000);
        assert_eq!(served_timestamp(&cache, &key), Some(2_000));
    }

    #[test]
    fn a_cached_miss_ends_when_the_key_is_published_and_returns_when_it_expires() {
        let (_dir, store) = open();
        let cache = RecordCache::new(store.clone(), 1 << 20);
        let key = keypair(2).public_key().to_bytes();
        assert_eq!(served_timestamp(&cache, &key), None);

        publish(&store, 2, 5_000);
        assert_eq!(served_timestamp(&cache, &key), Some(5_000));

        apply(
            &store,
            Command::Expire {
                before_micros: 6_000,
                limit: 10,
            },
        );
        assert_eq!(served_timestamp(&cache, &key), None);
    }

    #[test]
    fn an_imported_snapshot_replaces_every_cached_key() {
        let (_dir, store) = open();
        let cache = RecordCache::new(store.clone(), 1 << 20);
        let key = publish(&store, 3, 1_000);
        assert_eq!(served_timestamp(&cache, &key), Some(1_000));

        // A snapshot from another replica that holds a newer version.
        let (_other_dir, other) = open();
        publish(&other, 3, 7_000);
        let snapshot = other.export_snapshot().expect("export");
        store
            .import_snapshot(&snapshot.data, b"state")
            .expect("import");
        assert_eq!(served_timestamp(&cache, &key), Some(7_000));
    }

    /// The race a version check exists for: a reader reads the old packet, the new one commits,
    /// and only then does the reader fill the cache. The writer must still read its own write.
    /// Method: readers hammer the key while the writer publishes versions one by one and reads
    /// each back through the cache (bounded: 150 versions).
    #[test]
    fn a_reader_that_read_before_a_commit_never_hides_it() {
        let (_dir, store) = open();
        let cache = Arc::new(RecordCache::new(store.clone(), 1 << 20));
        let key = publish(&store, 4, 1);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (cache, done) = (cache.clone(), done.clone());
                std::thread::spawn(move || {
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        cache.records(&key).expect("lookup");
                    }
                })
            })
            .collect();
        for timestamp in 2..=150 {
            publish(&store, 4, timestamp);
            assert_eq!(served_timestamp(&cache, &key), Some(timestamp));
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        for reader in readers {
            reader.join().expect("reader");
        }
    }

    #[test]
    fn a_zero_bound_reads_the_store_every_time() {
        let (_dir, store) = open();
        let cache = RecordCache::new(store.clone(), 0);
        let key = publish(&store, 5, 1_000);
        assert_eq!(served_timestamp(&cache, &key), Some(1_000));
        assert_eq!(cache.entry_count(), 0);
    }
}
