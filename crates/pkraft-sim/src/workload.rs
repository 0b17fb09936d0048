//! The clients of a simulated run, as the chaos harness's (pkraft-chaos's workload): each PUTs
//! new versions of a small key set, and reads them linearizably or from a node's own replica,
//! through nodes drawn from the seed. Every operation is recorded with the simulated moments it
//! was asked and answered, the node and that node's incarnation, and what came back, for
//! pkraft-check's checks (the same as the chaos harness's).
//!
//! A client reaches a node as the chaos harness's clients do, through the node's public router
//! over the simulated network (`crate::public`): `PUT /pkarr/{z32}` with the relay payload,
//! `GET /pkarr/{z32}` (`?consistency=linearizable` for a linearizable read), a connection for
//! each, and the answers read as the chaos harness reads them. A node that is down (not
//! running, or stopping) is not asked: a PUT's outcome is then unknown, a read failed.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use pkarr::Keypair;
use pkraft_check::check::{FinalPacket, FinalState};
use pkraft_check::history::{Op, OpKind, PutOutcome, ReadOutcome, Version};
use pkraft_raft::{Consistency, Node};
use pkraft_testkit::rng::SplitMix64;
use pkraft_testkit::{iroh_packet, keypair};
use pkraft_types::{KeyBytes, Payload, VerifiedPacket};
use tokio::time::Instant;

use crate::public::{self, Answer};

/// What the clients of a run do.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Keys written: few, so that clients write the same keys at once.
    pub keys: usize,
    /// Clients running at once.
    pub clients: u32,
    /// Operations each client runs: half PUTs, a quarter linearizable GETs, a quarter GETs of
    /// the node's own replica.
    pub ops: u32,
}

/// How long a client waits for a PUT's answer (then unknown): beyond the node's own bound on a
/// publish, `raft.publish_timeout` (5 s, the default the runs keep), so that a node that runs
/// answers first, whatever its answer.
const PUT_WAIT: Duration = Duration::from_secs(6);
/// How long a client waits for a GET's answer (then failed): beyond the node's own bound on a
/// linearizable read's barrier (`raft.publish_timeout` too).
const GET_WAIT: Duration = Duration::from_secs(6);
/// The longest pause between one client's operations (drawn from 0 to it).
const PACE_MAX_MILLIS: u64 = 20;

/// A node running, as the clients reach it: how many times it has started (1 for its first
/// process), and the node itself, whose replica the driver reads at the end.
#[derive(Clone)]
pub(crate) struct Reachable {
    pub(crate) incarnation: u32,
    pub(crate) node: Arc<Node>,
}

/// The nodes running now, by id.
pub(crate) type Reachables = Rc<RefCell<BTreeMap<u64, Reachable>>>;

/// The keys of a run, the next version of each, and every packet proposed.
pub(crate) struct Keys {
    keypairs: Vec<Keypair>,
    next_version: Vec<Cell<Version>>,
    proposed: RefCell<BTreeMap<(usize, Version), Payload>>,
}

