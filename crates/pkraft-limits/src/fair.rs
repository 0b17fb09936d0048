//! A global budget shared fairly between client networks ([`FairBudget`]).
//!
//! A global rate (all publishes, all resolves, all UDP answers of a node) protects the node,
//! but a plain token bucket gives it to whoever asks most: a flood from one network takes every
//! token and the clients that ask little are refused with it. A [`FairBudget`] is the same
//! bucket (governor's GCRA) with a rule for when it runs short:
//!
//! - While the bucket has at least half its burst left, it grants its tokens as before and
//!   nothing else is counted: the common case costs the bucket's one atomic update and a load.
//! - Once less than half is left (as governor's state snapshot of the request says), the
//!   budget is *short*: what each client network asks for is counted over a sliding second
//!   and a sliding ten seconds ([`SPANS`]: the longer span keeps networks that take turns in
//!   bursts heavy between their turns), and so are the networks that ask. Counting starts
//!   before the bucket is empty so that the network that emptied it is known as heavy by then.
//! - A network's *share* is the budget's rate divided by the networks asking. A request from a
//!   network that has asked for no more than its share is granted even when the bucket is
//!   empty: the units are owed to the bucket. The bucket's next tokens that go to networks over
//!   their share pay that debt instead (those requests are refused). So the heaviest networks
//!   are refused first, a network within its share is not (while the debt has room), and the
//!   node still grants about the budget in all: what the light networks take comes out of the
//!   heavy ones'.
//! - The debt is capped at the bucket's burst, and once the budget has room again it is paid
//!   from that room (a second token per request) before anything else. Networks within their
//!   shares cannot together ask much more than the rate, so only the inexactness of the counts
//!   (below) reaches the cap; a flood that does is then held by the bucket alone. Over any
//!   time T the node grants at most `rate × T` and twice the burst: every unit borrowed beyond
//!   the cap's worth was paid back with a token of the bucket that nobody was granted.
//!
//! A network is an IPv4 /24 or an IPv6 /48 by default ([`ClientPrefix::NETWORKS`]): one network
//! holding many addresses (a /48 has 65,536 /64s) gets one network's share. The counts live in a
//! moka cache of at most `max_tracked_networks` entries, dropped when idle for [`COUNTS_KEPT`];
//! a network beyond it starts each request with no count, and the debt cap bounds what such
//! networks can take together. The networks asking are counted per window, at most
//! `max_tracked_networks` (a network the full cache turned away would count with each request).
//!
//! The share is an estimate of max-min fairness, not its exact water level: a network sending
//! at most `rate / networks asking` is not refused while the debt has room, and the heavy
//! networks split what is left.
//! Counting starts when the budget runs short, so a flood that empties the half-burst at once
//! may borrow before it is known as heavy; the debt cap bounds what that lets through.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::RateLimiter;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};

use crate::{ClientPrefix, LimitError, Rate};

/// The spans over which a network's asking is counted; a request is within its network's share
/// only if what the network asked is within it over each span, a second's worth of the span.
/// - One second: a network that floods is known as heavy after a second's worth of its share.
/// - Ten seconds: networks that take turns, each asking in a burst and then pausing while the
///   others ask, would each look new at the start of every turn if their counts slid out
///   within a second. Each turn's first request would then be within its share and borrow, and
///   enough such networks keep the debt full, so that a light network is refused
///   (`networks_that_take_turns_in_bursts_stay_heavy_between_their_bursts`). Over ten seconds
///   such a network is as heavy between its turns as its average says. A flood rotating slower
///   than that borrows once per network every 10–20 s (a turn's count fades out of the sliding
///   span within one to two windows), so it needs about `per_second × 10` to `× 20` networks
///   to keep the debt full.
///
/// The networks asking are counted per span too, so the ten-second share divides the rate
/// between every network that asked in the last 10–20 s.
const SPANS: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(10)];

/// How long a network's counts are kept once it stops asking: two of the longest span, after
/// which they would count nothing.
pub const COUNTS_KEPT: Duration = Duration::from_secs(2 * SPANS[1].as_secs());

/// When a request refused for its network's share may ask again: the bucket's next tokens come
/// within a second, whatever the network's count. Also the hint for a request of more units
/// than the burst, which is never granted (the bucket cannot hold it).
const RETRY_OVER_SHARE: Duration = Duration::from_secs(1);

