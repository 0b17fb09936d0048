//! `pkraft-chaos check` over saved histories: the exit status and report a user sees when
//! re-checking a failing run's history.

use std::process::Command;

use pkraft_chaos::history::{self, Op, OpKind, PutOutcome, ReadOutcome};

fn op(invoke_us: u64, complete_us: u64, kind: OpKind) -> Op {
    Op {
        client: 0,
        key: 0,
        node: 1,
        incarnation: 1,
        invoke_us,
        complete_us,
        kind,
    }
}

fn check(ops: &[Op]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("history.jsonl");
    history::save(&path, ops).expect("save history");
    let output = Command::new(env!("CARGO_BIN_EXE_pkraft-chaos"))
        .arg("check")
        .arg(&path)
        .output()
        .expect("run pkraft-chaos");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn a_stale_linearizable_read_fails_the_check_and_names_the_operations() {
    let ops = [
        op(
            0,
            10,
            OpKind::Put {
                version: 5,
                outcome: PutOutcome::Stored,
            },
        ),
        op(
            20,
            30,
            OpKind::Put {
                version: 7,
                outcome: PutOutcome::Stored,
            },
        ),
        op(
            40,
            50,
            OpKind::LinearizableGet(ReadOutcome::Found {
                version: 5,
                matches_proposed: true,
            }),
        ),
    ];
    let (code, stdout) = check(&ops);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("VIOLATION [linearizability] key 0"),
        "{stdout}"
    );
    assert!(stdout.contains("LinearizableGet"), "{stdout}");
}

#[test]
fn a_clean_history_passes_the_check() {
    let ops = [
        op(
            0,
            10,
            OpKind::Put {
                version: 5,
                outcome: PutOutcome::Stored,
            },
        ),
        op(
            5,
            25,
            OpKind::Put {
                version: 4,
                outcome: PutOutcome::Conflict,
            },
        ),
        op(
            12,
            14,
            OpKind::Dns(ReadOutcome::Found {
                version: 5,
                matches_proposed: true,
            }),
        ),
        op(
            40,
            50,
            OpKind::LinearizableGet(ReadOutcome::Found {
                version: 5,
                matches_proposed: true,
            }),
        ),
    ];
    let (code, stdout) = check(&ops);
    assert_eq!(code, Some(0), "{stdout}");
}