impl Keys {
    /// `count` keys drawn from `seed`; versions are packet timestamps from the simulated wall
    /// clock's now, so that the nodes take them (not from the future, not expired).
    pub(crate) fn new(seed: u64, count: usize) -> Keys {
        let now = pkraft_types::unix_micros_now();
        Keys {
            keypairs: (0..count as u64)
                .map(|index| keypair(seed.wrapping_mul(1_000_003).wrapping_add(index)))
                .collect(),
            next_version: (0..count).map(|_| Cell::new(now)).collect(),
            proposed: RefCell::default(),
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.keypairs.len()
    }

    pub(crate) fn key_bytes(&self, key: usize) -> KeyBytes {
        self.keypairs[key].public_key().to_bytes()
    }

    /// The key as the relay's URLs name it.
    fn z32(&self, key: usize) -> String {
        self.keypairs[key].public_key().to_z32()
    }

    /// A new packet of `key` with a version no other PUT has, recorded as proposed: its
    /// version and its relay payload.
    fn propose(&self, key: usize) -> (Version, Bytes) {
        let version = self.next_version[key].get() + 1;
        self.next_version[key].set(version);
        let keypair = &self.keypairs[key];
        let payload = iroh_packet(keypair, version, &["192.0.2.1:1"]).to_relay_payload();
        let packet = VerifiedPacket::verify(&keypair.public_key(), payload.clone())
            .expect("a packet of the test keys verifies");
        self.proposed
            .borrow_mut()
            .insert((key, version), packet.payload().clone());
        (version, payload)
    }

    /// A relay payload a GET answered for `key`: found (its version, and whether it is byte
    /// for byte the one proposed), or outside the contract if it does not verify.
    fn read_payload(&self, key: usize, body: Bytes) -> ReadOutcome {
        match VerifiedPacket::verify(&self.keypairs[key].public_key(), body) {
            Ok(packet) => {
                let (version, matches_proposed) = self.found(key, packet.payload());
                ReadOutcome::Found {
                    version,
                    matches_proposed,
                }
            }
            Err(e) => ReadOutcome::Unexpected(format!("payload does not verify: {e}")),
        }
    }

    /// A payload read back: its version, and whether it is byte for byte the one proposed.
    fn found(&self, key: usize, payload: &Payload) -> (Version, bool) {
        let version = payload.timestamp_micros();
        let proposed = self.proposed.borrow();
        let matches = proposed
            .get(&(key, version))
            .is_some_and(|proposed| proposed.as_bytes() == payload.as_bytes());
        (version, matches)
    }

    /// What `node` holds of every key at the end, for the checks.
    pub(crate) fn final_state(&self, id: u64, node: &Node) -> Result<FinalState, String> {
        let packets = (0..self.count())
            .map(|key| {
                let stored = node
                    .store()
                    .get(&self.key_bytes(key))
                    .map_err(|e| format!("node {id}'s replica could not be read: {e}"))?;
                Ok(stored.map(|stored| {
                    let (version, matches_proposed) = self.found(key, &stored.payload);
                    FinalPacket {
                        version,
                        payload: stored.payload.as_bytes().to_vec(),
                        matches_proposed,
                    }
                }))
            })
            .collect::<Result<_, String>>()?;
        Ok(FinalState { node: id, packets })
    }
}

/// The node a run removed from the cluster, once the removal is made (`removal.rs`): shared by
/// the driver, which makes it, and the fault schedule, which damages no removed node's log.
pub(crate) type Removed = Rc<Cell<Option<u64>>>;

/// The clients' shared view: the nodes, the keys, when the run began, the operations answered
/// so far, in the order their answers came, and the node removed, if one was.
pub(crate) struct Clients {
    pub(crate) reachable: Reachables,
    pub(crate) keys: Keys,
    pub(crate) nodes: u64,
    pub(crate) began: Instant,
    pub(crate) ops: RefCell<Vec<Op>>,
    pub(crate) removed: Removed,
}

impl Clients {
    /// Whether node `id` runs as a voter now (a leader or a follower).
    pub(crate) fn is_voter(&self, id: u64) -> bool {
        self.reachable
            .borrow()
            .get(&id)
            .is_some_and(|running| role_of(&running.node).1)
    }

    /// Whether node `id` was removed from the cluster.
    pub(crate) fn was_removed(&self, id: u64) -> bool {
        self.removed.get() == Some(id)
    }

