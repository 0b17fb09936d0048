//! Goal: the real node code forms a cluster and replicates under the simulation: three nodes on
//! turmoil's network and paused clocks, node 2 and 3 joining node 1 through their peer
//! clients, every packet published on node 1 held by every replica.
//! Method: `pkraft_sim::cluster::run` for a few seeds; a failure names its seed.

use std::time::Duration;

use pkraft_sim::cluster::{Run, run};

#[test]
fn three_nodes_form_a_cluster_and_every_replica_holds_every_packet() {
    for seed in 1..=3 {
        let report = run(Run {
            seed,
            nodes: 3,
            packets: 20,
            limit: Duration::from_secs(300),
            cut_off: None,
        })
        .unwrap_or_else(|error| panic!("{error}"));
        eprintln!(
            "seed {seed}: settled after {:?} of simulated time, {} steps",
            report.settled_after, report.steps
        );
    }
}

/// The check can fail, and the network is the simulation's: with node 3 cut off from the others
/// it never joins, and the run names it as the replica that lacks the packets.
#[test]
fn a_node_cut_off_by_the_simulated_network_is_named_as_lacking_the_packets() {
    let error = run(Run {
        seed: 7,
        nodes: 3,
        packets: 5,
        limit: Duration::from_secs(20),
        cut_off: Some(3),
    })
    .expect_err("node 3 cannot have the packets");
    let text = error.to_string();
    assert!(
        text.contains("seed 7") && text.contains("node 3 lacks 5 of 5 packets"),
        "{text}"
    );
    assert!(!text.contains("node 2"), "node 2 is not cut off: {text}");
}