/// A bucket whose grants come with its state (how much of the burst is left).
type Bucket<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

/// A global rate shared fairly between client networks; see the module docs. The clock is
/// governor's (tests use a fake one).
pub struct FairBudget<C: Clock = DefaultClock> {
    bucket: Bucket<C>,
    rate: Rate,
    clock: C,
    network: ClientPrefix,
    /// What each network asked for, while the budget is short, over each of [`SPANS`].
    asked: moka::sync::Cache<IpAddr, Arc<Mutex<[Window; SPANS.len()]>>>,
    /// How many networks asked, while the budget is short, over each of [`SPANS`].
    askers: Mutex<[Window; SPANS.len()]>,
    /// Units granted past an empty bucket to networks within their share, not yet paid back by
    /// tokens due to networks over theirs (or, once there is room again, by spare tokens); at
    /// most `rate.burst`.
    owed: AtomicU64,
    /// The most networks `asked` holds.
    max_tracked_networks: u64,
    /// When the budget was made: the windows count from it.
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
        self.take_at(client, units, || self.started.elapsed())
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
        Ok(Some(FairBudget {
            bucket: RateLimiter::direct_with_clock(quota, clock.clone()).with_middleware(),
            rate,
            clock,
            network,
            asked: moka::sync::Cache::builder()
                .max_capacity(max_tracked_networks)
                .time_to_idle(COUNTS_KEPT)
                .build(),
            askers: Mutex::new(Default::default()),
            owed: AtomicU64::new(0),
            max_tracked_networks: max_tracked_networks.max(1),
            started: Instant::now(),
        }))
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// [`FairBudget::take`], with `now` the time since the budget was made (asked only when
    /// the budget is short; tests move it with the bucket's clock).
    fn take_at(
        &self,
        client: IpAddr,
        units: u32,
        now: impl FnOnce() -> Duration,
    ) -> Result<(), OverBudget> {
        let Some(n) = NonZeroU32::new(units) else {
            return Ok(());
        };
        let bucket = match self.bucket.check_n(n) {
            Ok(Ok(snapshot)) => {
                // At least half the burst left (rounded up: a burst of 1 is short after
                // every grant, so that its debt can be paid).
                if u64::from(snapshot.remaining_burst_capacity()) * 2 >= u64::from(self.rate.burst)
                {
                    // Room. A debt left from a spell of shortage is paid from it first, a
                    // second token for each request, so that spells cannot add up debts.
                    if self.owed.load(Ordering::Relaxed) > 0
                        && matches!(self.bucket.check_n(n), Ok(Ok(_)))
                    {
                        self.settle(u64::from(units));
                    }
                    return Ok(());
                }
                Ok(())
            }
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
            // More than the burst at once: never granted (the bucket cannot hold it).
            Err(_) => Err(RETRY_OVER_SHARE),
        };
        let within_share = self.asks_within_share(client, units, now());
        let units = u64::from(units);
        match (bucket, within_share) {
            (Ok(()), true) => Ok(()),
            // The token pays what light networks owe; this heavy one waits.
            (Ok(()), false) if self.settle(units) => Err(OverBudget {
                retry_after: RETRY_OVER_SHARE,
            }),
            (Ok(()), false) => Ok(()),
            (Err(_), true) if self.borrow(units) => Ok(()),
            (Err(retry_after), _) => Err(OverBudget {
                retry_after: retry_after.max(Duration::from_millis(1)),
            }),
        }
    }

