//! Free loopback ports, for the processes that cannot be started on port 0 and report what they
//! bound (iroh-dns-server, NSD, and pkraft nodes that must come back on the same ports). pkraft
//! nodes that need no fixed ports are started on port 0 instead ([`crate::node`]).

use std::collections::HashSet;
use std::net::{TcpListener, UdpSocket};
use std::sync::Mutex;

use crate::rng::SplitMix64;

/// Where ports are picked: below Linux's ephemeral range (32768–60999 by default), so that a
/// port is not meanwhile the local end of an outgoing connection when a node restarts on it
/// (`make bench-scale` once failed to restart with "Address already in use" on an ephemeral
/// port), and above the ports services usually take.
const RANGE: std::ops::Range<u16> = 20_000..32_000;

/// Ports handed out by this process, never handed out again.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// `count` distinct ports that are free on 127.0.0.1 for both TCP and UDP right now (a DNS
/// server binds both), none in `avoid` (handed out earlier in the same run by another process)
/// or handed out before by this process. Another process may still take one before the caller
/// binds it.
pub fn free_loopback_ports(count: usize, avoid: &HashSet<u16>) -> std::io::Result<Vec<u16>> {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()) << 32;
    let mut rng = SplitMix64::new(seed);
    let mut ports = Vec::with_capacity(count);
    // Held until all are picked, so that none is picked twice.
    let mut held = Vec::with_capacity(count);
    let mut tries = 0;
    while ports.len() < count {
        tries += 1;
        if tries > 1_000 * (count + 1) {
            return Err(std::io::Error::other(format!(
                "no {count} free loopback ports for TCP and UDP in {RANGE:?}"
            )));
        }
        let port = RANGE.start + rng.below(u64::from(RANGE.end - RANGE.start)) as u16;
        if avoid.contains(&port) || handed_out.contains(&port) {
            continue;
        }
        let (Ok(tcp), Ok(udp)) = (
            TcpListener::bind(("127.0.0.1", port)),
            UdpSocket::bind(("127.0.0.1", port)),
        ) else {
            continue;
        };
        handed_out.insert(port);
        ports.push(port);
        held.push((tcp, udp));
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_never_handed_out_twice() {
        let first = free_loopback_ports(5, &HashSet::new()).expect("ports");
        let avoid: HashSet<u16> = first.iter().copied().collect();
        let second = free_loopback_ports(5, &avoid).expect("ports");
        let all: HashSet<u16> = first.iter().chain(&second).copied().collect();
        assert_eq!(all.len(), 10);
        for port in all {
            assert!(RANGE.contains(&port));
            TcpListener::bind(("127.0.0.1", port)).expect("still free for TCP");
            UdpSocket::bind(("127.0.0.1", port)).expect("still free for UDP");
        }
    }
}
