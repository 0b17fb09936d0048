//! Response rate limiting for UDP (`[dns.rrl]`), the defence authoritative servers use against
//! being a reflector: a UDP source address can be forged, so a flood of queries "from" a victim
//! would otherwise turn into a flood of answers at it.
//!
//! Each client network (a /24 or /56 by default) gets `responses_per_second` with bursts of
//! `burst`. Over that, answers are dropped, except one in `slip` (chosen at random, as BIND does,
//! so that networks over the limit at once each get their share), which is sent as an empty
//! truncated answer (TC=1): a real client then asks again over TCP, where the source address
//! cannot be forged and no limit applies, while the victim of a forged flood gets at most a
//! small, non-amplified fraction.
//!
//! Defaults: 1,000 answers/s with bursts of 2,000 per /24 (IPv6: /56), slip 2. NSD uses 200/s;
//! pkraft allows more because its legitimate heavy clients are recursive resolvers that carry a
//! whole iroh fleet (a fleet starting at once asks for thousands of keys in a second), and the
//! slip sends even those over the limit to TCP rather than failing them.
//!
//! Unlike BIND, which counts per (network, name, type), the bucket is per network: pkraft's
//! names are all alike (one per key) and a flood spreads over random keys.
//!
//! # The global budget
//! A flood forged from many networks passes every per-network limit (10,000 networks at 1,000
//! answers/s each is more than any node sends). So all UDP answers together also have a budget:
//! `global_responses_per_second` answers and `global_bytes_per_second` bytes (slips included),
//! whichever runs out first. An answer the per-network limit lets through still needs both;
//! refused, it meets the same fate as a per-network refusal: one in `slip` (at random) is sent
//! as the empty truncated answer, if the byte budget has room for it, and the rest are dropped.
//! A real client among them still gets a TC answer often enough to retry over TCP, which this
//! budget does not limit. The per-network limit is asked first, so one network over its own
//! limit does not use up everyone's budget.
//!
//! Both budgets are shared fairly between networks (an IPv4 /24, an IPv6 /48:
//! [`pkraft_limits::fair`]): once one runs short, the networks asking most lose their answers
//! first, and a network asking no more than the budget divided by the networks asking keeps
//! all of its own (while the debt the fair share allows has room). So a forged flood that fills
//! the budget takes the answers of the networks it forges, not those of a resolver that asks
//! within its share. Over any time T the node sends at most the budget for T plus twice its
//! burst, however many networks ask.
//!
//! The defaults (150,000 answers and 50 MB a second) are what a node answers at most on the
//! machines of docs/BENCHMARKS.md (122–130k iroh answers a second on 2 cores, about 380 bytes
//! each), so the budget takes nothing a node could serve; they bound what a node on a bigger
//! machine sends to addresses nobody vouches for (400 Mbit/s).

use std::net::IpAddr;

use pkraft_limits::{
    ClassLimiter, ClassLimits, ClientPrefix, FairBudget, LimitError, Prefixes, Rate, Scope,
};
use serde::Deserialize;

/// `[dns.rrl]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RrlSettings {
    /// UDP answers per second to one client network. 0: no limit. Default 1,000.
    pub responses_per_second: u32,
    /// Answers one client network may get at once. Default 2,000.
    pub burst: u32,
    /// One in `slip` answers over the limit (at random) is sent truncated (empty, TC=1), so that
    /// real clients retry over TCP; the others are dropped. 0: drop all, 1: truncate all.
    /// Default 2.
    pub slip: u32,
    /// IPv4 clients in one network of this length share a limit. Default 24.
    pub ipv4_prefix_len: u8,
    /// IPv6 clients in one network of this length share a limit. Default 56.
    pub ipv6_prefix_len: u8,
    /// Client networks whose state is kept; beyond it the least active are forgotten.
    /// Default 65,536.
    pub max_tracked_clients: u64,
    /// IPv4 clients in one network of this length share one share of the global budgets
    /// (module docs, "The global budget"). Default 24.
    pub network_ipv4_prefix_len: u8,
    /// The same for IPv6. Default 48: one site's networks, however many /56s it holds, get one
    /// share.
    pub network_ipv6_prefix_len: u8,
    /// UDP answers per second to all clients together, shared fairly between networks (module
    /// docs, "The global budget"). 0: no limit. Default 150,000: a little above what one 2-core
    /// node answers at most (docs/BENCHMARKS.md).
    pub global_responses_per_second: u32,
    /// Answers all clients together may get at once. Default 300,000.
    pub global_responses_burst: u32,
    /// Bytes of UDP answers per second to all clients together, slips included, shared like
    /// the answers. 0: no limit. Default 50,000,000 (400 Mbit/s): what the node may send to
    /// addresses nobody can vouch for.
    pub global_bytes_per_second: u32,
    /// Bytes all clients together may get at once; at least 65,535 (the largest answer).
    /// Default 100,000,000.
    pub global_bytes_burst: u32,
}

