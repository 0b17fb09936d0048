//! Integration tests: the real `pkraft` binary, started the way users start it (`pkraft dev` with
//! port 0 and a temp data dir), driven through real sockets on 127.0.0.1 by real clients
//! (reqwest, the pkarr relay client, hickory-resolver, raw DNS over UDP and TCP).
//!
//! One test binary with one module per area; `harness` starts and stops servers.

mod abuse;
mod acme;
mod admin_api;
mod admission;
mod attacks;
mod backup;
mod bad_input;
mod builds;
mod chaos_regressions;
mod cli;
mod client_cli;
mod clock;
mod cluster;
mod damaged_disks;
mod dht;
mod disk_faults;
mod dns;
mod dns_client;
mod doh;
mod durability;
mod harness;
mod https;
mod huge_pages;
mod import;
mod iroh_client;
mod lifecycle;
mod linearizable;
mod metrics;
mod peer_tls;
mod pkarr_client;
mod power_loss;
mod relay;
mod silent_partitions;
mod snapshot_memory;
mod store_cap;
mod supervision;
mod upgrade;
mod write_bounds;
