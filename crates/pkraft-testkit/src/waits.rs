//! The waits every runner of a cluster shares (the integration tests, the chaos harness, the
//! namespace lab and `pkraft-bench cluster`): one set of bounds, one poll, and one reading of
//! which node leads. What differs between the runners is how they reach a node (their own HTTP
//! clients) and what a missed bound does (a panic in a test, an error in the harness); the
//! decisions are these.

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a started node may take to listen, or to answer `/healthz`: a debug build on a
/// loaded 2-core machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a cluster may take to reach a state a wait asks for (an election, a catch-up, a
/// join) on a loaded 2-core machine.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a wait looks again. (Process exits and log lines have no signal to await; a
/// node's status is asked again.)
pub const POLL: Duration = Duration::from_millis(20);

/// Calls `check` every [`POLL`] until it returns `Ok`, for at most `timeout`; then fails with
/// the last reason `check` gave, after `what`. `check` runs at least once.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let why = match check().await {
            Ok(value) => return Ok(value),
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            return Err(format!("{what}: not reached within {timeout:?}: {why}"));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Of several nodes' `/cluster/status` answers (by node id), the node that says it leads in the
/// highest term. A leader cut off from the others keeps saying it leads until it hears of the
/// later term; the highest term is the one the others follow.
pub fn leader_of<'a>(statuses: impl IntoIterator<Item = (u64, &'a Value)>) -> Option<u64> {
    statuses
        .into_iter()
        .filter(|(_, status)| status["node"]["role"] == "leader")
        .map(|(id, status)| (status["node"]["term"].as_u64().unwrap_or(0), id))
        .max()
        .map(|(_, id)| id)
}

/// [`leader_of`] the nodes `ids`, each asked for its `/cluster/status` by `status` (the runner's
/// own way to reach a node; `None` for one that does not answer): the one look at a cluster's
/// leader every runner makes, in its `leader()`.
pub async fn leader_by<F, Fut>(ids: impl IntoIterator<Item = u64>, mut status: F) -> Option<u64>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Option<Value>>,
{
    let mut statuses = Vec::new();
    for id in ids {
        if let Some(answer) = status(id).await {
            statuses.push((id, answer));
        }
    }
    leader_of(statuses.iter().map(|(id, answer)| (*id, answer)))
}

/// The leader one node's `/cluster/status` names, once the leader's own report in it (the
/// member status the node probes) confirms it leads: a node that has only heard of a leader is
/// not taken for one that has been elected.
pub fn confirmed_leader(status: &Value) -> Result<u64, String> {
    let leader = status["node"]["leader"].as_u64().ok_or("no leader known")?;
    let report = status["members"]
        .as_array()
        .and_then(|members| members.iter().find(|m| m["id"].as_u64() == Some(leader)))
        .ok_or("the leader is not a member")?;
    if report["status"]["role"] != "leader" {
        return Err(format!("node {leader} does not confirm it leads"));
    }
    Ok(leader)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(role: &str, term: u64) -> Value {
        json!({ "node": { "role": role, "term": term } })
    }

    #[test]
    fn the_leader_is_the_one_that_leads_in_the_highest_term() {
        let stale = node("leader", 3);
        let follower = node("follower", 4);
        let current = node("leader", 4);
        assert_eq!(
            leader_of([(1, &stale), (2, &follower), (3, &current)]),
            Some(3)
        );
        assert_eq!(leader_of([(1, &stale), (2, &follower)]), Some(1));
        assert_eq!(leader_of([(2, &follower)]), None);
    }

    #[test]
    fn a_leader_only_heard_of_is_not_confirmed() {
        let heard = json!({
            "node": { "leader": 2 },
            "members": [{ "id": 2, "status": { "role": "follower" } }],
        });
        assert!(confirmed_leader(&heard).is_err());
        let confirmed = json!({
            "node": { "leader": 2 },
            "members": [{ "id": 2, "status": { "role": "leader" } }],
        });
        assert_eq!(confirmed_leader(&confirmed), Ok(2));
        assert!(confirmed_leader(&json!({ "node": {} })).is_err());
    }

    #[tokio::test]
    async fn a_wait_gives_the_last_reason_when_its_bound_passes() {
        let mut calls = 0;
        let result: Result<(), String> = poll_until("a leader", Duration::from_millis(100), || {
            calls += 1;
            let why = format!("try {calls}");
            async move { Err(why) }
        })
        .await;
        let error = result.expect_err("never reached");
        assert!(
            error.starts_with("a leader: not reached within 100ms: try "),
            "{error}"
        );
        assert!(calls > 1, "it looked again ({calls} calls)");
        let value = poll_until("at once", Duration::ZERO, || async { Ok(7) }).await;
        assert_eq!(value, Ok(7));
    }
}
