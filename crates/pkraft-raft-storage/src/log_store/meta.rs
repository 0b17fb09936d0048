//! `raft-log/meta.redb`: the vote, the committed and purged log ids, the node id, the repair
//! pending and the schema version, each a postcard value under its key.

use std::io;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use redb::{Error as DbError, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use openraft::{ErrorSubject, ErrorVerb};

use super::{LOG_SCHEMA_VERSION, Result};
use crate::codec::{decode, encode, storage_error};

pub(super) const META_FILE: &str = "meta.redb";
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

pub(super) const META_VOTE: &str = "vote";
pub(super) const META_COMMITTED: &str = "committed";
pub(super) const META_LAST_PURGED: &str = "last_purged";
pub(super) const META_SCHEMA_VERSION: &str = "schema_version";
pub(super) const META_NODE_ID: &str = "node_id";
pub(super) const META_REPAIR: &str = "repair";
/// Whether the last membership the log held had other voters: then a damaged log can be
/// repaired from them.
pub(super) const META_HAD_PEERS: &str = "had_peers";

/// Opens (or creates) `dir/meta.redb`, checking the log's schema version (written when new).
pub(super) fn open(dir: &Path) -> std::result::Result<Database, DbError> {
    std::fs::create_dir_all(dir)?;
    let db = pkraft_state::create_database(&Database::builder(), &dir.join(META_FILE))?;
    let txn = db.begin_write()?;
    let version = get_meta::<u64>(&txn.open_table(META)?, META_SCHEMA_VERSION)?;
    match version {
        None => put_meta(&txn, META_SCHEMA_VERSION, &LOG_SCHEMA_VERSION)?,
        Some(LOG_SCHEMA_VERSION) => {}
        Some(found) => {
            return Err(DbError::Corrupted(format!(
                "log schema version {found}, this build reads {LOG_SCHEMA_VERSION}"
            )));
        }
    }
    txn.commit()?;
    Ok(db)
}

/// The value under `key`, in a read transaction of its own.
pub(super) fn read_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>> {
    let read = || -> std::result::Result<Option<T>, DbError> {
        let txn = db.begin_read()?;
        get_meta(&txn.open_table(META)?, key)
    };
    read().map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Read, &e))
}

/// The value under `key` in `meta` (a table of a read or a write transaction).
pub(super) fn get_meta<T: DeserializeOwned>(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> std::result::Result<Option<T>, DbError> {
    let value = meta.get(key)?;
    value.map(|v| decode_db(v.value())).transpose()
}

/// Sets `key` to `value` in `txn`.
pub(super) fn put_meta<T: Serialize>(
    txn: &WriteTransaction,
    key: &str,
    value: &T,
) -> std::result::Result<(), DbError> {
    txn.open_table(META)?
        .insert(key, encode_db(value)?.as_slice())?;
    Ok(())
}

/// Undecodable bytes in the meta database mean the file is corrupt.
pub(super) fn decode_db<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, DbError> {
    decode(bytes).map_err(|e| DbError::Corrupted(format!("log meta record: {e}")))
}

pub(super) fn encode_db<T: Serialize>(value: &T) -> std::result::Result<Vec<u8>, DbError> {
    encode(value).map_err(|e| DbError::Io(io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A downgrade onto a log of a later schema: refused at open, naming both versions, the
    /// file left as it was.
    #[test]
    fn a_log_of_a_later_schema_is_refused_naming_both_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open(dir.path()).expect("a new log"));
        let later = LOG_SCHEMA_VERSION + 1;
        {
            let db = Database::create(dir.path().join(META_FILE)).expect("meta.redb");
            let txn = db.begin_write().expect("txn");
            put_meta(&txn, META_SCHEMA_VERSION, &later).expect("put");
            txn.commit().expect("commit");
        }
        let err = open(dir.path()).expect_err("refused");
        let want = format!("log schema version {later}, this build reads {LOG_SCHEMA_VERSION}");
        assert!(err.to_string().contains(&want), "{err}");
        let db = Database::create(dir.path().join(META_FILE)).expect("meta.redb");
        let txn = db.begin_read().expect("txn");
        let version = get_meta::<u64>(&txn.open_table(META).expect("table"), META_SCHEMA_VERSION);
        assert_eq!(version.expect("read"), Some(later));
    }
}