impl Default for RrlSettings {
    fn default() -> Self {
        RrlSettings {
            responses_per_second: 1_000,
            burst: 2_000,
            slip: 2,
            ipv4_prefix_len: 24,
            ipv6_prefix_len: 56,
            max_tracked_clients: 65_536,
            network_ipv4_prefix_len: ClientPrefix::NETWORKS.ipv4,
            network_ipv6_prefix_len: ClientPrefix::NETWORKS.ipv6,
            global_responses_per_second: 150_000,
            global_responses_burst: 300_000,
            global_bytes_per_second: 50_000_000,
            global_bytes_burst: 100_000_000,
        }
    }
}

/// The byte budget's burst must hold the largest UDP answer, or that answer could never be sent.
const GLOBAL_BYTES_BURST_MIN: u32 = 65_535;

impl RrlSettings {
    /// No limit at all: neither per network nor global (tests and benchmarks that send from one
    /// address far more than any limit allows).
    pub fn off() -> RrlSettings {
        RrlSettings {
            responses_per_second: 0,
            global_responses_per_second: 0,
            global_bytes_per_second: 0,
            ..RrlSettings::default()
        }
    }

    fn limits(&self) -> ClassLimits {
        ClassLimits {
            per_client: Rate::new(self.responses_per_second, self.burst),
            global: Rate::new(
                self.global_responses_per_second,
                self.global_responses_burst,
            ),
        }
    }

    fn global_bytes(&self) -> Rate {
        Rate::new(self.global_bytes_per_second, self.global_bytes_burst)
    }

    fn prefixes(&self) -> Prefixes {
        Prefixes {
            client: ClientPrefix {
                ipv4: self.ipv4_prefix_len,
                ipv6: self.ipv6_prefix_len,
            },
            network: ClientPrefix {
                ipv4: self.network_ipv4_prefix_len,
                ipv6: self.network_ipv6_prefix_len,
            },
        }
    }

    pub fn validate(&self) -> Result<(), LimitError> {
        self.prefixes().client.validate("dns.rrl")?;
        self.prefixes().network.validate_fields(
            "dns.rrl.network_ipv4_prefix_len",
            "dns.rrl.network_ipv6_prefix_len",
        )?;
        if self.max_tracked_clients == 0 {
            return Err(LimitError {
                field: "dns.rrl.max_tracked_clients".into(),
                reason: "must be at least 1".into(),
            });
        }
        // Named as the config names them, not as `ClassLimits` does.
        for (field, rate, burst_field) in [
            ("responses_per_second", self.limits().per_client, "burst"),
            (
                "global_responses_per_second",
                self.limits().global,
                "global_responses_burst",
            ),
            (
                "global_bytes_per_second",
                self.global_bytes(),
                "global_bytes_burst",
            ),
        ] {
            if rate.per_second > 0 && rate.burst == 0 {
                return Err(LimitError {
                    field: format!("dns.rrl.{burst_field}"),
                    reason: format!("must be at least 1 when {field} is {}", rate.per_second),
                });
            }
        }
        if self.global_bytes_per_second > 0 && self.global_bytes_burst < GLOBAL_BYTES_BURST_MIN {
            return Err(LimitError {
                field: "dns.rrl.global_bytes_burst".into(),
                reason: format!(
                    "must be at least {GLOBAL_BYTES_BURST_MIN} (the largest answer), got {}",
                    self.global_bytes_burst
                ),
            });
        }
        Ok(())
    }

