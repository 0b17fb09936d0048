//! Goal: concurrent linearizable reads share their leadership checks (`pkraft_raft::read_index`):
//! a burst of `?consistency=linearizable` GETs through followers costs a few read-index rounds,
//! not one quorum round per read, and every read still sees the write acknowledged before it.
//! Method: a 3-node cluster of real processes; a packet published, then concurrent
//! linearizable GETs through both followers; each node's `pkraft_raft_read_index_batch`
//! (reads per round: its `_count` is rounds, its `_sum` reads) scraped before and after.

use pkraft_testkit::pkarr::Timestamp;

use crate::cluster::{TestCluster, get_body, packet, put_until_accepted};
use crate::harness::TestServer;
use crate::metrics::{sample, scrape};

/// Concurrent clients per follower, and GETs each (a debug build of three nodes on two cores).
const CLIENTS: usize = 64;
const GETS: usize = 4;

/// (rounds, reads) of `server`'s read-index task so far.
async fn rounds_and_reads(server: &TestServer) -> (f64, f64) {
    let text = scrape(server).await;
    let count = sample(&text, "pkraft_raft_read_index_batch_count", "").unwrap_or_default();
    let sum = sample(&text, "pkraft_raft_read_index_batch_sum", "").unwrap_or_default();
    (count, sum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_linearizable_reads_share_their_leadership_checks() {
    let cluster = TestCluster::start(3, "").await;
    let leader = cluster.leader().await;
    let followers: Vec<&TestServer> = cluster
        .ids_except(leader)
        .into_iter()
        .map(|id| &cluster.member(id).server)
        .collect();
    let (key, signed) = packet(9_700, Timestamp::now().as_u64());
    put_until_accepted(&cluster.member(leader).server, &key, &signed).await;
    let before: Vec<(f64, f64)> = {
        let mut all = Vec::new();
        for server in &followers {
            all.push(rounds_and_reads(server).await);
        }
        all
    };

    let mut gets = tokio::task::JoinSet::new();
    for server in &followers {
        for _ in 0..CLIENTS {
            let url = format!("{}?consistency=linearizable", server.relay_url(&key));
            let payload = signed.to_relay_payload();
            gets.spawn(async move {
                let client = crate::harness::http_client();
                for _ in 0..GETS {
                    let response = client.get(&url).send().await.expect("GET");
                    let status = response.status();
                    assert_eq!(status, 200, "{}", response.text().await.unwrap_or_default());
                    assert_eq!(response.bytes().await.expect("body"), payload);
                }
            });
        }
    }
    while let Some(done) = gets.join_next().await {
        done.expect("GET task");
    }

    for (server, (rounds_before, reads_before)) in followers.iter().zip(before) {
        let (rounds, reads) = rounds_and_reads(server).await;
        let (rounds, reads) = (rounds - rounds_before, reads - reads_before);
        eprintln!("linearizable reads: {reads} in {rounds} read-index rounds on a follower");
        // A round the leader could not confirm in time (its followers answered late: "not
        // enough for a quorum") is asked again, and its reads counted again.
        assert!(
            reads >= (CLIENTS * GETS) as f64,
            "{reads} reads took a read index, of {}",
            CLIENTS * GETS
        );
        // Without sharing, rounds equal reads; shared, a round answers many (dozens here).
        assert!(
            rounds * 2.0 <= reads,
            "{reads} linearizable reads took {rounds} read-index rounds: not shared"
        );
    }
    // The read the burst began with is still served as written.
    assert_eq!(
        get_body(followers[0], &key, "?consistency=linearizable")
            .await
            .0,
        200
    );
}