    fn micros_since_began(&self) -> u64 {
        u64::try_from(self.began.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The newest version of each key a PUT was acknowledged for, by key.
    pub(crate) fn acknowledged(&self) -> BTreeMap<usize, Version> {
        let mut newest = BTreeMap::new();
        for op in self.ops.borrow().iter() {
            if let OpKind::Put {
                version,
                outcome: PutOutcome::Stored,
            } = op.kind
            {
                let held = newest.entry(op.key).or_insert(version);
                *held = (*held).max(version);
            }
        }
        newest
    }
}

/// Runs client `client`'s operations, drawn from `seed`, recording each in `clients.ops`; asks
/// none after `stop_at` (a cluster that answers nothing must not keep a run from its end).
pub(crate) async fn run_client(
    clients: Rc<Clients>,
    seed: u64,
    client: u32,
    ops: u32,
    stop_at: Instant,
) {
    let mut rng = SplitMix64::new(seed ^ 0x5eed_c11e_0000_0000 ^ u64::from(client));
    for _ in 0..ops {
        if Instant::now() >= stop_at {
            return;
        }
        let key = usize::try_from(rng.between(0, clients.keys.count() as u64 - 1)).unwrap_or(0);
        let node = rng.between(1, clients.nodes);
        let kind = match rng.between(0, 3) {
            0 | 1 => Ask::Put,
            2 => Ask::Read(Consistency::Linearizable),
            _ => Ask::Read(Consistency::Local),
        };
        clients.ask(client, key, node, kind).await;
        tokio::time::sleep(Duration::from_millis(rng.between(0, PACE_MAX_MILLIS))).await;
    }
}

/// What a client asks of a node.
#[derive(Clone, Copy)]
enum Ask {
    Put,
    Read(Consistency),
}

impl Clients {
    /// Asks `node` for `ask` on `key` as client `client`, records the operation and returns
    /// what it was.
    async fn ask(&self, client: u32, key: usize, node: u64, ask: Ask) -> OpKind {
        let (running, incarnation) = match self.reachable.borrow().get(&node) {
            Some(reachable) => (Some(node), reachable.incarnation),
            None => (None, 0),
        };
        let invoke_us = self.micros_since_began();
        let kind = match ask {
            Ask::Put => put(self, running, key).await,
            Ask::Read(consistency) => read(self, running, key, consistency).await,
        };
        self.ops.borrow_mut().push(Op {
            client,
            key,
            node,
            incarnation,
            invoke_us,
            complete_us: self.micros_since_began(),
            kind: kind.clone(),
        });
        kind
    }
}

/// PUTs a new version of each key through the lowest-numbered node running, as client
/// `client`, again until one is acknowledged: the cluster writes again once the faults have
/// ended (the run's liveness check), and every key has a version acknowledged, which the
/// checks then look for on every replica. Why not, if `give_up_at` comes first.
pub(crate) async fn write_each_key(
    clients: &Clients,
    client: u32,
    give_up_at: Instant,
) -> Result<(), String> {
    for key in 0..clients.keys.count() {
        loop {
            // A node removed from the cluster cannot take a write: its peers refuse it.
            let node = clients
                .reachable
                .borrow()
                .keys()
                .copied()
                .find(|&id| !clients.was_removed(id));
            let outcome = match node {
                Some(node) => clients.ask(client, key, node, Ask::Put).await,
                None => OpKind::Put {
                    version: 0,
                    outcome: PutOutcome::Unknown("no node runs".to_string()),
                },
            };
            match outcome {
                OpKind::Put {
                    outcome: PutOutcome::Stored,
                    ..
                } => break,
                other if Instant::now() >= give_up_at => {
                    return Err(format!(
                        "no PUT of key {key} acknowledged after the faults ended (the last: \
                         {other:?})"
                    ));
                }
                _ => tokio::time::sleep(RETRY_PAUSE).await,
            }
        }
    }
    Ok(())
}

/// Node `node`'s Raft role as `cluster status` names it, and whether it votes (a leader or a
/// follower; a learner's promotion has not come yet).
pub(crate) fn role_of(node: &Node) -> (String, bool) {
    let role = node.members().local_status().role;
    let votes = matches!(role.as_str(), "leader" | "follower");
    (role, votes)
}

/// How long [`write_each_key`] waits before it asks again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The node a client asks, if it runs.
type Running = Option<u64>;

async fn put(clients: &Clients, running: Running, key: usize) -> OpKind {
    let (version, payload) = clients.keys.propose(key);
    let outcome = match running {
        None => PutOutcome::Unknown("the node is down".to_string()),
        Some(node) => {
            let path = format!("/pkarr/{}", clients.keys.z32(key));
            match ask(node, Method::PUT, &path, payload, PUT_WAIT).await {
                Ok(Answer { status, body }) => match status.as_u16() {
                    204 => PutOutcome::Stored,
                    409 => PutOutcome::Conflict,
                    503 => PutOutcome::Unknown(format!("503: {}", String::from_utf8_lossy(&body))),
                    other => PutOutcome::Unexpected(format!(
                        "{other}: {}",
                        String::from_utf8_lossy(&body)
                    )),
                },
                Err(unknown) => PutOutcome::Unknown(unknown),
            }
        }
    };
    OpKind::Put { version, outcome }
}

async fn read(clients: &Clients, running: Running, key: usize, consistency: Consistency) -> OpKind {
    let outcome = match running {
        None => ReadOutcome::Failed("the node is down".to_string()),
        Some(node) => {
            let query = match consistency {
                Consistency::Linearizable => "?consistency=linearizable",
                Consistency::Local => "",
            };
            let path = format!("/pkarr/{}{query}", clients.keys.z32(key));
            match ask(node, Method::GET, &path, Bytes::new(), GET_WAIT).await {
                Ok(Answer { status, body }) => match status.as_u16() {
                    200 => clients.keys.read_payload(key, body),
                    404 => ReadOutcome::NotFound,
                    503 => ReadOutcome::Failed(format!("503: {}", String::from_utf8_lossy(&body))),
                    other => ReadOutcome::Unexpected(format!(
                        "status {other}: {}",
                        String::from_utf8_lossy(&body)
                    )),
                },
                Err(failed) => ReadOutcome::Failed(failed),
            }
        }
    };
    match consistency {
        Consistency::Linearizable => OpKind::LinearizableGet(outcome),
        Consistency::Local => OpKind::StaleGet(outcome),
    }
}

/// Sends a request to node `node`'s public router and waits up to `wait` for its answer.
async fn ask(
    node: u64,
    method: Method,
    path: &str,
    body: Bytes,
    wait: Duration,
) -> Result<Answer, String> {
    match tokio::time::timeout(wait, public::call(node, method, path, body)).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {wait:?}")),
    }
}
