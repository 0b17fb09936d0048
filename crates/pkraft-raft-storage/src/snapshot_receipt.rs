//! A follower checks a snapshot as its chunks arrive from the leader, before openraft installs
//! it: a damaged snapshot handed to openraft's install fails as a storage error, which openraft
//! takes as fatal (the follower would exit, and again at every retry). Refused here instead, the
//! leader sees a failed transfer, and sends its snapshot again from the start, checking it
//! first and building a new one if it is its own copy that is damaged (`state_machine`).

use std::sync::Mutex;

use pkraft_state::{StreamCheck, StreamVerdict};

use crate::state_machine::snapshot_bytes_in_id;

/// The snapshot being received, if its chunks have come in order from the start.
#[derive(Default)]
pub struct SnapshotReceipt {
    current: Mutex<Option<Receiving>>,
}

struct Receiving {
    snapshot_id: String,
    next_offset: u64,
    check: StreamCheck,
}

impl SnapshotReceipt {
    /// Takes the chunk at `offset` of snapshot `snapshot_id`. For the last chunk (`done`), says
    /// whether the whole snapshot may be installed: `Err` with the reason if it failed its check,
    /// or if its chunks did not all come in order (then the leader's next attempt, which starts
    /// over, is checked).
    pub fn chunk(
        &self,
        snapshot_id: &str,
        offset: u64,
        data: &[u8],
        done: bool,
    ) -> Result<(), String> {
        let Ok(mut current) = self.current.lock() else {
            return Err("the snapshot check panicked earlier".to_string());
        };
        if offset == 0 {
            *current = Some(Receiving {
                snapshot_id: snapshot_id.to_string(),
                next_offset: 0,
                check: StreamCheck::default(),
            });
        }
        let end = offset.saturating_add(data.len() as u64);
        // A snapshot id names its size (builds since the disk-space checks): no chunk may end
        // past it, or a leader could stream far more than the room checked for it.
        let named = snapshot_bytes_in_id(snapshot_id);
        if let Some(named) = named
            && end > named
        {
            *current = None;
            return Err(format!(
                "snapshot {snapshot_id}: a chunk at byte {offset} of {} bytes ends past the \
                 {named} bytes its id names: refused",
                data.len()
            ));
        }
        match current.as_mut() {
            Some(receiving)
                if receiving.snapshot_id == snapshot_id && receiving.next_offset == offset =>
            {
                receiving.check.update(data);
                receiving.next_offset = end;
            }
            // The leader sent a chunk again (its first try timed out): counted already.
            Some(receiving)
                if receiving.snapshot_id == snapshot_id && receiving.next_offset == end => {}
            _ => *current = None,
        }
        if !done {
            return Ok(());
        }
        let Some(receiving) = current.take() else {
            return Err(format!(
                "snapshot {snapshot_id}: its chunks did not all arrive in order, so it cannot \
                 be checked: send it again from the start"
            ));
        };
        if let Some(named) = named
            && receiving.next_offset != named
        {
            return Err(format!(
                "snapshot {snapshot_id}: {} bytes received, its id names {named}: refused",
                receiving.next_offset
            ));
        }
        match receiving.check.verdict() {
            StreamVerdict::Intact | StreamVerdict::Unchecked => Ok(()),
            StreamVerdict::Damaged(why) => Err(format!(
                "snapshot {snapshot_id} is damaged ({why}): refused; send it again"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = pkraft_state::Store::open(&dir.path().join("s.redb")).expect("store");
        store.export_snapshot().expect("export").data
    }

    fn send(receipt: &SnapshotReceipt, id: &str, data: &[u8], chunk: usize) -> Result<(), String> {
        let pieces: Vec<&[u8]> = data.chunks(chunk).collect();
        let mut offset = 0;
        for (i, piece) in pieces.iter().enumerate() {
            let done = i + 1 == pieces.len();
            let verdict = receipt.chunk(id, offset, piece, done);
            if done {
                return verdict;
            }
            verdict.expect("only the last chunk is judged");
            offset += piece.len() as u64;
        }
        unreachable!("a snapshot has at least one chunk")
    }

    #[test]
    fn an_intact_snapshot_passes_and_a_damaged_one_is_refused() {
        let data = snapshot();
        let receipt = SnapshotReceipt::default();
        assert_eq!(send(&receipt, "a", &data, 5), Ok(()));
        let mut damaged = data.clone();
        damaged[10] ^= 1;
        let refused = send(&receipt, "b", &damaged, 5).expect_err("damaged");
        assert!(refused.contains("damaged"), "{refused}");
        // The leader's next attempt starts over and is judged on its own.
        assert_eq!(send(&receipt, "b", &data, 7), Ok(()));
    }

    #[test]
    fn a_chunk_sent_again_is_counted_once_and_a_gap_refuses_the_end() {
        let data = snapshot();
        assert!(data.len() > 8);
        let receipt = SnapshotReceipt::default();
        receipt.chunk("a", 0, &data[..4], false).expect("first");
        receipt
            .chunk("a", 0, &data[..4], false)
            .expect("again: starts over");
        receipt.chunk("a", 4, &data[4..8], false).expect("second");
        receipt
            .chunk("a", 4, &data[4..8], false)
            .expect("second again");
        assert_eq!(receipt.chunk("a", 8, &data[8..], true), Ok(()));

        receipt.chunk("c", 0, &data[..4], false).expect("first");
        // A chunk missing: the end cannot be judged, so it is refused.
        let refused = receipt.chunk("c", 8, &data[8..], true).expect_err("a gap");
        assert!(refused.contains("in order"), "{refused}");
        // And its retry too, until the transfer starts over.
        assert!(receipt.chunk("c", 8, &data[8..], true).is_err());
    }

    /// A leader names its snapshot's size in the id, and the room for it is checked against
    /// that: a chunk ending past it (the fault: a leader streaming more than it named) is
    /// refused, and so is a last chunk that ends short of it.
    #[test]
    fn a_snapshot_longer_or_shorter_than_its_id_names_is_refused() {
        let data = snapshot();
        let len = data.len() as u64;
        let receipt = SnapshotReceipt::default();
        assert_eq!(
            send(&receipt, &format!("T1-N1-5-7-{len}b"), &data, 5),
            Ok(())
        );
        let longer = send(&receipt, &format!("T1-N1-5-8-{}b", len - 1), &data, 5)
            .expect_err("more bytes than named");
        assert!(longer.contains("ends past"), "{longer}");
        let shorter = send(&receipt, &format!("T1-N1-5-9-{}b", len + 1), &data, 5)
            .expect_err("fewer bytes than named");
        assert!(shorter.contains("bytes received"), "{shorter}");
        // An id that names no size (an older build's) is judged by its check alone.
        assert_eq!(send(&receipt, "T1-N1-5-10", &data, 5), Ok(()));
    }
}
