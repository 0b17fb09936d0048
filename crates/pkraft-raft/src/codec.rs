//! Binary encoding of everything the Raft layer writes to disk (postcard: compact, and
//! non-self-describing, so a type change shows up as a decode error instead of silent garbage).

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::NodeId;

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(value)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Wraps any error as an openraft storage error about `subject`.
pub(crate) fn storage_error<E: std::error::Error + 'static>(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    error: &E,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(error)).into()
}

/// A blocking storage task (redb commits fsync) that could not finish: it panicked or the runtime
/// is shutting down.
pub(crate) fn join_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    error: tokio::task::JoinError,
) -> StorageError<NodeId> {
    storage_error(subject, verb, &error)
}
