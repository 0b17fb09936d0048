//! The peer messages keep their bytes (docs/OPERATIONS.md, "Upgrading": the wire's rules).
//! What a node sends another is postcard, which carries no field names and no version: a
//! release that runs beside the previous one must encode every message that one asks or answers
//! as it does. So a type below never changes in place: a changed message goes under a new route
//! (an older peer answers it 404), or, for a top-level message, a field goes at its end and the
//! newer side reads the shorter form too (`status_wire`, `LegacyForwardedPublish`). These tests
//! pin the bytes of a sample of each message; one failing means a type changed under a route the
//! previous release still uses. (openraft's own messages are pinned by its exact version in
//! Cargo.toml; the log's commands by `commands_keep_their_variant_index`.)

use openraft::{CommittedLeaderId, LogId};
use pkraft_raft_storage::codec::encode;
use pkraft_types::short_lived::ShortLivedRecord;
use pkraft_types::{BuildInfo, Payload, PublishItem, PublishOutcome};
use serde::Serialize;

use crate::cluster_clock::{ClockReport, ClockState};
use crate::membership::{MembershipRequest, NodeStatus};
use crate::peer::{
    ForwardedPublish, LegacyForwardedPublish, PacketCopy, PeerError, WirePublishError,
};
use crate::pre_vote::{PreVoteAnswer, PreVoteRequest};
use crate::short_lived::RecordRequest;
use crate::write_path::{PublishError, Published};
use crate::{LogRepair, MembershipChange};

