//! Client traffic: writers PUT new versions of a small key set through random nodes, readers
//! GET with `?consistency=linearizable`, and replica readers GET and query DNS on every node.
//! Every operation is recorded with its invoke and complete times. Loops run until told to stop
//! and pace themselves, so a run's history stays bounded (about 100 operations a second per
//! client at most).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use pkarr::{Keypair, SignedPacket, Timestamp};
use pkraft_testkit::{keypair, txt};

use crate::cluster::{ORIGIN, Target, Targets};
use crate::history::{Op, OpKind, PutOutcome, ReadOutcome, Version};
use crate::rng::SplitMix64;

/// A PUT may wait for `raft.publish_timeout` (3 s) plus forwarding; beyond this it is unknown.
const PUT_TIMEOUT: Duration = Duration::from_secs(5);
const LINEARIZABLE_GET_TIMEOUT: Duration = Duration::from_secs(5);
const STALE_GET_TIMEOUT: Duration = Duration::from_secs(2);
const DNS_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between one client's operations.
const PACE: Duration = Duration::from_millis(10);
/// The record every packet carries: `_chaos.<key>` TXT `v=<version>`.
const RECORD: &str = "_chaos";

/// The keys written, the next version of each, and every payload proposed.
pub struct Keys {
    pub keypairs: Vec<Keypair>,
    next_version: Vec<AtomicU64>,
    proposed: Mutex<HashMap<(usize, Version), Bytes>>,
}

impl Keys {
    pub fn new(count: usize) -> Keys {
        // Versions are packet timestamps: start at the current time so the server accepts them
        // (not too far in the future, not expired); each PUT takes the next one.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Keys {
            keypairs: (0..count as u64)
                .map(|i| keypair(0xC4A0_5000 + i))
                .collect(),
            next_version: (0..count).map(|_| AtomicU64::new(now)).collect(),
            proposed: Mutex::new(HashMap::new()),
        }
    }

    /// A new packet for `key` with a version no other PUT has, recorded as proposed before it
    /// is sent.
    fn propose(&self, key: usize) -> anyhow::Result<(Version, Bytes)> {
        let version = self.next_version[key].fetch_add(1, Ordering::Relaxed) + 1;
        let packet = SignedPacket::builder()
            .txt(RECORD.try_into()?, txt(&format!("v={version}")), 30)
            .timestamp(Timestamp::from(version))
            .sign(&self.keypairs[key])?;
        let payload = packet.to_relay_payload();
        self.proposed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((key, version), payload.clone());
        Ok((version, payload))
    }

    fn proposed(&self, key: usize, version: Version) -> Option<Bytes> {
        self.proposed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(key, version))
            .cloned()
    }

    pub fn z32(&self, key: usize) -> String {
        self.keypairs[key].public_key().to_z32()
    }

    /// Reads a relay payload: its version, and whether it is byte for byte a proposed one.
    pub fn read_payload(&self, key: usize, body: &[u8]) -> ReadOutcome {
        match SignedPacket::from_relay_payload(
            &self.keypairs[key].public_key(),
            &Bytes::copy_from_slice(body),
        ) {
            Ok(packet) => {
                let version = packet.timestamp().as_u64();
                let matches_proposed = self
                    .proposed(key, version)
                    .is_some_and(|p| p.as_ref() == body);
                ReadOutcome::Found {
                    version,
                    matches_proposed,
                }
            }
            Err(e) => ReadOutcome::Unexpected(format!("payload does not verify: {e}")),
        }
    }
}