    /// Whether any limit applies.
    pub fn is_on(&self) -> bool {
        self.responses_per_second > 0
            || self.global_responses_per_second > 0
            || self.global_bytes_per_second > 0
    }
}

/// What to do with an answer for a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Answer,
    /// Send an empty truncated answer instead.
    Slip(Scope),
    Drop(Scope),
}

/// The limiter of one DNS server's UDP sockets.
pub(crate) struct Rrl {
    /// Per client network, then all answers together.
    limiter: ClassLimiter,
    /// Bytes of all answers together.
    bytes: Option<FairBudget>,
    slip: u32,
}

impl Rrl {
    /// `None` when `settings` turn it off.
    pub(crate) fn new(settings: &RrlSettings) -> Result<Option<Rrl>, LimitError> {
        settings.validate()?;
        if !settings.is_on() {
            return Ok(None);
        }
        Ok(Some(Rrl {
            limiter: ClassLimiter::new(
                &settings.limits(),
                settings.prefixes(),
                settings.max_tracked_clients,
                "dns.rrl",
            )?,
            bytes: FairBudget::new(
                settings.global_bytes(),
                settings.prefixes().network,
                settings.max_tracked_clients,
                "dns.rrl.global_bytes_burst",
            )?,
            slip: settings.slip,
        }))
    }

    /// The verdict for one answer to `client` by the answer counts (its network's and
    /// everyone's); `dice` is the calling socket loop's.
    pub(crate) fn verdict(&self, client: IpAddr, dice: &mut SlipDice) -> Verdict {
        match self.limiter.check(client) {
            Ok(()) => Verdict::Answer,
            Err(denied) => self.refusal(denied.scope, dice),
        }
    }

    /// Takes `len` bytes of the global byte budget for an answer to `client`; `false` if its
    /// network cannot have them.
    pub(crate) fn take_bytes(&self, client: IpAddr, len: usize) -> bool {
        self.bytes.as_ref().is_none_or(|bytes| {
            bytes
                .take(client, u32::try_from(len).unwrap_or(u32::MAX))
                .is_ok()
        })
    }

    /// What becomes of an answer a limit of `scope` refused: slipped one time in `slip`.
    pub(crate) fn refusal(&self, scope: Scope, dice: &mut SlipDice) -> Verdict {
        if self.slip > 0 && dice.roll().is_multiple_of(u64::from(self.slip)) {
            Verdict::Slip(scope)
        } else {
            Verdict::Drop(scope)
        }
    }

    /// Client networks with limiter state.
    pub(crate) fn tracked_clients(&self) -> u64 {
        self.limiter.tracked_clients()
    }
}

/// A socket loop's source of slip decisions: xorshift64, which is plenty to spread slips
/// evenly, costs a few instructions, and needs no shared state.
pub(crate) struct SlipDice(u64);

impl SlipDice {
    /// Dice for socket loop number `index`.
    pub(crate) fn new(index: usize) -> SlipDice {
        // Any non-zero start; distinct per loop.
        SlipDice((0x9E37_79B9_7F4A_7C15 ^ (index as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9)) | 1)
    }

