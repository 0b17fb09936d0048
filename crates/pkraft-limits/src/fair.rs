//! A global budget shared fairly between client networks ([`FairBudget`]).
//!
//! A global rate (all publishes, all resolves, all UDP answers of a node) protects the node,
//! but a plain token bucket gives it to whoever asks most: a flood from one network takes every
//! token and the clients that ask little are refused with it. A [`FairBudget`] is the same
//! bucket (governor's GCRA) with a rule for when it runs short:
//!
//! - While the bucket is less than half spent, it grants its tokens as before and nothing else
//!   is counted (the common case costs two atomic bucket updates).
//! - Once half its burst is spent (a second bucket with half the burst, the *watch*, refuses),
//!   the budget is *short* for the next [`SHORT_FOR`]. While short, what each client network
//!   asks for is counted over a sliding second, and so are the networks that ask. Counting
//!   starts before the bucket is empty so that the network that emptied it is known as heavy
//!   by then.
//! - A network's *share* is the budget's rate divided by the networks asking. A request from a
//!   network that has asked for no more than its share is granted even when the bucket is
//!   empty: the units are owed to the bucket. The bucket's next tokens that go to networks over
//!   their share pay that debt instead (those requests are refused). So the heaviest networks
//!   are refused first, a network within its share never is, and the node still grants about
//!   the budget in all: what the light networks take comes out of the heavy ones'.
//! - The debt is capped at the bucket's burst, and forgotten when the budget is short again
//!   after a spell with room. Networks within their shares cannot together ask more than the
//!   rate, so only the inexactness of the counts (below) reaches the cap; a flood that does is
//!   then held by the bucket alone: in a spell of shortage the node grants at most the rate for
//!   its length and twice the burst.
//!
//! A network is an IPv4 /24 or an IPv6 /48 by default ([`ClientPrefix::NETWORKS`]): one network
//! holding many addresses (a /48 has 65,536 /64s) gets one network's share. The counts live in a
//! moka cache of at most `max_tracked_networks` entries, dropped when idle for [`SHORT_FOR`];
//! a network beyond it starts each request with no count, and the debt cap bounds what such
//! networks can take together.
//!
//! The share is an estimate of max-min fairness, not its exact water level: a network sending
//! at most `rate / networks asking` is never refused, and the heavy networks split what is left.
//! Counting starts when the budget runs short, so a flood that empties the half-burst at once
//! may borrow before it is known as heavy; the debt cap bounds what that lets through.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::RateLimiter;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};

use crate::{ClientPrefix, LimitError, Rate};

/// The window over which a network's asking is counted.
const WINDOW: Duration = Duration::from_secs(1);

/// How long a budget stays short after its watch (or its bucket) last refused.
pub const SHORT_FOR: Duration = Duration::from_secs(2);

type DirectLimiter<C> =
    RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A global rate shared fairly between client networks; see the module docs. The clock is
/// governor's (tests use a fake one).
pub struct FairBudget<C: Clock = DefaultClock> {
    bucket: DirectLimiter<C>,
    /// The same rate with half the burst: refusing, it says the budget is running short.
    watch: DirectLimiter<C>,
    rate: Rate,
    clock: C,
    network: ClientPrefix,
    /// What each network asked for, while the budget is short.
    asked: moka::sync::Cache<IpAddr, Arc<Mutex<Window>>>,
    /// How many networks asked, while the budget is short.
    askers: Mutex<Window>,
    /// Units granted past an empty bucket to networks within their share; at most `rate.burst`.
    owed: AtomicU64,
    /// Until when (nanoseconds after `started`) the budget is short.
    short_until: AtomicU64,
    started: Instant,
}

impl<C: Clock> std::fmt::Debug for FairBudget<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FairBudget")
            .field("rate", &self.rate)
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

/// A refusal by a [`FairBudget`]: when asking again can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    pub retry_after: Duration,
}

impl FairBudget {
    /// `rate.per_second` units a second, `rate.burst` at once, shared between networks of
    /// `network`'s lengths; `None` when the rate is off. `field` names the setting in errors.
    pub fn new(
        rate: Rate,
        network: ClientPrefix,
        max_tracked_networks: u64,
        field: &str,
    ) -> Result<Option<FairBudget>, LimitError> {
        FairBudget::with_clock(
            rate,
            network,
            max_tracked_networks,
            field,
            DefaultClock::default(),
        )
    }

    /// Takes `units` for a request from `client` (its address: the network is derived here).
    pub fn take(&self, client: IpAddr, units: u32) -> Result<(), OverBudget> {
        self.take_at(client, units, self.started.elapsed())
    }
}