/// The shared log of operations.
pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            ops: Mutex::new(Vec::new()),
        }
    }

    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn record(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    pub fn take(&self) -> Vec<Op> {
        let mut ops = std::mem::take(&mut *self.ops.lock().unwrap_or_else(|e| e.into_inner()));
        ops.sort_by_key(|op| op.invoke_us);
        ops
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Role {
    Writer,
    LinearizableReader,
    ReplicaReader,
}

struct Client {
    id: u32,
    role: Role,
    rng: SplitMix64,
    keys: Arc<Keys>,
    targets: Targets,
    recorder: Arc<Recorder>,
    http: reqwest::Client,
    stop: Arc<AtomicBool>,
}

/// Starts the clients; they run until `stop` is set.
pub fn spawn(
    roles: &[Role],
    seed: u64,
    keys: Arc<Keys>,
    targets: Targets,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let http = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(5))
        .build()?;
    Ok(roles
        .iter()
        .enumerate()
        .map(|(i, role)| {
            let client = Client {
                id: i as u32,
                role: *role,
                rng: SplitMix64::new(seed ^ (0xC11E_0000 + i as u64)),
                keys: keys.clone(),
                targets: targets.clone(),
                recorder: recorder.clone(),
                http: http.clone(),
                stop: stop.clone(),
            };
            tokio::spawn(client.run())
        })
        .collect())
}

impl Client {
    async fn run(mut self) {
        let mut round = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            round += 1;
            let key = self.rng.below(self.keys.keypairs.len() as u64) as usize;
            let target = {
                let targets = self.targets.read().unwrap_or_else(|e| e.into_inner());
                self.rng.pick(&targets).cloned()
            };
            if let Some(target) = target {
                let invoke_us = self.recorder.now_us();
                let kind = match self.role {
                    Role::Writer => self.put(&target, key).await,
                    Role::LinearizableReader => {
                        Some(OpKind::LinearizableGet(self.get(&target, key, true).await))
                    }
                    Role::ReplicaReader if round.is_multiple_of(2) => {
                        Some(OpKind::StaleGet(self.get(&target, key, false).await))
                    }
                    Role::ReplicaReader => Some(OpKind::Dns(self.dns(&target, key).await)),
                };
                let complete_us = self.recorder.now_us();
                if let Some(kind) = kind {
                    self.recorder.record(Op {
                        client: self.id,
                        key,
                        node: target.id,
                        incarnation: target.incarnation,
                        invoke_us,
                        complete_us,
                        kind,
                    });
                }
            }
            tokio::time::sleep(PACE).await;
        }
    }

    async fn put(&mut self, target: &Target, key: usize) -> Option<OpKind> {
        let (version, payload) = match self.keys.propose(key) {
            Ok(proposal) => proposal,
            Err(e) => {
                eprintln!("chaos: cannot sign a packet: {e}");
                return None;
            }
        };
        let url = format!("http://{}/pkarr/{}", target.http, self.keys.z32(key));
        let sent = self
            .http
            .put(url)
            .timeout(PUT_TIMEOUT)
            .body(payload)
            .send()
            .await;
        let outcome = match sent {
            Ok(response) => match response.status().as_u16() {
                204 => PutOutcome::Stored,
                409 => PutOutcome::Conflict,
                503 => PutOutcome::Unknown("503".into()),
                other => {
                    let body = response.text().await.unwrap_or_default();
                    PutOutcome::Unexpected(format!("{other}: {body}"))
                }
            },
            Err(e) => PutOutcome::Unknown(error_kind(&e)),
        };
        Some(OpKind::Put { version, outcome })
    }

    async fn get(&self, target: &Target, key: usize, linearizable: bool) -> ReadOutcome {
        let (query, timeout) = if linearizable {
            ("?consistency=linearizable", LINEARIZABLE_GET_TIMEOUT)
        } else {
            ("", STALE_GET_TIMEOUT)
        };
        let url = format!("http://{}/pkarr/{}{query}", target.http, self.keys.z32(key));
        let response = match self.http.get(url).timeout(timeout).send().await {
            Ok(response) => response,
            Err(e) => return ReadOutcome::Failed(error_kind(&e)),
        };
        match response.status().as_u16() {
            200 => match response.bytes().await {
                Ok(body) => self.keys.read_payload(key, &body),
                Err(e) => ReadOutcome::Failed(error_kind(&e)),
            },
            404 => ReadOutcome::NotFound,
            503 => ReadOutcome::Failed("503".into()),
            other => ReadOutcome::Unexpected(format!("status {other}")),
        }
    }

    async fn dns(&self, target: &Target, key: usize) -> ReadOutcome {
        let qname = format!("{RECORD}.{}.{ORIGIN}.", self.keys.z32(key));
        let answer = match tokio::time::timeout(DNS_TIMEOUT, dns_txt(target.dns, &qname)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => ReadOutcome::Failed(format!("dns: {e}")),
            Err(_) => ReadOutcome::Failed("dns timeout".into()),
        };
        with_proposed(answer, &self.keys, key)
    }
}