    fn roll(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(burst: u32, slip: u32) -> Rrl {
        Rrl::new(&RrlSettings {
            responses_per_second: 1,
            burst,
            slip,
            global_responses_per_second: 0,
            global_bytes_per_second: 0,
            ..RrlSettings::default()
        })
        .expect("valid")
        .expect("on")
    }

    #[test]
    fn the_burst_is_answered_then_one_in_slip_refusals_is_truncated() {
        let rrl = limiter(3, 3);
        let client: IpAddr = "192.0.2.7".parse().expect("ip");
        let neighbour: IpAddr = "192.0.2.200".parse().expect("ip");
        let other: IpAddr = "198.51.100.1".parse().expect("ip");
        let mut dice = SlipDice::new(0);
        let verdicts: Vec<Verdict> = (0..3_003).map(|_| rrl.verdict(client, &mut dice)).collect();
        assert_eq!(verdicts[..3], [Verdict::Answer; 3]);
        let slips = verdicts
            .iter()
            .filter(|v| **v == Verdict::Slip(Scope::Client))
            .count();
        let drops = verdicts
            .iter()
            .filter(|v| **v == Verdict::Drop(Scope::Client))
            .count();
        assert_eq!(slips + drops, 3_000, "a token came back within the test?");
        assert!(
            (900..=1_100).contains(&slips),
            "{slips} slips of 3,000 (1 in 3)"
        );
        // Same /24: same bucket. Another network: its own.
        assert_ne!(rrl.verdict(neighbour, &mut dice), Verdict::Answer);
        assert_eq!(rrl.verdict(other, &mut dice), Verdict::Answer);
    }

    /// Two networks over the limit in strict alternation each get their share of slips (a
    /// shared every-n-th counter would give all of them to one).
    #[test]
    fn alternating_networks_share_the_slips() {
        let rrl = limiter(1, 2);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "198.51.100.1".parse().expect("ip");
        let mut dice = SlipDice::new(1);
        let (mut slips_a, mut slips_b) = (0, 0);
        for _ in 0..2_000 {
            slips_a += usize::from(matches!(rrl.verdict(a, &mut dice), Verdict::Slip(_)));
            slips_b += usize::from(matches!(rrl.verdict(b, &mut dice), Verdict::Slip(_)));
        }
        assert!((800..=1_200).contains(&slips_a), "a: {slips_a}");
        assert!((800..=1_200).contains(&slips_b), "b: {slips_b}");
        // slip = 1: every refusal truncated; 0: none.
        let all = limiter(1, 1);
        let none = limiter(1, 0);
        let _ = (all.verdict(a, &mut dice), none.verdict(a, &mut dice));
        assert_eq!(all.verdict(a, &mut dice), Verdict::Slip(Scope::Client));
        assert_eq!(none.verdict(a, &mut dice), Verdict::Drop(Scope::Client));
    }

    /// Answers from networks each under its own limit still meet the global budgets: the
    /// answer count first, then the bytes. Networks asking once each are each within their
    /// share: past the burst they borrow, up to one more burst, and no further.
    #[test]
    fn the_global_budgets_bound_every_network_together() {
        let rrl = Rrl::new(&RrlSettings {
            responses_per_second: 1_000,
            burst: 1_000,
            slip: 0,
            global_responses_per_second: 1,
            global_responses_burst: 10,
            global_bytes_per_second: 1,
            global_bytes_burst: 100_000,
            ..RrlSettings::default()
        })
        .expect("valid")
        .expect("on");
        let mut dice = SlipDice::new(0);
        let verdicts: Vec<Verdict> = (0..30_u8)
            .map(|n| rrl.verdict(IpAddr::from([10, n, 0, 1]), &mut dice))
            .collect();
        assert_eq!(
            verdicts[..20],
            [Verdict::Answer; 20],
            "the global burst and the debt"
        );
        assert!(
            verdicts[20..]
                .iter()
                .all(|v| *v == Verdict::Drop(Scope::Global)),
            "{verdicts:?}"
        );
        // One network asking far more than the rate (1 byte/s): over its share, so only the
        // bucket decides.
        let client = IpAddr::from([10, 40, 0, 1]);
        assert!(rrl.take_bytes(client, 60_000));
        assert!(!rrl.take_bytes(client, 60_000), "40,000 bytes left");
        assert!(rrl.take_bytes(client, 40_000));
    }

    #[test]
    fn off_and_invalid_settings() {
        assert!(Rrl::new(&RrlSettings::off()).expect("valid").is_none());
        let small_bytes_burst = RrlSettings {
            global_bytes_burst: 1_000,
            ..RrlSettings::default()
        };
        let err = Rrl::new(&small_bytes_burst).err().expect("too small");
        assert_eq!(err.field, "dns.rrl.global_bytes_burst");
        let err = Rrl::new(&RrlSettings {
            burst: 0,
            ..RrlSettings::default()
        })
        .err()
        .expect("burst 0");
        assert_eq!(err.field, "dns.rrl.burst");
        let err = Rrl::new(&RrlSettings {
            ipv6_prefix_len: 0,
            ..RrlSettings::default()
        })
        .err()
        .expect("prefix 0");
        assert_eq!(err.field, "dns.rrl.ipv6_prefix_len");
    }
}