impl<C: Clock + Clone> FairBudget<C> {
    fn with_clock(
        rate: Rate,
        network: ClientPrefix,
        max_tracked_networks: u64,
        field: &str,
        clock: C,
    ) -> Result<Option<FairBudget<C>>, LimitError> {
        let quota = rate.quota().map_err(|reason| LimitError {
            field: field.to_string(),
            reason,
        })?;
        let Some(quota) = quota else {
            return Ok(None);
        };
        let half_burst = NonZeroU32::new(rate.burst / 2).unwrap_or(NonZeroU32::MIN);
        Ok(Some(FairBudget {
            bucket: RateLimiter::direct_with_clock(quota, clock.clone()),
            watch: RateLimiter::direct_with_clock(quota.allow_burst(half_burst), clock.clone()),
            rate,
            clock,
            network,
            asked: moka::sync::Cache::builder()
                .max_capacity(max_tracked_networks)
                .time_to_idle(SHORT_FOR)
                .build(),
            askers: Mutex::new(Window::default()),
            owed: AtomicU64::new(0),
            short_until: AtomicU64::new(0),
            started: Instant::now(),
        }))
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// [`FairBudget::take`] at `now` after the budget was made (the counts' clock: tests move
    /// it with the bucket's).
    fn take_at(&self, client: IpAddr, units: u32, now: Duration) -> Result<(), OverBudget> {
        let Some(n) = NonZeroU32::new(units) else {
            return Ok(());
        };
        let now_nanos = nanos(now);
        let bucket = match self.bucket.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
            // More than the burst at once: never granted (the bucket cannot hold it).
            Err(_) => Err(WINDOW),
        };
        let watch_ok = matches!(self.watch.check_n(n), Ok(Ok(())));
        let short_until = self.short_until.load(Ordering::Relaxed);
        if bucket.is_ok() && watch_ok && now_nanos >= short_until {
            return Ok(());
        }
        if bucket.is_err() || !watch_ok {
            if now_nanos >= short_until {
                // Short again after a spell with room: that room settled the old debt.
                self.owed.store(0, Ordering::Relaxed);
            }
            self.short_until.fetch_max(
                now_nanos.saturating_add(nanos(SHORT_FOR)),
                Ordering::Relaxed,
            );
        }
        let within_share = self.asks_within_share(client, units, now);
        let units = u64::from(units);
        match (bucket, within_share) {
            (Ok(()), true) => Ok(()),
            // The token pays what light networks owe; this heavy one waits.
            (Ok(()), false) if self.settle(units) => Err(OverBudget {
                retry_after: WINDOW,
            }),
            (Ok(()), false) => Ok(()),
            (Err(_), true) if self.borrow(units) => Ok(()),
            (Err(retry_after), _) => Err(OverBudget {
                retry_after: retry_after.max(Duration::from_millis(1)),
            }),
        }
    }

    /// Counts `units` asked by `client`'s network; whether that network's asking over the last
    /// second is within its share of the rate.
    fn asks_within_share(&self, client: IpAddr, units: u32, now: Duration) -> bool {
        let window = now.as_nanos() / WINDOW.as_nanos();
        let window = u64::try_from(window).unwrap_or(u64::MAX);
        let into = (now.as_nanos() % WINDOW.as_nanos()) as f64 / WINDOW.as_nanos() as f64;
        let counts = self.asked.get_with(self.network.key(client), Arc::default);
        let (asked, first_this_window) = {
            let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
            counts.roll(window);
            let first = counts.current == 0;
            counts.current = counts.current.saturating_add(u64::from(units));
            (counts.per_second(into), first)
        };
        let askers = {
            let mut askers = self.askers.lock().unwrap_or_else(PoisonError::into_inner);
            askers.roll(window);
            if first_this_window {
                askers.current += 1;
            }
            // Every network that asked in either window is still asking, as far as we know.
            askers.current.max(askers.previous).max(1)
        };
        asked <= f64::from(self.rate.per_second) / askers as f64
    }