    /// Counts `units` asked by `client`'s network; whether what that network asked before this
    /// request is within its share of the rate over each of [`SPANS`] (this request's own units
    /// are not held against it: a network asking exactly its share evenly stays within).
    fn asks_within_share(&self, client: IpAddr, units: u32, now: Duration) -> bool {
        let windows = SPANS.map(|span| window_at(now, span));
        let counts = self.asked.get_with(self.network.key(client), Arc::default);
        let mut asked_before = [0.0; SPANS.len()];
        let mut first_this_window = [false; SPANS.len()];
        {
            let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
            for (i, span) in SPANS.iter().enumerate() {
                let (window, into) = windows[i];
                let counts = &mut counts[i];
                counts.roll(window);
                // A request late for its window (another thread has moved the counts on) is
                // judged at the new window's start: the previous count in full.
                let into = if counts.index == window { into } else { 0.0 };
                asked_before[i] = counts.over_last_window(into) / span.as_secs_f64();
                first_this_window[i] = counts.current == 0;
                counts.current = counts.current.saturating_add(u64::from(units));
            }
        }
        let mut askers = self.askers.lock().unwrap_or_else(PoisonError::into_inner);
        // Every span's askers are counted, whatever the other span says (no short cut).
        let within: [bool; SPANS.len()] = std::array::from_fn(|i| {
            let askers = &mut askers[i];
            askers.roll(windows[i].0);
            if first_this_window[i] {
                askers.current += 1;
            }
            // Every network that asked in either window is still asking, as far as we know;
            // never more than the networks counted (a network the full cache did not keep
            // comes back "first" with every request).
            let asking = askers
                .current
                .max(askers.previous)
                .clamp(1, self.max_tracked_networks);
            asked_before[i] <= f64::from(self.rate.per_second) / asking as f64
        });
        within.iter().all(|within| *within)
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

/// The window of `span`'s length that `now` falls in, and how far into it (0..1).
fn window_at(now: Duration, span: Duration) -> (u64, f64) {
    let index = u64::try_from(now.as_nanos() / span.as_nanos()).unwrap_or(u64::MAX);
    let into = (now.as_nanos() % span.as_nanos()) as f64 / span.as_nanos() as f64;
    (index, into)
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
    /// next window, and nothing is left of counts older than that. A thread late with an
    /// earlier window (it read the time before another moved on) counts in the current one: it
    /// must not wipe the counts.
    fn roll(&mut self, index: u64) {
        if index <= self.index {
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
    fn over_last_window(&self, into: f64) -> f64 {
        self.previous as f64 * (1.0 - into) + self.current as f64
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use governor::clock::FakeRelativeClock;

    use super::*;

    /// A budget of `rate` between /24s, tracking up to `tracked` of them, on `clock`.
    fn budget_on(
        rate: Rate,
        tracked: u64,
        clock: &FakeRelativeClock,
    ) -> FairBudget<FakeRelativeClock> {
        FairBudget::with_clock(rate, ClientPrefix::NETWORKS, tracked, "t", clock.clone())
            .expect("valid")
            .expect("on")
    }

    /// A budget of 100 a second with bursts of 100 between /24s, on a clock the test moves.
    struct Test {
        budget: FairBudget<FakeRelativeClock>,
        clock: FakeRelativeClock,
        now: Duration,
    }

    impl Test {
        fn new() -> Test {
            let clock = FakeRelativeClock::default();
            let budget = budget_on(Rate::new(100, 100), 1_000, &clock);
            Test {
                budget,
                clock,
                // Not at a window's start.
                now: Duration::from_millis(500),
            }
        }

        fn take(&self, client: IpAddr) -> Result<(), OverBudget> {
            self.budget.take_at(client, 1, || self.now)
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
        // Half the burst: the bucket is not yet short.
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

    /// The `n`-th of many networks, a /24 each.
    fn network(n: u32) -> IpAddr {
        let [_, _, a, b] = n.to_be_bytes();
        IpAddr::V4(Ipv4Addr::new(10, a, b, 1))
    }

    #[test]
    fn a_flood_spread_over_many_networks_gets_at_most_the_burst_and_the_debt() {
        let test = Test::new();
        let granted = (0..10_000)
            .filter(|n| test.take(network(*n)).is_ok())
            .count();
        // Every network asks once, so each is within its share: the bucket's burst (100), then
        // the debt up to its cap (100), then nothing (the clock does not move).
        assert_eq!(granted, 200, "{granted} granted of 10,000");
        assert!(test.budget.tracked_networks() <= 1_000);
    }

    #[test]
    fn a_debt_is_paid_back_before_the_next_spell_can_borrow() {
        let mut test = Test::new();
        let mut granted = 0;
        // Five times: 300 networks ask once each at the same moment, then silence for 2.5 s
        // (the spell of shortage ends, the bucket refills).
        for round in 0..5_u32 {
            granted += (0..300)
                .filter(|n| test.take(network(round * 300 + n)).is_ok())
                .count();
            test.advance(Duration::from_millis(2_500));
        }
        // The first round: the burst and the debt (200). Each later one: the bucket's burst
        // again (100), half of it paying the last debt and the debt borrowed anew: 100. A debt
        // forgotten between spells would give 200 each time (1,000 in all).
        assert!(granted <= 650, "{granted} granted in 5 spells");
        assert!(granted >= 500, "{granted} granted in 5 spells");
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
        // 1.5 s later (the budget still short): another network empties the bucket again. The
        // first one's asking is more than a second old, and over ten seconds its 250 requests
        // are 25 a second, within its share (50): a single request is granted past the empty
        // bucket.
        test.advance(Duration::from_millis(1_500));
        for host in 0..250 {
            let _ = test.take(in_network(1, host));
        }
        assert!(
            test.take(in_network(1, 1)).is_err(),
            "the other one is heavy now"
        );
        assert_eq!(test.take(in_network(0, 1)), Ok(()));
    }

    #[test]
    fn a_burst_of_one_still_shares_and_pays_its_debt() {
        let clock = FakeRelativeClock::default();
        let budget = budget_on(Rate::new(1, 1), 100, &clock);
        let at = || Duration::from_millis(500);
        // The one token; then a second network within its share borrows the debt's one.
        assert_eq!(budget.take_at(in_network(0, 1), 1, at), Ok(()));
        assert_eq!(budget.take_at(in_network(1, 1), 1, at), Ok(()));
        assert!(
            budget.take_at(in_network(2, 1), 1, at).is_err(),
            "debt full"
        );
        // A second later the first network (over its share: 1 / 3) gets the token, which
        // pays the debt instead; then another light network can borrow again.
        clock.advance(Duration::from_secs(1));
        let later = || Duration::from_millis(1_500);
        for _ in 0..3 {
            let _ = budget.take_at(in_network(0, 1), 1, later);
        }
        assert_eq!(budget.take_at(in_network(3, 1), 1, later), Ok(()));
    }

    #[test]
    fn networks_that_take_turns_in_bursts_stay_heavy_between_their_bursts() {
        // For 120 s: 32 networks take turns, each asking 25 times in 25 ms, then silent while
        // the 31 others ask (a pass takes 3.2 s). Each network asks about 26 times its share
        // on average, but its count over one second has slid out by its next turn. A light
        // network asks once every 6.6 s (half its share) from 10 s on. At four offsets of the
        // windows, so that no one alignment of turns and windows decides the outcome.
        for start_ms in [0, 250, 500, 750] {
            // The budget of new keys in the cluster's flood test: 10 a second, bursts of 10.
            let clock = FakeRelativeClock::default();
            let budget = budget_on(Rate::new(10, 10), 1_000, &clock);
            let mut now = Duration::from_millis(start_ms);
            let light = in_network(200, 1);
            let (mut light_asked, mut light_refused) = (0, 0);
            for step in 0..120_000_u32 {
                let turn = step / 100 % 32;
                let into_turn = step % 100;
                if into_turn < 25 {
                    let network = u8::try_from(turn).expect("small");
                    let host = u8::try_from(into_turn).expect("small");
                    let _ = budget.take_at(in_network(network, host), 1, || now);
                }
                if step >= 10_000 && step % 6_600 == 0 {
                    light_asked += 1;
                    if budget.take_at(light, 1, || now).is_err() {
                        light_refused += 1;
                    }
                }
                clock.advance(Duration::from_millis(1));
                now += Duration::from_millis(1);
            }
            assert_eq!(
                light_refused, 0,
                "windows offset {start_ms} ms: the light network was refused {light_refused} \
                 times of {light_asked}"
            );
        }
    }

    #[test]
    fn a_late_request_does_not_wipe_the_counts_of_a_later_window() {
        let mut window = Window::default();
        window.roll(7);
        window.current = 50;
        window.roll(6);
        assert_eq!((window.index, window.current), (7, 50));
    }

    #[test]
    fn a_window_slides_its_previous_count_out() {
        let mut window = Window::default();
        window.roll(5);
        window.current = 100;
        window.roll(6);
        window.current = 10;
        assert!((window.over_last_window(0.25) - 85.0).abs() < 1e-9);
        window.roll(8);
        assert_eq!((window.previous, window.current), (0, 0));
    }
}
