//! Unit tests of record selection on packets built with pkarr (the way clients build them).

use std::str::FromStr;

use pkraft_testkit::pkarr::dns::rdata::{A as PkarrA, CNAME, RData as PkarrRData};
use pkraft_testkit::pkarr::dns::{CLASS, Name as PkarrName, ResourceRecord};
use pkraft_testkit::pkarr::{Keypair, SignedPacket, Timestamp};
use pkraft_testkit::{keypair, txt};
use pkraft_types::Payload;
use pkraft_types::packet::dns_records;

use super::*;

struct Fixture {
    keypair: Keypair,
    records: Vec<Record>,
}

/// A packet with `_iroh` TXT, a CNAME at `alias`, an A at the key apex, and `deep.branch` TXT.
fn fixture() -> Fixture {
    let keypair = keypair(9);
    let name = |n: &'static str| PkarrName::new(n).expect("name");
    let packet = SignedPacket::builder()
        .txt(name("_iroh"), txt("addr=192.0.2.1:1"), 30)
        .txt(name("_iroh"), txt("relay=http://relay.test/"), 30)
        .record(ResourceRecord::new(
            name("alias"),
            CLASS::IN,
            60,
            PkarrRData::CNAME(CNAME(name("example.com"))),
        ))
        .record(ResourceRecord::new(
            name("."),
            CLASS::IN,
            60,
            PkarrRData::A(PkarrA {
                address: 0xC000_0201,
            }),
        ))
        .txt(name("deep.branch"), txt("x=1"), 30)
        .timestamp(Timestamp::from(1))
        .sign(&keypair)
        .expect("sign");
    let payload = Payload::new(packet.to_relay_payload()).expect("length");
    let records = dns_records(&payload).expect("parses");
    Fixture { keypair, records }
}

fn query(f: &Fixture, sub: &str, rtype: RecordType) -> Lookup {
    let z32 = f.keypair.public_key().to_z32();
    let text = if sub.is_empty() {
        format!("{z32}.pkarr.test.")
    } else {
        format!("{sub}.{z32}.pkarr.test.")
    };
    let name = LowerName::new(&Name::from_str(&text).expect("name"));
    let labels: Vec<&[u8]> = name.iter().collect();
    let key_index = labels.len() - 3;
    select(
        &f.records,
        &labels[..key_index],
        labels[key_index],
        &Name::from(&name),
        rtype,
        TtlBounds {
            min: 0,
            max: 86_400,
        },
    )
}

/// The parsed path holds TTLs within `dns.ttl_min`/`ttl_max` (the compiled path's encoder does
/// the same: `tests/it/dns.rs`).
#[test]
fn ttls_are_served_within_the_bounds() {
    let f = fixture();
    let z32 = f.keypair.public_key().to_z32();
    let name = LowerName::new(&Name::from_str(&format!("alias.{z32}.pkarr.test.")).expect("name"));
    let labels: Vec<&[u8]> = name.iter().collect();
    let key_index = labels.len() - 3;
    let bounds = TtlBounds { min: 45, max: 50 };
    let Lookup::Answers(answers) = select(
        &f.records,
        &labels[..key_index],
        labels[key_index],
        &Name::from(&name),
        RecordType::CNAME,
        bounds,
    ) else {
        panic!("expected answers");
    };
    assert_eq!(answers[0].ttl, 50, "60 held to the ceiling");
    let iroh = LowerName::new(&Name::from_str(&format!("_iroh.{z32}.pkarr.test.")).expect("name"));
    let labels: Vec<&[u8]> = iroh.iter().collect();
    let Lookup::Answers(answers) = select(
        &f.records,
        &labels[..key_index],
        labels[key_index],
        &Name::from(&iroh),
        RecordType::TXT,
        bounds,
    ) else {
        panic!("expected answers");
    };
    assert!(
        answers.iter().all(|r| r.ttl == 45),
        "30 raised to the floor"
    );
}

#[test]
fn iroh_txt_records_are_served_with_the_query_name() {
    let f = fixture();
    let Lookup::Answers(answers) = query(&f, "_iroh", RecordType::TXT) else {
        panic!("expected answers");
    };
    assert_eq!(answers.len(), 2);
    let z32 = f.keypair.public_key().to_z32();
    let expected = Name::from_str(&format!("_iroh.{z32}.pkarr.test.")).expect("name");
    assert!(answers.iter().all(|r| r.name == expected && r.ttl == 30));
}

#[test]
fn sub_labels_match_in_any_case() {
    let f = fixture();
    assert!(matches!(query(&f, "_IROH", RecordType::TXT), Lookup::Answers(a) if a.len() == 2));
}

#[test]
fn other_type_at_a_known_name_is_nodata() {
    assert!(matches!(
        query(&fixture(), "_iroh", RecordType::AAAA),
        Lookup::NoData
    ));
}

#[test]
fn unknown_name_under_a_known_key_is_nxdomain() {
    assert!(matches!(
        query(&fixture(), "nothing", RecordType::TXT),
        Lookup::NxDomain
    ));
}

#[test]
fn parent_of_a_name_is_nodata_not_nxdomain() {
    assert!(matches!(
        query(&fixture(), "branch", RecordType::TXT),
        Lookup::NoData
    ));
}

#[test]
fn key_apex_records() {
    let f = fixture();
    assert!(matches!(query(&f, "", RecordType::A), Lookup::Answers(a) if a.len() == 1));
    assert!(matches!(query(&f, "", RecordType::TXT), Lookup::NoData));
}

#[test]
fn cname_answers_other_types() {
    let f = fixture();
    let Lookup::Answers(answers) = query(&f, "alias", RecordType::A) else {
        panic!("expected the CNAME");
    };
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].record_type(), RecordType::CNAME);
}

#[test]
fn any_returns_one_rrset_rfc_8482() {
    // Both TXT records of `_iroh`: one RRset.
    assert!(
        matches!(query(&fixture(), "_iroh", RecordType::ANY), Lookup::Answers(a) if a.len() == 2)
    );
    // A name with an A and two TXT records: only the first type's RRset.
    let keypair = keypair(10);
    let name = PkarrName::new("multi").expect("name");
    let packet = SignedPacket::builder()
        .record(ResourceRecord::new(
            name.clone(),
            CLASS::IN,
            60,
            PkarrRData::A(PkarrA {
                address: 0xC000_0202,
            }),
        ))
        .txt(name.clone(), txt("a=1"), 30)
        .txt(name, txt("b=2"), 30)
        .timestamp(Timestamp::from(1))
        .sign(&keypair)
        .expect("sign");
    let payload = Payload::new(packet.to_relay_payload()).expect("length");
    let f = Fixture {
        keypair,
        records: dns_records(&payload).expect("parses"),
    };
    let Lookup::Answers(answers) = query(&f, "multi", RecordType::ANY) else {
        panic!("expected answers");
    };
    let types: Vec<RecordType> = answers.iter().map(Record::record_type).collect();
    assert_eq!(types, vec![RecordType::A]);
}
