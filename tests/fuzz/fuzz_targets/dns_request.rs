//! The DNS request path: any bytes as a query to a real `DnsServer`'s handler chain (hickory's
//! request parsing, the freshness bound, the pkarr zones over a redb store holding packets), as
//! DNS-over-HTTPS and the UDP answer cache's misses use it, and the RRL's truncated answer.
//! Bytes in, an answer or an error out, never a panic.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use pkraft_dns::{Answerer, DnsServer, FreshnessProbe, Settings};
use pkraft_state::Store;
use pkraft_testkit::{iroh_packet, keypair};
use pkraft_types::{Command, Payload, PublishItem};

struct Setup {
    runtime: tokio::runtime::Runtime,
    answerer: Answerer,
    _server: DnsServer,
    _dir: tempfile::TempDir,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("state.redb")).expect("store");
    // Two published keys (seed corpus queries ask for the first).
    for seed in [1, 2] {
        let key = keypair(seed);
        let payload = iroh_packet(&key, 1_000, &["192.0.2.1:1", "[2001:db8::1]:2"]).to_relay_payload();
        let mut txn = store.begin_apply(false).expect("begin");
        txn.apply(&Command::Publish {
            leader_time_micros: 1_000,
            packets: vec![PublishItem {
                key: key.public_key().to_bytes(),
                payload: Payload::new(payload).expect("length"),
            }],
        })
        .expect("apply");
        txn.commit(b"state").expect("commit");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let settings = Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        nameservers: vec!["ns1.example.net".to_string()],
        apex_a: vec!["192.0.2.53".parse().expect("ip")],
        udp_sockets: 1,
        ..Settings::default()
    };
    let fresh: FreshnessProbe = Arc::new(|| None::<std::time::Duration>);
    let server = runtime
        .block_on(DnsServer::bind(&settings, store, fresh))
        .expect("bind");
    Setup {
        answerer: server.answerer(),
        runtime,
        _server: server,
        _dir: dir,
    }
});

fuzz_target!(|data: &[u8]| {
    let _ = pkraft_dns::truncated_answer(data, 1232);
    let setup = &*SETUP;
    let src = SocketAddr::from(([127, 0, 0, 1], 5353));
    let _ = setup
        .runtime
        .block_on(setup.answerer.answer(data.to_vec(), src));
});
