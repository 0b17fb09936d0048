//! Connection admission for every TCP listener (public HTTP and HTTPS, admin, peer, DNS over
//! TCP): how many connections are open at once, how many of them one client holds, what an
//! accept error costs, and when the listener is short of slots.
//!
//! - At most `max_connections` are open: [`Admission::accept`] takes a free slot before it
//!   accepts, so while every slot is taken new connections wait in the kernel's backlog and hold
//!   no descriptor of this process. The caps of all listeners come out of one descriptor budget
//!   (the binary's `descriptors` module), so storage always finds a descriptor free.
//! - At most `max_per_client` from one client, an IPv4 address or an IPv6 network of
//!   `client_prefix` (a /56 by default: a site owns at least that much), trusted proxies exempt.
//!   A connection beyond it is closed at once.
//! - An accept error (out of descriptors, out of memory) pauses the loop, doubling from 10 ms up
//!   to 1 s while errors repeat, instead of retrying at once; each is counted and logged at most
//!   once per 10 s.
//! - *Pressure*: from three quarters of the slots taken until fewer than half are, listeners
//!   close connections idle for [`PRESSURE_IDLE_TIMEOUT`] (and ones whose first request has not
//!   come within it), as nginx drops idle keep-alive connections when it runs out. A client
//!   holding connections without using them then cannot keep others out.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::{ClientPrefix, TrustedProxies};

/// Under pressure, a connection with nothing in flight for this long is closed, and so is one
/// whose first request has not arrived this long after the accept.
pub const PRESSURE_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// The first pause after an accept error; it doubles while errors repeat.
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);
/// The longest pause after repeated accept errors.
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);
/// Accept errors are logged at most once per this period (with the count since the last line).
const ACCEPT_ERROR_LOG_PERIOD: Duration = Duration::from_secs(10);

/// The caps of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionCaps {
    /// Connections open at once; beyond it new ones wait in the kernel's backlog. At least 1.
    pub max_connections: usize,
    /// Connections open at once from one client; more are closed at once. 0: no limit.
    pub max_per_client: usize,
    /// Which addresses count as one client.
    pub client_prefix: ClientPrefix,
    /// Clients exempt from `max_per_client` (trusted proxies carry many clients).
    pub exempt: TrustedProxies,
}

impl ConnectionCaps {
    /// Checks the caps (a per-client cap above the total is the total: nothing to refuse).
    /// `fields` are the config names of the total cap and the IPv6 prefix length; the error is
    /// the name of the one at fault and why.
    pub fn validate(&self, fields: [&'static str; 2]) -> Result<(), (&'static str, String)> {
        let [max, ipv6_prefix] = fields;
        if self.max_connections == 0 {
            return Err((max, "must be at least 1".into()));
        }
        let prefix = self.client_prefix.ipv6;
        if prefix == 0 || prefix > 128 {
            return Err((ipv6_prefix, format!("must be 1 to 128, got {prefix}")));
        }
        Ok(())
    }
}

/// What one listener's admission counted since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Connections open now.
    pub open: u64,
    /// The cap on open connections.
    pub max_connections: u64,
    /// Connections accepted (including those then refused).
    pub accepted: u64,
    /// Connections closed at once because their client had `max_per_client` open.
    pub refused_per_client: u64,
    /// Failed `accept` calls (each paused the loop).
    pub accept_errors: u64,
    /// Connections closed early because they were idle while the listener was under pressure.
    pub closed_under_pressure: u64,
    /// Unauthenticated connections dropped to make room for newer ones (peer listener).
    pub evicted_unauthenticated: u64,
    /// Whether the listener is under pressure now.
    pub under_pressure: bool,
}

#[derive(Default)]
struct Counters {
    open: AtomicU64,
    accepted: AtomicU64,
    refused_per_client: AtomicU64,
    accept_errors: AtomicU64,
    closed_under_pressure: AtomicU64,
    evicted_unauthenticated: AtomicU64,
}

/// Open connections per client key; holds only clients with open connections, so it is bounded
/// by the listener's slots.
type OpenPerClient = Mutex<HashMap<IpAddr, usize>>;

/// What a listener's admission and its connections' tickets share.
struct Shared {
    caps: ConnectionCaps,
    per_client: OpenPerClient,
    counters: Counters,
    pressure: watch::Sender<bool>,
}

/// The admission of one listener; see the module docs. One per listener, shared with its
/// connections through their [`Ticket`]s.
pub struct Admission {
    /// The listener's name in logs and metrics (a fixed string, never from input).
    name: &'static str,
    slots: Arc<Semaphore>,
    shared: Arc<Shared>,
    /// When accept errors were last logged, and how many came since.
    error_log: Mutex<(Option<Instant>, u64)>,
}

