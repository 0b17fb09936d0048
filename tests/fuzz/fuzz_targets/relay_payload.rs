//! A relay PUT's inputs: the key in the URL and the body. Whatever the bytes, parsing and
//! verification return a value or an error, never panic; a body that verifies also parses as
//! DNS (what the DNS frontend does with a stored packet).
#![no_main]

use std::sync::LazyLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pkraft_types::packet::dns_records;
use pkraft_types::{Payload, VerifiedPacket, decode_z32_key, parse_z32_key};

/// The key PUTs are checked against (the fuzzer can also reach a valid signature by mutating
/// the seed corpus, which holds packets signed with it).
static KEY: LazyLock<pkraft_testkit::pkarr::PublicKey> =
    LazyLock::new(|| pkraft_testkit::keypair(1).public_key());

fuzz_target!(|data: &[u8]| {
    // The URL's key: the first up-to-52 bytes, if text.
    let key_len = data.len().min(52);
    if let Ok(text) = std::str::from_utf8(&data[..key_len]) {
        let _ = decode_z32_key(text);
        let _ = parse_z32_key(text);
    }
    let body = Bytes::copy_from_slice(data);
    if let Ok(packet) = VerifiedPacket::verify(&KEY, body.clone()) {
        dns_records(packet.payload()).expect("a verified packet parses as DNS");
    }
    // A stored packet is parsed without its signature being checked again.
    if let Ok(payload) = Payload::new(body) {
        let _ = payload.timestamp_micros();
        let _ = dns_records(&payload);
    }
});