fn hex(value: &impl Serialize) -> String {
    encode(value)
        .expect("encodes")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a route's request or answer encodes to now, and the bytes pinned for it.
type Pinned = (&'static str, String, String);

/// A log id in the messages that carry one.
fn log_id() -> Option<LogId<u64>> {
    Some(LogId::new(CommittedLeaderId::new(3, 1), 7))
}

/// `pre-vote`, `membership` and `elect` (both answer `Result<(), PeerError>`).
fn election_and_membership() -> Vec<Pinned> {
    vec![
        (
            "pre-vote request",
            hex(&PreVoteRequest {
                candidate: 2,
                term: 5,
                last_log_id: log_id(),
            }),
            "020501030107".to_string(),
        ),
        (
            "pre-vote answer",
            hex(&PreVoteAnswer {
                granted: false,
                reason: Some("r".to_string()),
            }),
            "00010172".to_string(),
        ),
        (
            "membership requests",
            hex(&[
                MembershipRequest {
                    change: MembershipChange::Join {
                        node_id: 4,
                        addr: "a:1".to_string(),
                        voter: true,
                    },
                    forwarded: true,
                },
                MembershipRequest {
                    change: MembershipChange::Promote { node_id: 4 },
                    forwarded: false,
                },
                MembershipRequest {
                    change: MembershipChange::Remove { node_id: 5 },
                    forwarded: false,
                },
            ]),
            "000403613a310101010400020500".to_string(),
        ),
        (
            "membership and elect answers",
            hex(&[Ok(()), Err(PeerError::Refused("r".to_string()))]),
            "0001020172".to_string(),
        ),
    ]
}

/// `short-lived-record(s)`, `packet-check` and every route's error.
fn records_scrub_and_errors() -> Vec<Pinned> {
    let record = ShortLivedRecord {
        name: "n".to_string(),
        value: "v".to_string(),
        until_micros: 9,
    };
    vec![
        (
            "short-lived record",
            hex(&RecordRequest {
                record: record.clone(),
                forwarded: true,
            }),
            "016e01760901".to_string(),
        ),
        (
            "short-lived record answer",
            hex(&Ok::<u64, PeerError>(7)),
            "0007".to_string(),
        ),
        ("packet-check request", hex(&[0xab_u8; 32]), "ab".repeat(32)),
        (
            "short-lived records",
            hex(&vec![record]),
            "01016e017609".to_string(),
        ),
        (
            "packet copies",
            hex(&[
                PacketCopy::Absent,
                PacketCopy::Whole { value_crc: 1 },
                PacketCopy::Damaged { value_crc: 2 },
                PacketCopy::Unreadable,
            ]),
            "000101020203".to_string(),
        ),
        (
            "peer errors",
            hex(&[
                PeerError::NotLeader { leader: Some(1) },
                PeerError::Unavailable("u".to_string()),
                PeerError::Refused("r".to_string()),
                PeerError::Fatal("f".to_string()),
            ]),
            "000101010175020172030166".to_string(),
        ),
    ]
}

/// `publish`: the forwarded request, both forms, and the leader's answers.
fn publish() -> Vec<Pinned> {
    let item = PublishItem {
        key: [0xab; 32],
        payload: Payload::new(vec![0xcd; pkraft_types::payload::HEADER_LEN].into())
            .expect("a payload of the header's length"),
    };
    // A publish item's bytes: its key, the payload's length (a varint: 72) and the payload.
    let (key, payload) = ("ab".repeat(32), "cd".repeat(72));
    let published = |outcome| Published {
        outcome,
        replicas: 3,
        log_index: 8,
    };
    vec![
        (
            "forwarded publish",
            hex(&ForwardedPublish {
                packets: vec![item.clone()],
                answers_no_room: true,
            }),
            format!("01{key}48{payload}01"),
        ),
        (
            "forwarded publish of a build before NoRoom",
            hex(&LegacyForwardedPublish {
                packets: vec![item],
            }),
            format!("01{key}48{payload}"),
        ),
        (
            "publish answers",
            hex(&Ok::<_, PeerError>(vec![
                Ok(published(PublishOutcome::Stored)),
                Ok(published(PublishOutcome::Identical)),
                Ok(published(PublishOutcome::Stale)),
                Err(WirePublishError::Unavailable("u".to_string())),
                Err(WirePublishError::Fatal("f".to_string())),
                Err(WirePublishError::Replica("x".to_string())),
                Err(WirePublishError::NoRoom("n".to_string())),
            ])),
            "00070000030800010308000203080100017501010166010201780103016e".to_string(),
        ),
    ]
}

/// `read-index`, `clock` and `status` (every field of the status set).
fn reads_clock_and_status() -> Vec<Pinned> {
    let status = NodeStatus {
        id: 1,
        role: "leader".to_string(),
        term: 2,
        leader: Some(1),
        last_log_index: Some(10),
        applied_index: Some(9),
        millis_since_leader_contact: Some(0),
        packets: Some(5),
        low_on_disk: true,
        log_repair: Some(LogRepair {
            lost_from: 4,
            lost_through: 6,
            held_through: log_id(),
            vote_term: 3,
        }),
        clock: Some(ClockReport {
            state: ClockState::Offset,
            offset_ms: Some(-2),
        }),
        build: Some(BuildInfo {
            version: "0.2.0".to_string(),
            commit: "c".to_string(),
        }),
    };
    vec![
        (
            "read index",
            hex(&Ok::<Option<u64>, PeerError>(Some(5))),
            "000105".to_string(),
        ),
        (
            "clock",
            hex(&1_700_000_000_000_000_u64),
            "8080f9c0c1c48203".to_string(),
        ),
        (
            "status",
            hex(&status),
            "01066c6561646572020101010a010901000105010104060103010703010101030105302e322e300163"
                .to_string(),
        ),
    ]
}

#[test]
fn the_peer_messages_keep_their_bytes() {
    let changed: Vec<String> = [
        election_and_membership(),
        records_scrub_and_errors(),
        publish(),
        reads_clock_and_status(),
    ]
    .into_iter()
    .flatten()
    .filter(|(_, now, pinned)| now != pinned)
    .map(|(what, now, pinned)| format!("{what}: {now}\n    pinned: {pinned}"))
    .collect();
    assert!(
        changed.is_empty(),
        "peer messages changed their bytes (see this module's docs):\n{}",
        changed.join("\n")
    );
}

/// Goal: a leader's answer to a forwarded publish reads as it did when the errors were the
/// wire's own: each reason's text with its cause, `NoRoom` only to a follower that decodes it
/// (an older one gets `Unavailable` with the same reason), and back on the follower the same
/// variant and text.
#[test]
fn publish_errors_cross_the_wire_as_their_text() {
    use crate::Reason;
    let io = std::io::Error::other("disk on fire");
    let cases = [
        (
            PublishError::Unavailable(Reason::caused("the proposal's task ended", io)),
            true,
            WirePublishError::Unavailable("the proposal's task ended: disk on fire".to_string()),
        ),
        (
            PublishError::Fatal("f".into()),
            true,
            WirePublishError::Fatal("f".to_string()),
        ),
        (
            PublishError::NoRoom("full".to_string()),
            true,
            WirePublishError::NoRoom("full".to_string()),
        ),
        (
            PublishError::NoRoom("full".to_string()),
            false,
            WirePublishError::Unavailable("full".to_string()),
        ),
    ];
    for (local, answers_no_room, wire) in cases {
        assert_eq!(local.to_wire(answers_no_room), wire, "{local:?}");
        let back = PublishError::from_wire(wire.clone());
        assert_eq!(back.to_string(), wire.to_string(), "{wire:?}");
        assert_eq!(
            std::mem::discriminant(&back.to_wire(true)),
            std::mem::discriminant(&wire),
            "{wire:?} comes back as the same variant"
        );
    }
}
