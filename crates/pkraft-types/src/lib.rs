//! Domain types shared by every pkraft crate. No IO happens here, beyond reading the wall
//! clock and the system's randomness in one place (`world`).
//!
//! # Layout
//! - [`build`]: which build a node runs (version and commit).
//! - [`ed25519`]: which arithmetic the signature checks run on (AVX-512 IFMA, AVX2, portable).
//! - [`key`]: strict z-base-32 public key parsing, for URL path segments and DNS labels.
//! - [`payload`]: the pkarr relay payload (`signature ‖ timestamp ‖ DNS packet`) and its limits.
//! - [`packet`]: [`VerifiedPacket`], the only way a packet enters the Raft log.
//! - [`ordering`]: the pkarr ordering rule that decides which of two packets for a key wins.
//! - [`command`]: what a Raft log entry carries and what applying it returns.
//! - [`short_lived`]: TXT records at a name until an end, replicated through the log and kept in
//!   each replica's memory.
//! - [`world`]: the wall clock and randomness, the system's or a simulation's.
//! - [`planted`]: bugs this project fixed, which only a simulator's build can put back.

pub mod build;
pub mod clock;
pub mod command;
pub mod compiled;
pub mod ed25519;
pub mod key;
pub mod ordering;
pub mod packet;
pub mod payload;
pub mod planted;
pub mod short_lived;
pub mod world;

pub use build::BuildInfo;
pub use clock::{too_far_ahead, unix_micros_now};
pub use command::{Command, PublishItem};
pub use key::{KeyError, decode_z32_key, encode_z32_key, parse_z32_key};
pub use ordering::{PublishOutcome, decide};
pub use packet::{PacketError, VerifiedPacket};
pub use payload::Payload;

/// The 32 raw bytes of an ed25519 public key: the primary key of every stored packet.
pub type KeyBytes = [u8; 32];