/// A DNS read's outcome with its version matched against the proposals: DNS shows only the
/// version, so whether it was proposed is all that can be compared.
fn with_proposed(outcome: ReadOutcome, keys: &Keys, key: usize) -> ReadOutcome {
    match outcome {
        ReadOutcome::Found { version, .. } => ReadOutcome::Found {
            version,
            matches_proposed: keys.proposed(key, version).is_some(),
        },
        other => other,
    }
}

/// One TXT query over UDP; the answer as a read outcome (versions not yet matched).
async fn dns_txt(server: SocketAddr, qname: &str) -> anyhow::Result<ReadOutcome> {
    let mut query = Message::query();
    query.add_query(Query::query(Name::from_str(qname)?, RecordType::TXT));
    let bytes = query.to_vec()?;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    // Connected: only the server's datagrams are taken. And a query can come back as itself:
    // while a node is down, the socket may be given the node's free port as its own, and then
    // sends to itself (seen in a power-cut run: "NOERROR with 0 version records", the query).
    socket.connect(server).await?;
    if socket.local_addr()? == server {
        anyhow::bail!("{server} is down (its port was given to this client)");
    }
    socket.send(&bytes).await?;
    let mut buf = vec![0u8; 4096];
    let len = socket.recv(&mut buf).await?;
    let answer = Message::from_vec(&buf[..len])?;
    if answer.metadata.message_type != MessageType::Response {
        anyhow::bail!("{server} sent a query, not an answer");
    }
    if answer.metadata.id != query.metadata.id {
        return Ok(ReadOutcome::Unexpected(
            "DNS answer to another query id".into(),
        ));
    }
    Ok(match answer.metadata.response_code {
        ResponseCode::NXDomain => ReadOutcome::NotFound,
        ResponseCode::ServFail => ReadOutcome::Failed("SERVFAIL".into()),
        ResponseCode::NoError => {
            let versions: Vec<Version> = answer
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => txt.txt_data.first().and_then(|s| {
                        std::str::from_utf8(s)
                            .ok()?
                            .strip_prefix("v=")?
                            .parse()
                            .ok()
                    }),
                    _ => None,
                })
                .collect();
            match versions.as_slice() {
                [version] => ReadOutcome::Found {
                    version: *version,
                    matches_proposed: false,
                },
                _ => ReadOutcome::Unexpected(format!(
                    "NOERROR with {} version records",
                    versions.len()
                )),
            }
        }
        other => ReadOutcome::Unexpected(format!("rcode {other:?}")),
    })
}

fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        format!("transport: {e}")
    }
}

/// The version a node's DNS answers for `qname` at the end of a run (0: NXDOMAIN).
pub async fn final_dns_version(server: SocketAddr, qname: &str) -> anyhow::Result<Version> {
    let answer = tokio::time::timeout(DNS_TIMEOUT * 5, dns_txt(server, qname))
        .await
        .map_err(|_| anyhow::anyhow!("no DNS answer from {server}"))??;
    match answer {
        ReadOutcome::Found { version, .. } => Ok(version),
        ReadOutcome::NotFound => Ok(0),
        other => anyhow::bail!("DNS answer from {server}: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query that comes back as itself (a down node's port given to the client: the client
    /// sends to itself) is no answer, not a NOERROR without records (a false `contract`
    /// violation in a power-cut run).
    #[tokio::test]
    async fn a_query_that_comes_back_is_no_answer() {
        let echo = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let server = echo.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            if let Ok((len, from)) = echo.recv_from(&mut buf).await {
                let _ = echo.send_to(&buf[..len], from).await;
            }
        });
        let outcome = dns_txt(server, "_chaos.example.pkarr.test.").await;
        let error = outcome.expect_err("an echoed query is not an answer");
        assert!(error.to_string().contains("sent a query"), "{error}");
    }
}