/// One admitted connection's hold on its listener: its slot and its client's count, given back
/// when dropped.
pub struct Ticket {
    _slot: OwnedSemaphorePermit,
    client: Option<IpAddr>,
    shared: Arc<Shared>,
}

impl Admission {
    /// The admission of the listener `name` with `caps` (checked by the config's validation;
    /// `max_connections` 0 counts as 1).
    pub fn new(name: &'static str, caps: ConnectionCaps) -> Arc<Admission> {
        let slots = caps.max_connections.max(1);
        let (pressure, _) = watch::channel(false);
        Arc::new(Admission {
            name,
            slots: Arc::new(Semaphore::new(slots)),
            shared: Arc::new(Shared {
                caps,
                per_client: Mutex::default(),
                counters: Counters::default(),
                pressure,
            }),
            error_log: Mutex::new((None, 0)),
        })
    }

    /// The listener's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Waits for a free slot, then for a connection whose client is under its cap. Connections
    /// beyond a client's cap are closed here. Accept errors pause the loop (module docs).
    /// Cancel-safe: dropping the future loses no connection.
    pub async fn accept(&self, listener: &TcpListener) -> (TcpStream, SocketAddr, Ticket) {
        let mut pause = ACCEPT_PAUSE_MIN;
        loop {
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                // The semaphore is never closed; if it were, there would be no slot to wait for.
                std::future::pending::<()>().await;
                continue;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    self.accept_failed(&error);
                    if is_resource_shortage(&error) {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
                    }
                    continue;
                }
            };
            pause = ACCEPT_PAUSE_MIN;
            let counters = &self.shared.counters;
            counters.accepted.fetch_add(1, Ordering::Relaxed);
            match self.enter(peer.ip(), slot) {
                Some(ticket) => return (stream, peer, ticket),
                None => {
                    counters.refused_per_client.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(listener = self.name, %peer, "too many connections from this client; closing");
                }
            }
        }
    }

    /// The ticket of one more connection from `ip` holding `slot`, or `None` if its client is at
    /// its cap.
    fn enter(&self, ip: IpAddr, slot: OwnedSemaphorePermit) -> Option<Ticket> {
        let caps = &self.shared.caps;
        let client = if caps.max_per_client == 0 || caps.exempt.contains(ip) {
            None
        } else {
            let key = caps.client_prefix.key(ip);
            let mut open = lock(&self.shared.per_client);
            let count = open.entry(key).or_insert(0);
            if *count >= caps.max_per_client {
                return None;
            }
            *count += 1;
            Some(key)
        };
        self.shared.counters.open.fetch_add(1, Ordering::Relaxed);
        self.shared.update_pressure();
        Some(Ticket {
            _slot: slot,
            client,
            shared: self.shared.clone(),
        })
    }

    fn accept_failed(&self, error: &io::Error) {
        self.shared
            .counters
            .accept_errors
            .fetch_add(1, Ordering::Relaxed);
        let mut log = lock(&self.error_log);
        log.1 += 1;
        if log
            .0
            .is_none_or(|last| last.elapsed() >= ACCEPT_ERROR_LOG_PERIOD)
        {
            tracing::warn!(
                listener = self.name,
                %error,
                errors_since_last_report = log.1,
                "accept failed; pausing this listener's accepts"
            );
            *log = (Some(Instant::now()), 0);
        }
    }

    /// Follows whether the listener is under pressure (module docs).
    pub fn pressure(&self) -> watch::Receiver<bool> {
        self.shared.pressure.subscribe()
    }

    /// Counts a connection closed early under pressure.
    pub fn count_closed_under_pressure(&self) {
        self.shared
            .counters
            .closed_under_pressure
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an unauthenticated connection dropped for a newer one.
    pub fn count_evicted_unauthenticated(&self) {
        self.shared
            .counters
            .evicted_unauthenticated
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> AdmissionStats {
        let counters = &self.shared.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        AdmissionStats {
            open: load(&counters.open),
            max_connections: self.shared.caps.max_connections as u64,
            accepted: load(&counters.accepted),
            refused_per_client: load(&counters.refused_per_client),
            accept_errors: load(&counters.accept_errors),
            closed_under_pressure: load(&counters.closed_under_pressure),
            evicted_unauthenticated: load(&counters.evicted_unauthenticated),
            under_pressure: *self.shared.pressure.borrow(),
        }
    }
}

impl Shared {
    /// Pressure starts at three quarters of the slots and ends below half (the gap keeps it
    /// from flapping at the edge).
    fn update_pressure(&self) {
        let open = self.counters.open.load(Ordering::Relaxed);
        let max = self.caps.max_connections.max(1) as u64;
        self.pressure.send_if_modified(|under| {
            let next = if *under {
                open * 2 >= max
            } else {
                open * 4 >= max * 3
            };
            std::mem::replace(under, next) != next
        });
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(key) = self.client {
            let mut open = lock(&self.shared.per_client);
            if let Some(count) = open.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    open.remove(&key);
                }
            }
        }
        self.shared.counters.open.fetch_sub(1, Ordering::Relaxed);
        self.shared.update_pressure();
    }
}

