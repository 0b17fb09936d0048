//! The compiled form against the parsed packet it comes from.

use pkraft_testkit::pkarr::dns::rdata::{A as PkarrA, CNAME, RData as PkarrRData};
use pkraft_testkit::pkarr::dns::{CLASS, Name as PkarrName, ResourceRecord};
use pkraft_testkit::pkarr::{Keypair, SignedPacket, Timestamp};
use pkraft_testkit::{iroh_packet, keypair, txt};

use super::*;

fn payload(packet: &SignedPacket) -> Payload {
    Payload::new(packet.to_relay_payload()).expect("length")
}

fn name(text: &'static str) -> PkarrName<'static> {
    PkarrName::new(text).expect("name")
}

/// `_iroh` TXT twice, an A at the key itself, TXT at `deep.branch`, A at `Mixed`.
fn packet(keypair: &Keypair, cname: bool) -> SignedPacket {
    let a = |n: &'static str| {
        ResourceRecord::new(
            name(n),
            CLASS::IN,
            60,
            PkarrRData::A(PkarrA {
                address: 0xC000_0201,
            }),
        )
    };
    let mut builder = SignedPacket::builder()
        .txt(name("_iroh"), txt("addr=192.0.2.1:1"), 30)
        .record(a("."))
        .txt(name("_iroh"), txt("relay=http://relay.test/"), 30)
        .txt(name("deep.branch"), txt("x=1"), 30)
        .record(a("Mixed"));
    if cname {
        builder = builder.record(ResourceRecord::new(
            name("alias"),
            CLASS::IN,
            60,
            PkarrRData::CNAME(CNAME(name("example.com"))),
        ));
    }
    builder
        .timestamp(Timestamp::from(1))
        .sign(keypair)
        .expect("sign")
}

fn compiled_of(keypair: &Keypair, packet: &SignedPacket) -> Vec<u8> {
    compile(&keypair.public_key().to_bytes(), &payload(packet))
}

/// The records hickory parses from the packet for `owner` and `rtype`, each written as
/// hickory's encoder writes it after the owner name.
fn expected(packet: &SignedPacket, sub: &str, rtype: RecordType) -> Vec<u8> {
    let records = crate::packet::dns_records(&payload(packet)).expect("parses");
    records
        .iter()
        .filter(|r| r.record_type() == rtype)
        .filter(|r| {
            let labels: Vec<String> = r
                .name
                .iter()
                .map(|l| String::from_utf8_lossy(l).to_lowercase())
                .collect();
            labels[..labels.len() - 1].join(".") == sub
        })
        .flat_map(|r| encode_after_owner(r).expect("compilable"))
        .collect()
}

fn labels(sub: &str) -> Vec<&[u8]> {
    if sub.is_empty() {
        Vec::new()
    } else {
        sub.split('.').map(str::as_bytes).collect()
    }
}

#[test]
fn an_iroh_packet_compiles_and_answers_its_names() {
    let keypair = keypair(1);
    let packet = packet(&keypair, false);
    let bytes = compiled_of(&keypair, &packet);
    let compiled = CompiledPacket::read(&bytes).expect("reads");
    assert!(compiled.is_complete());
    let lookup = |sub: &str, rtype| compiled.lookup(&labels(sub), rtype).expect("lookup");

    let CompiledLookup::Answers(iroh) = lookup("_iroh", RecordType::TXT) else {
        panic!("expected the _iroh TXT records");
    };
    assert_eq!(iroh.count, 2);
    assert_eq!(iroh.bytes, expected(&packet, "_iroh", RecordType::TXT));
    assert_eq!(
        &bytes[iroh.start..iroh.start + iroh.bytes.len()],
        iroh.bytes
    );
    // Case does not matter, in the question or in the packet.
    assert_eq!(
        lookup("_IROH", RecordType::TXT),
        CompiledLookup::Answers(iroh)
    );
    let CompiledLookup::Answers(mixed) = lookup("mixed", RecordType::A) else {
        panic!("expected the A record at Mixed");
    };
    assert_eq!(mixed.bytes, expected(&packet, "mixed", RecordType::A));
    assert_eq!(
        &bytes[mixed.start..mixed.start + mixed.bytes.len()],
        mixed.bytes
    );
    // The key itself has an A record; ANY gets the first type at a name.
    assert!(matches!(lookup("", RecordType::A), CompiledLookup::Answers(a) if a.count == 1));
    assert_eq!(
        lookup("_iroh", RecordType::ANY),
        CompiledLookup::Answers(iroh)
    );
    // A name with other types, or only names below it, is NODATA; anything else NXDOMAIN.
    assert_eq!(lookup("_iroh", RecordType::AAAA), CompiledLookup::NoData);
    assert_eq!(lookup("branch", RecordType::TXT), CompiledLookup::NoData);
    assert_eq!(lookup("nothing", RecordType::TXT), CompiledLookup::NxDomain);
    assert_eq!(lookup("x._iroh", RecordType::TXT), CompiledLookup::NxDomain);
    assert_eq!(lookup("deep", RecordType::TXT), CompiledLookup::NxDomain);
}

/// A record whose RDATA holds a name (its bytes depend on the answer around it) leaves the
/// packet to the parsed path.
#[test]
fn a_packet_with_a_name_in_rdata_is_not_compiled() {
    let keypair = keypair(2);
    let bytes = compiled_of(&keypair, &packet(&keypair, true));
    let compiled = CompiledPacket::read(&bytes).expect("reads");
    assert!(!compiled.is_complete());
}

/// Records under another key are never reachable, so they are left out.
#[test]
fn records_under_another_key_are_left_out() {
    let keypair = keypair(3);
    let other = keypair_z32(4);
    let records = crate::packet::dns_records(&payload(&iroh_packet(&keypair, 1, &["192.0.2.1:1"])))
        .expect("parses");
    let bytes = compile_records(other.as_bytes(), &records);
    let compiled = CompiledPacket::read(&bytes).expect("reads");
    assert!(compiled.is_complete());
    assert_eq!(
        compiled.lookup(&labels("_iroh"), RecordType::TXT),
        Ok(CompiledLookup::NxDomain)
    );
}

fn keypair_z32(seed: u64) -> String {
    keypair(seed).public_key().to_z32()
}

/// Damaged or foreign bytes are an error or some answer, never a panic or a read out of bounds.
#[test]
fn every_truncation_and_bit_flip_is_read_without_panic() {
    let keypair = keypair(5);
    let bytes = compiled_of(&keypair, &packet(&keypair, false));
    let mut forms: Vec<Vec<u8>> = (0..bytes.len()).map(|len| bytes[..len].to_vec()).collect();
    for at in 0..bytes.len() {
        for bit in 0..8 {
            let mut flipped = bytes.clone();
            flipped[at] ^= 1 << bit;
            forms.push(flipped);
        }
    }
    for form in forms {
        if let Ok(compiled) = CompiledPacket::read(&form) {
            for sub in ["", "_iroh", "deep.branch", "x"] {
                let _ = compiled.lookup(&labels(sub), RecordType::TXT);
            }
        }
    }
    assert!(CompiledPacket::read(&bytes[..3]).is_err());
}
