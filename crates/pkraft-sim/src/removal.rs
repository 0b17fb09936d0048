//! A voter removed while a run goes on, as an operator replaces a node: once the newcomer has
//! joined ([`crate::cluster::Run::may_grow`]), in half such runs, one of the voters (the
//! newcomer among them) is removed through a node's admin API (`POST /cluster/remove`, what
//! `pkraft cluster remove --node-id N` sends), which forwards it to the leader over the peer
//! network and its faults. The node removed is left running, as one an operator has not
//! stopped yet: the others must refuse it (its elections, its forwards) while its crashes,
//! power cuts and clock faults go on. From the removal on, the checks leave it out: it
//! need not hold what the cluster acknowledged after it, and the cluster must not need it.

use std::time::Duration;

use hyper::StatusCode;
use tokio::time::Instant;

use crate::public::call_admin;
use crate::workload::Clients;

/// The voter a run removes, and when the operator begins to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Removal {
    pub(crate) node: u64,
    /// Simulated time since the run began.
    pub(crate) at: Duration,
    /// The newcomer, whose join the operator waits for first (a replacement: the new node
    /// joins, then the old one goes).
    pub(crate) after_joining: u64,
}

/// Whether the run of `seed` removes a voter, given the newcomer that joins it (`joiner`, at
/// `joins_at`), which and when: in half the runs that grow, from a stream of the seed's own
/// (apart from the faults', the nodes' and the join's draws). Any voter, the newcomer too.
pub(crate) fn removing(seed: u64, joiner: u64, joins_at: Duration) -> Option<Removal> {
    let mut draws = pkraft_testkit::rng::SplitMix64::new(seed ^ 0x7e30_0e5d_0000_0000);
    (draws.below(2) == 0).then(|| Removal {
        node: draws.between(1, joiner),
        at: joins_at + Duration::from_millis(draws.between(500, 3_000)),
        after_joining: joiner,
    })
}

/// How long one request of the operator's may take before it asks again (`pkraft cluster`
/// gives up after its own timeout too); a removal whose answer was lost may have been made,
/// and asking again finds it made (the leader answers 200 for a node that is no member).
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// The operator's pause between two requests.
const ASK_AGAIN_AFTER: Duration = Duration::from_millis(200);

/// Makes `removal` as an operator does: from its moment, once the newcomer has been a voter, asks
/// the running nodes in turn (their admin APIs) until one answers 200, then records the node as
/// removed in `clients` (the checks leave it out from then on). Gives up at `give_up_at`,
/// leaving the removal unmade, which the checks name.
pub(crate) async fn remove_voter(clients: &Clients, removal: Removal, give_up_at: Instant) {
    tokio::time::sleep_until(clients.began + removal.at).await;
    let body = format!("{{\"node_id\":{}}}", removal.node);
    let mut asked = 0usize;
    // Once: the removal, made by a request whose answer was lost, may take the newcomer's
    // voter role away (when it is the node removed) before the operator hears of it.
    let mut joined = false;
    while Instant::now() < give_up_at {
        joined = joined || clients.is_voter(removal.after_joining);
        let running: Vec<u64> = clients.reachable.borrow().keys().copied().collect();
        if !running.is_empty() && joined {
            let node = running[asked % running.len()];
            asked += 1;
            let answer = tokio::time::timeout(
                ASK_TIMEOUT,
                call_admin(node, "/cluster/remove", body.clone()),
            )
            .await;
            match answer {
                Ok(Ok(answer)) if answer.status == StatusCode::OK => {
                    tracing::info!(removed = removal.node, asked = node, "simulated removal");
                    clients.removed.set(Some(removal.node));
                    return;
                }
                Ok(Ok(answer)) => tracing::info!(
                    removing = removal.node,
                    asked = node,
                    status = %answer.status,
                    body = %String::from_utf8_lossy(&answer.body),
                    "simulated removal: not made yet"
                ),
                Ok(Err(error)) => tracing::info!(
                    removing = removal.node,
                    asked = node,
                    %error,
                    "simulated removal: not made yet"
                ),
                Err(_) => tracing::info!(
                    removing = removal.node,
                    asked = node,
                    "simulated removal: no answer in time"
                ),
            }
        }
        tokio::time::sleep(ASK_AGAIN_AFTER).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_the_grown_runs_remove_a_voter_after_the_join_any_of_them() {
        let joins_at = Duration::from_secs(1);
        let drawn: Vec<Removal> = (1..=400)
            .filter_map(|seed| removing(seed, 4, joins_at))
            .collect();
        assert!((160..=240).contains(&drawn.len()), "{}", drawn.len());
        for node in 1..=4 {
            assert!(drawn.iter().any(|removal| removal.node == node), "{node}");
        }
        assert!(drawn.iter().all(|removal| removal.at > joins_at
            && removal.at <= joins_at + Duration::from_secs(3)
            && removal.after_joining == 4));
        assert_eq!(removing(7, 4, joins_at), removing(7, 4, joins_at));
    }
}
