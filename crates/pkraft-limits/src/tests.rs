use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn limiter(per_client: Rate, global: Rate, max_tracked: u64) -> ClassLimiter {
    ClassLimiter::new(
        &ClassLimits { per_client, global },
        Prefixes::DEFAULT,
        max_tracked,
        "t",
    )
    .expect("valid limits")
}

/// The `n`-th of many distinct synthetic client addresses (IPv6, so there are enough).
fn synthetic(n: u64) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from_bits(
        (0x2001_0db8_u128 << 96) | (u128::from(n) << 64),
    ))
}

#[test]
fn off_limits_allow_everything() {
    let limiter = limiter(Rate::OFF, Rate::OFF, 10);
    assert!(!limiter.is_active());
    for _ in 0..10_000 {
        assert_eq!(limiter.check(ip("192.0.2.1")), Ok(()));
    }
    assert_eq!(limiter.tracked_clients(), 0);
}

#[test]
fn a_client_gets_its_burst_then_is_refused_while_others_are_served() {
    let limiter = limiter(Rate::new(10, 5), Rate::OFF, 100);
    for _ in 0..5 {
        assert_eq!(limiter.check(ip("192.0.2.1")), Ok(()));
    }
    let denied = limiter.check(ip("192.0.2.1")).expect_err("over the burst");
    assert_eq!(denied.scope, Scope::Client);
    assert_eq!(denied.limit, Limit::PerSecond(Rate::new(10, 5)));
    // One token comes back every 100 ms.
    assert!(
        denied.retry_after > Duration::ZERO && denied.retry_after <= Duration::from_millis(100),
        "{:?}",
        denied.retry_after
    );
    assert_eq!(limiter.check(ip("192.0.2.2")), Ok(()));
}

#[test]
fn the_global_limit_counts_every_client_but_not_refused_ones() {
    let limiter = limiter(Rate::new(1, 2), Rate::new(1, 4), 100);
    // The first client uses 2 global tokens, then is refused by its own limit three times:
    // those refusals must not use global tokens.
    for _ in 0..2 {
        assert_eq!(limiter.check(ip("192.0.2.1")), Ok(()));
    }
    for _ in 0..3 {
        let denied = limiter.check(ip("192.0.2.1")).expect_err("client limit");
        assert_eq!(denied.scope, Scope::Client);
    }
    for _ in 0..2 {
        assert_eq!(limiter.check(ip("192.0.2.2")), Ok(()));
    }
    let denied = limiter.check(ip("192.0.2.3")).expect_err("global limit");
    assert_eq!(denied.scope, Scope::Global);
    assert_eq!(denied.limit, Limit::PerSecond(Rate::new(1, 4)));
}

#[test]
fn a_burst_of_zero_is_refused_with_the_field_name() {
    let err = ClassLimiter::new(
        &ClassLimits {
            per_client: Rate::new(5, 0),
            global: Rate::OFF,
        },
        Prefixes::DEFAULT,
        10,
        "rate_limit.publish",
    )
    .expect_err("burst 0");
    assert_eq!(err.field, "rate_limit.publish.per_client");
}

/// A million distinct addresses (a spoofed or rotating flood) leave at most the configured
/// number of per-client states behind.
#[test]
fn per_client_state_stays_bounded_under_a_million_addresses() {
    const MAX_TRACKED: u64 = 1_000;
    let limiter = limiter(Rate::new(1, 10), Rate::OFF, MAX_TRACKED);
    let started = Instant::now();
    for n in 0..1_000_000 {
        let _ = limiter.check(synthetic(n));
        if n % 100_000 == 0 {
            limiter.run_pending_maintenance();
            assert!(
                limiter.tracked_clients() <= MAX_TRACKED,
                "{} states after {n} addresses",
                limiter.tracked_clients()
            );
        }
    }
    limiter.run_pending_maintenance();
    assert!(limiter.tracked_clients() <= MAX_TRACKED);
    assert!(limiter.tracked_clients() > 0, "nothing tracked at all");
    eprintln!(
        "1M addresses in {:?}, {} tracked",
        started.elapsed(),
        limiter.tracked_clients()
    );
}

