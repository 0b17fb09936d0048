//! Helpers for everything the Raft layer writes to disk: the binary encoding (postcard: compact,
//! and non-self-describing, so a type change shows up as a decode error instead of silent
//! garbage), and running blocking storage work off the async workers. [`encode`] and [`decode`]
//! are also the peer wire's encoding (pkraft-raft's RPC bodies) and the backup header's: a
//! change here changes those too.

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::type_config::NodeId;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `value` in postcard: log entries, the vote, snapshot metadata, peer messages.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(value)
}

/// What [`encode`] wrote; bytes of another type or layout are an error, not a value.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Wraps an error as an openraft storage error about `subject`.
pub(crate) fn storage_error<E: std::error::Error + 'static>(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    error: &E,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(error)).into()
}

/// Runs `work` on tokio's blocking pool (inline in a simulation: `pkraft_tasks::blocking`): redb commits wait for fsync (p99 9–26 ms on these
/// machines) and must not stall the runtime's worker threads, which also serve HTTP and DNS.
pub(crate) async fn blocking<T, F>(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    work: F,
) -> Result<T, StorageError<NodeId>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, BoxError> + Send + 'static,
{
    match pkraft_tasks::blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        // The cause's chain is kept (its type name is not: it is boxed).
        Ok(Err(e)) => Err(StorageIOError::new(subject, verb, AnyError::from_dyn(&*e, None)).into()),
        // The work panicked or the runtime is shutting down.
        Err(join) => Err(storage_error(subject, verb, &join)),
    }
}

#[cfg(test)]
mod tests {
    use pkraft_types::Command;
    use pkraft_types::short_lived::ShortLivedRecord;

    use super::*;

    /// The log's commands keep their encoding: a variant's index is its first byte, so a
    /// command added anywhere but last would make every replica read old entries as another
    /// command. `ShortLivedRecord` is the fourth (builds before issue 51 wrote the same bytes under
    /// another name, which must keep reading as this).
    #[test]
    fn commands_keep_their_variant_index() {
        let expire = Command::Expire {
            before_micros: 1,
            limit: 2,
        };
        assert_eq!(encode(&expire).expect("encodes"), [1, 1, 2]);
        let record = Command::ShortLivedRecord(ShortLivedRecord {
            name: "n".to_string(),
            value: "v".to_string(),
            until_micros: 3,
        });
        let bytes = encode(&record).expect("encodes");
        assert_eq!(bytes, [3, 1, b'n', 1, b'v', 3]);
        assert_eq!(decode::<Command>(&bytes).expect("decodes"), record);
    }
}
