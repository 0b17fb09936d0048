//! Writes a freshly signed iroh-style relay payload to a file and prints its public key (z32), for
//! checking a server by hand with curl:
//!
//! ```text
//! cargo run -q -p pkraft-testkit --example sign-packet -- /tmp/p.bin [SEED] [ADDR...]
//! ```
//!
//! The key is derived from SEED (default 1); the packet holds one `_iroh` TXT `addr=ADDR` per
//! address (default 192.0.2.1:4433), signed now.

use std::process::ExitCode;

use pkraft_testkit::pkarr::Timestamp;
use pkraft_testkit::{iroh_packet, keypair};

fn main() -> ExitCode {
    const USAGE: &str = "usage: sign-packet OUT_FILE [SEED] [ADDR...]";
    let args: Vec<String> = std::env::args().skip(1).collect();
    // No flags: `--help` would otherwise be taken for the output file and written to.
    let Some(out) = args.first().filter(|out| !out.starts_with('-')) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let seed = match args.get(1).map(|s| s.parse::<u64>()) {
        None => 1,
        Some(Ok(seed)) => seed,
        Some(Err(e)) => {
            eprintln!("SEED must be a number: {e}");
            return ExitCode::from(2);
        }
    };
    let addrs: Vec<&str> = match args.get(2..) {
        Some(rest) if !rest.is_empty() => rest.iter().map(String::as_str).collect(),
        _ => vec!["192.0.2.1:4433"],
    };
    let key = keypair(seed);
    let packet = iroh_packet(&key, Timestamp::now().as_u64(), &addrs);
    if let Err(e) = std::fs::write(out, packet.to_relay_payload()) {
        eprintln!("cannot write {out}: {e}");
        return ExitCode::FAILURE;
    }
    println!("{}", key.public_key().to_z32());
    ExitCode::SUCCESS
}