/// When the store is full, a flood of one-off addresses does not push out the state of a client
/// that keeps coming back during it: that client stays limited. (One that stops coming back may
/// be forgotten, which only matters once its bucket has refilled anyway.)
#[test]
fn a_flood_of_new_addresses_does_not_reset_a_busy_client() {
    let rate = Rate::new(1, 200);
    let limiter = limiter(rate, Rate::OFF, 500);
    let abuser = ip("198.51.100.7");
    let started = Instant::now();
    let mut allowed = 0_u64;
    for n in 0..100_000 {
        let _ = limiter.check(synthetic(n));
        if n % 10 == 0 && limiter.check(abuser).is_ok() {
            allowed += 1;
        }
    }
    // Kept state: the burst plus one per second. A reset state would hand out another burst.
    let expected_max = u64::from(rate.burst) + started.elapsed().as_secs() + 2;
    assert!(
        allowed <= expected_max,
        "the abuser's state was reset: {allowed} allowed, at most {expected_max} expected"
    );
    assert!(allowed >= u64::from(rate.burst), "only {allowed} allowed");
}

#[test]
fn a_client_is_its_prefix() {
    let prefix = ClientPrefix { ipv4: 24, ipv6: 56 };
    assert_eq!(prefix.key(ip("192.0.2.77")), ip("192.0.2.0"));
    assert_eq!(
        prefix.key(ip("2001:db8:aa:bbcc:1:2:3:4")),
        ip("2001:db8:aa:bb00::")
    );
    // A dual-stack socket reports IPv4 clients as mapped addresses.
    assert_eq!(prefix.key(ip("::ffff:192.0.2.77")), ip("192.0.2.0"));
    assert_eq!(ClientPrefix::HOSTS.key(ip("192.0.2.77")), ip("192.0.2.77"));
    assert_eq!(ClientPrefix::HOSTS.key(ip("2001:db8::1")), ip("2001:db8::"));
    let full = ClientPrefix {
        ipv4: 32,
        ipv6: 128,
    };
    assert_eq!(full.key(ip("2001:db8::1")), ip("2001:db8::1"));
    assert_eq!(
        ClientPrefix { ipv4: 1, ipv6: 1 }.key(IpAddr::V4(Ipv4Addr::BROADCAST)),
        ip("128.0.0.0")
    );
    let err = ClientPrefix { ipv4: 0, ipv6: 64 }
        .validate("dns.rrl")
        .expect_err("0 bits");
    assert_eq!(err.field, "dns.rrl.ipv4_prefix_len");
    let err = ClientPrefix {
        ipv4: 24,
        ipv6: 129,
    }
    .validate("dns.rrl")
    .expect_err("129 bits");
    assert_eq!(err.field, "dns.rrl.ipv6_prefix_len");
}

#[test]
fn forwarded_addresses_count_only_from_trusted_proxies() {
    let proxies = TrustedProxies::new(vec![
        "10.0.0.0/8".parse().expect("net"),
        "2001:db8:ffff::1/128".parse().expect("net"),
    ]);
    let chain = [ip("203.0.113.9"), ip("198.51.100.1"), ip("10.1.1.1")];
    // Not from a proxy: the headers are the client's word and ignored.
    assert_eq!(proxies.client(ip("192.0.2.5"), &chain), ip("192.0.2.5"));
    // From a proxy: the nearest address the proxies did not add. The leftmost one is whatever
    // the client wrote.
    assert_eq!(proxies.client(ip("10.0.0.2"), &chain), ip("198.51.100.1"));
    assert_eq!(
        proxies.client(ip("::ffff:10.0.0.2"), &chain),
        ip("198.51.100.1")
    );
    assert_eq!(
        proxies.client(ip("2001:db8:ffff::1"), &[ip("2001:db8:1::5")]),
        ip("2001:db8:1::5")
    );
    // A proxy that forwards no chain is the client; a chain of proxies only, its origin.
    assert_eq!(proxies.client(ip("10.0.0.2"), &[]), ip("10.0.0.2"));
    assert_eq!(
        proxies.client(ip("10.0.0.2"), &[ip("10.9.9.9"), ip("10.0.0.3")]),
        ip("10.9.9.9")
    );
    assert_eq!(
        TrustedProxies::default().client(ip("10.0.0.2"), &chain),
        ip("10.0.0.2")
    );
}