    /// Adds `units` to the debt if it stays within the burst.
    fn borrow(&self, units: u64) -> bool {
        let cap = u64::from(self.rate.burst);
        self.owed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |owed| {
                (owed + units <= cap).then_some(owed + units)
            })
            .is_ok()
    }

    /// Pays up to `units` of the debt, if there is one.
    fn settle(&self, units: u64) -> bool {
        self.owed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |owed| {
                (owed > 0).then(|| owed.saturating_sub(units))
            })
            .is_ok()
    }

    /// Networks with counts right now (tests; moka applies evictions in batches).
    pub fn tracked_networks(&self) -> u64 {
        self.asked.run_pending_tasks();
        self.asked.entry_count()
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A count over the current window and the one before it.
#[derive(Debug, Default)]
struct Window {
    index: u64,
    current: u64,
    previous: u64,
}

impl Window {
    /// Moves to window `index`: the current count becomes the previous one if `index` is the
    /// next window, and nothing is left of counts older than that.
    fn roll(&mut self, index: u64) {
        if index == self.index {
            return;
        }
        self.previous = if index == self.index + 1 {
            self.current
        } else {
            0
        };
        self.current = 0;
        self.index = index;
    }

    /// The count over the last window's length, `into` (0..1) of the way through the current
    /// window: the part of the previous window still inside it, by proportion, plus the current.
    fn per_second(&self, into: f64) -> f64 {
        self.previous as f64 * (1.0 - into) + self.current as f64
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use governor::clock::FakeRelativeClock;

    use super::*;

    /// A budget of 100 a second with bursts of 100 between /24s, on a clock the test moves.
    struct Test {
        budget: FairBudget<FakeRelativeClock>,
        clock: FakeRelativeClock,
        now: Duration,
    }

    impl Test {
        fn new() -> Test {
            let clock = FakeRelativeClock::default();
            let budget = FairBudget::with_clock(
                Rate::new(100, 100),
                ClientPrefix::NETWORKS,
                1_000,
                "t",
                clock.clone(),
            )
            .expect("valid")
            .expect("on");
            Test {
                budget,
                clock,
                // Not at a window's start.
                now: Duration::from_millis(500),
            }
        }

        fn take(&self, client: IpAddr) -> Result<(), OverBudget> {
            self.budget.take_at(client, 1, self.now)
        }

        fn advance(&mut self, by: Duration) {
            self.clock.advance(by);
            self.now += by;
        }
    }

    fn in_network(network: u8, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, network, host))
    }

    #[test]
    fn with_room_everyone_is_granted_and_nothing_is_counted() {
        let test = Test::new();
        // Half the burst: the watch is not yet refusing.
        for host in 0..50 {
            assert_eq!(test.take(in_network(0, host)), Ok(()));
        }
        assert_eq!(test.budget.tracked_networks(), 0, "counted while not short");
    }

    #[test]
    fn the_heaviest_network_is_refused_and_the_light_ones_never_are() {
        let mut test = Test::new();
        let (mut heavy_granted, mut heavy_refused) = (0_u32, 0_u32);
        // For 5 s: one network with many addresses asks 10,000 times a second; nine others
        // ask 5 times a second each, within their share (100 / 10 networks = 10 a second).
        for ms in 0..5_000_u32 {
            for n in 0..10_u32 {
                let host = u8::try_from((ms * 10 + n) % 250).expect("small");
                match test.take(in_network(0, host)) {
                    Ok(()) => heavy_granted += 1,
                    Err(refused) => {
                        heavy_refused += 1;
                        assert!(refused.retry_after > Duration::ZERO);
                    }
                }
            }
            if ms % 200 == 0 {
                for network in 1..10 {
                    assert_eq!(
                        test.take(in_network(network, 1)),
                        Ok(()),
                        "network {network} refused within its share at {ms} ms"
                    );
                }
            }
            test.advance(Duration::from_millis(1));
        }
        // The node granted its burst and rate (100 + 5 x 100) in all, give or take the debt:
        // the light networks took 9 x 5 x 5 = 225 of it, the heavy one the rest.
        let total = heavy_granted + 225;
        assert!((550..=750).contains(&total), "{total} granted in all");
        assert!(
            heavy_granted < 500,
            "{heavy_granted} granted to the heavy network"
        );
        assert!(heavy_refused > 49_000, "{heavy_refused} refused");
    }

    #[test]
    fn a_flood_spread_over_many_networks_gets_at_most_the_budget_and_its_debt() {
        let test = Test::new();
        let granted = (0..10_000_u32)
            .filter(|n| {
                let [_, a, b, _] = n.to_be_bytes();
                test.take(IpAddr::V4(Ipv4Addr::new(10, a, b, 1))).is_ok()
            })
            .count();
        // The burst (100) and what the 51st to 100th networks borrowed, each within a share of
        // 100 / (networks asking); never more than the burst and the debt cap (100).
        assert!(
            (140..=200).contains(&granted),
            "{granted} granted of 10,000"
        );
        assert!(test.budget.tracked_networks() <= 1_000);
    }

    #[test]
    fn a_network_counts_as_light_again_once_its_asking_slows() {
        let mut test = Test::new();
        // A heavy network empties the bucket and is counted heavy.
        for host in 0..250 {
            let _ = test.take(in_network(0, host));
        }
        test.advance(Duration::from_millis(100));
        assert!(test.take(in_network(0, 1)).is_err(), "still heavy");
        // Two windows later its old asking no longer counts: a single request is within its
        // share again.
        test.advance(Duration::from_millis(2_000));
        assert_eq!(test.take(in_network(0, 1)), Ok(()));
    }

    #[test]
    fn a_window_slides_its_previous_count_out() {
        let mut window = Window::default();
        window.roll(5);
        window.current = 100;
        window.roll(6);
        window.current = 10;
        assert!((window.per_second(0.25) - 85.0).abs() < 1e-9);
        window.roll(8);
        assert_eq!((window.previous, window.current), (0, 0));
    }
}