/// Errors that say the process or system is short of something (descriptors, memory, buffers):
/// retrying at once would only fail again.
fn is_resource_shortage(error: &io::Error) -> bool {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    const ENOBUFS: i32 = 105;
    const ENOMEM: i32 = 12;
    matches!(
        error.raw_os_error(),
        Some(EMFILE | ENFILE | ENOBUFS | ENOMEM)
    ) || error.kind() == io::ErrorKind::OutOfMemory
}

/// The data behind `mutex`, also if a thread panicked while holding it (the counts stay
/// usable: each change is one statement).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(max: usize, per_client: usize) -> ConnectionCaps {
        ConnectionCaps {
            max_connections: max,
            max_per_client: per_client,
            client_prefix: ClientPrefix { ipv4: 32, ipv6: 56 },
            exempt: TrustedProxies::new(vec!["10.0.0.1/32".parse().expect("net")]),
        }
    }

    fn permit(admission: &Admission) -> OwnedSemaphorePermit {
        admission
            .slots
            .clone()
            .try_acquire_owned()
            .expect("a free slot")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn per_client_slots_are_counted_by_prefix_and_given_back() {
        let admission = Admission::new("test", caps(100, 2));
        let enter = |text: &str| admission.enter(ip(text), permit(&admission));
        let first = enter("192.0.2.1").expect("first");
        let second = enter("192.0.2.1").expect("second");
        assert!(enter("192.0.2.1").is_none(), "a third connection");
        assert!(enter("192.0.2.2").is_some(), "another IPv4 address");
        // A trusted proxy carries many clients.
        let through_proxy: Vec<_> = (0..10).filter_map(|_| enter("10.0.0.1")).collect();
        assert_eq!(through_proxy.len(), 10);
        drop(first);
        let third = enter("192.0.2.1").expect("a slot came back");
        drop((second, third, through_proxy));
        // Two /64s of one /56 are one client.
        let one = enter("2001:db8:0:1::1").expect("first");
        let two = enter("2001:db8:0:2::1").expect("second");
        assert!(enter("2001:db8:0:ff::1").is_none(), "same /56");
        assert!(enter("2001:db8:1::1").is_some(), "another /56");
        drop((one, two));
        assert!(
            lock(&admission.shared.per_client).is_empty(),
            "closed clients are forgotten"
        );
        assert_eq!(admission.stats().open, 0);
    }

    #[test]
    fn pressure_starts_at_three_quarters_and_ends_below_half() {
        let admission = Admission::new("test", caps(8, 0));
        let pressure = admission.pressure();
        let mut tickets = Vec::new();
        for n in 1..=8 {
            tickets.push(
                admission
                    .enter(ip("192.0.2.1"), permit(&admission))
                    .expect("ticket"),
            );
            assert_eq!(*pressure.borrow(), n >= 6, "{n} open");
        }
        for open in (0..8).rev() {
            tickets.pop();
            assert_eq!(*pressure.borrow(), open >= 4, "{open} open");
        }
        assert!(!admission.stats().under_pressure);
    }

    #[test]
    fn caps_are_validated_with_their_field_names() {
        let fields = ["max", "ipv6_prefix"];
        assert!(caps(10, 5).validate(fields).is_ok());
        assert_eq!(caps(0, 0).validate(fields).expect_err("0").0, "max");
        assert!(caps(10, 11).validate(fields).is_ok(), "per client > max");
        let mut bad_prefix = caps(10, 5);
        bad_prefix.client_prefix.ipv6 = 0;
        assert_eq!(
            bad_prefix.validate(fields).expect_err("prefix 0").0,
            "ipv6_prefix"
        );
    }

    /// Out of descriptors, the loop pauses instead of spinning, and counts each failure.
    #[tokio::test]
    async fn accept_errors_pause_and_count() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let admission = Admission::new("test", caps(4, 0));
        let error = io::Error::from_raw_os_error(24);
        assert!(is_resource_shortage(&error));
        admission.accept_failed(&error);
        assert_eq!(admission.stats().accept_errors, 1);
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (_stream, _peer, _ticket) = admission.accept(&listener).await;
        let stats = admission.stats();
        assert_eq!((stats.accepted, stats.open), (1, 1));
    }
}