#[test]
fn trusted_proxies_are_networks_or_single_addresses() {
    #[derive(serde::Deserialize)]
    struct Holder {
        proxies: TrustedProxies,
    }
    let parse = |text: &str| serde_json::from_str::<Holder>(text).map(|holder| holder.proxies);
    let proxies = parse(r#"{"proxies": ["10.0.0.0/8", "192.0.2.1", "::1"]}"#).expect("parses");
    assert!(proxies.contains(ip("10.200.0.1")));
    assert!(proxies.contains(ip("192.0.2.1")));
    assert!(!proxies.contains(ip("192.0.2.2")));
    assert!(proxies.contains(ip("::1")));
    let err = parse(r#"{"proxies": ["proxy.example"]}"#).expect_err("a name");
    assert!(err.to_string().contains("proxy.example"), "{err}");
}

#[test]
fn a_budget_grants_units_up_to_its_burst() {
    let budget = |rate| FairBudget::new(rate, ClientPrefix::NETWORKS, 100, "dns.rrl.global_bytes");
    assert!(budget(Rate::OFF).expect("valid").is_none(), "off");
    let err = budget(Rate::new(10, 0)).expect_err("no burst");
    assert_eq!(err.field, "dns.rrl.global_bytes");
    // 1 unit per second: only the burst of 1,000 is there within the test.
    let client = ip("192.0.2.1");
    let one = budget(Rate::new(1, 1_000)).expect("valid").expect("on");
    assert_eq!(one.take(client, 600), Ok(()));
    assert!(one.take(client, 600).is_err(), "400 left");
    assert_eq!(one.take(client, 400), Ok(()));
    assert_eq!(one.take(client, 0), Ok(()), "nothing is always there");
    assert!(one.take(client, 1).is_err(), "used up");
    let big = budget(Rate::new(1_000_000, 1_000))
        .expect("valid")
        .expect("on");
    assert!(
        big.take(client, 1_001).is_err(),
        "more than the burst is never granted"
    );
}

#[test]
fn a_key_gets_its_burst_then_one_per_period_and_other_keys_are_not_counted() {
    let limiter = KeyLimiter::new(KeyRate::new(6, 3), 100, "t")
        .expect("valid")
        .expect("on");
    let (key, other) = ([1_u8; 32], [2_u8; 32]);
    for _ in 0..3 {
        assert_eq!(limiter.check(&key), Ok(()));
    }
    let denied = limiter.check(&key).expect_err("over the burst");
    assert_eq!(denied.scope, Scope::Key);
    assert_eq!(denied.limit, Limit::PerMinute(KeyRate::new(6, 3)));
    // 6 a minute: one every 10 s.
    assert!(
        denied.retry_after > Duration::from_secs(9)
            && denied.retry_after <= Duration::from_secs(10),
        "{:?}",
        denied.retry_after
    );
    assert_eq!(limiter.check(&other), Ok(()));
    assert_eq!(denied.limit.to_string(), "6/min with bursts of 3");
    assert_eq!(denied.limit.window_secs(), 30);
}

#[test]
fn a_key_rate_off_has_no_limiter_and_a_burst_of_zero_names_its_field() {
    assert!(
        KeyLimiter::new(KeyRate::OFF, 100, "t")
            .expect("valid")
            .is_none()
    );
    let error = KeyLimiter::new(KeyRate::new(6, 0), 100, "rate_limit.publish_per_key")
        .expect_err("burst 0");
    assert_eq!(error.field, "rate_limit.publish_per_key");
}

#[test]
fn tracked_keys_stay_within_their_bound() {
    let limiter = KeyLimiter::new(KeyRate::new(1, 1), 64, "t")
        .expect("valid")
        .expect("on");
    for n in 0..10_000_u32 {
        let mut key = [0_u8; 32];
        key[..4].copy_from_slice(&n.to_be_bytes());
        let _ = limiter.check(&key);
    }
    limiter.store.states.run_pending_tasks();
    assert!(limiter.tracked_keys() <= 64, "{}", limiter.tracked_keys());
}
