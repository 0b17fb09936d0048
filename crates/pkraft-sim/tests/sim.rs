//! Goal: the real node code forms a cluster and replicates under the simulation: three nodes on
//! turmoil's network and paused clocks, node 2 and 3 joining node 1 through their peer
//! clients, every packet acknowledged held by every replica, through faults drawn from the seed
//! (crashes and restarts, partitions both ways and one way, stalled links).
//! Method: `pkraft_sim::cluster::run` for a few seeds; a failure names its seed.

use std::time::Duration;

use pkraft_sim::cluster::{Run, run};
use pkraft_sim::{FaultKind, seeds};

#[test]
fn three_nodes_form_a_cluster_and_every_replica_holds_every_packet() {
    for seed in seeds(1..=3) {
        let report = run(Run {
            seed,
            nodes: 3,
            packets: 20,
            limit: Duration::from_secs(300),
            cut_off: None,
            faults: 0,
            kinds: &[],
        })
        .unwrap_or_else(|error| panic!("{error}"));
        eprintln!(
            "seed {seed}: settled after {:?} of simulated time, {} steps, history {:016x}",
            report.settled_after, report.steps, report.history
        );
    }
}

/// The check can fail, and the network is the simulation's: with node 3 cut off from the others
/// it never joins, and the run names it as the replica that lacks the packets.
#[test]
fn a_node_cut_off_by_the_simulated_network_is_named_as_lacking_the_packets() {
    let seed = *seeds(7..=7).start();
    let error = run(Run {
        seed,
        nodes: 3,
        packets: 5,
        limit: Duration::from_secs(20),
        cut_off: Some(3),
        faults: 0,
        kinds: &[],
    })
    .expect_err("node 3 cannot have the packets");
    let text = error.to_string();
    assert!(
        text.contains(&format!("seed {seed}:"))
            && text.contains("node 3 lacks 5 of 5 packets")
            && text.contains(&format!("SIM_SEEDS={seed} make sim")),
        "{text}"
    );
    assert!(!text.contains("node 2"), "node 2 is not cut off: {text}");
}

/// Nodes crashed and started again on their data dirs, at moments and for downtimes drawn from
/// the seed, lose no packet that was acknowledged: every replica holds every one at the end.
#[test]
fn crashed_and_restarted_nodes_lose_no_acknowledged_packet() {
    for seed in seeds(21..=23) {
        let report = run(Run {
            seed,
            nodes: 3,
            packets: 40,
            limit: Duration::from_secs(300),
            cut_off: None,
            faults: 3,
            kinds: &[FaultKind::Crash],
        })
        .unwrap_or_else(|error| panic!("{error}"));
        assert!(!report.faults.is_empty());
        eprintln!(
            "seed {seed}: {:?}; settled after {:?} of simulated time, {} steps, history {:016x}",
            report.faults, report.settled_after, report.steps, report.history
        );
    }
}

/// Every kind of fault (crashes, silent partitions both ways and one way, stalled links), drawn
/// from the seed, loses no acknowledged packet, and the replicas converge once they end.
#[test]
fn faults_of_every_kind_lose_no_acknowledged_packet() {
    for seed in seeds(41..=43) {
        let report = run(Run {
            seed,
            nodes: 3,
            packets: 40,
            limit: Duration::from_secs(300),
            cut_off: None,
            faults: 6,
            kinds: &FaultKind::ALL,
        })
        .unwrap_or_else(|error| panic!("{error}"));
        assert!(!report.faults.is_empty());
        eprintln!(
            "seed {seed}: {:?}; settled after {:?} of simulated time, {} steps, history {:016x}",
            report.faults, report.settled_after, report.steps, report.history
        );
    }
}

/// A seed replays its run: the same seed, run twice in one process, gives the same history
/// (each publish's answer, key and simulated moment, the faults, every replica's last applied
/// index, the steps taken). Only in the build with tokio's scheduler seeded (`make sim`): in the
/// workspace build tokio draws its `select!` order from an unseeded generator.
#[cfg(tokio_unstable)]
#[test]
fn a_seed_run_twice_gives_the_same_history() {
    for seed in seeds(31..=32) {
        let of_seed = || {
            run(Run {
                seed,
                nodes: 3,
                packets: 30,
                limit: Duration::from_secs(300),
                cut_off: None,
                faults: 4,
                kinds: &FaultKind::ALL,
            })
            .unwrap_or_else(|error| panic!("{error}"))
        };
        let (first, second) = (of_seed(), of_seed());
        assert_eq!(
            (first.history, first.steps, &first.faults),
            (second.history, second.steps, &second.faults),
            "seed {seed} ran two ways: {:?} then {:?} of simulated time \
             (again: SIM_SEEDS={seed} make sim)",
            first.settled_after,
            second.settled_after
        );
    }
}
