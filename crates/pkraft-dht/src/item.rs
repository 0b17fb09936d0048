//! Between pkarr relay payloads (`signature ‖ timestamp ‖ DNS packet`) and BEP 44 mutable items
//! (the same signature, `seq` = the timestamp, `v` = the DNS packet, no salt): the two are one
//! signed record, so no re-signing is involved.

use bytes::{BufMut, Bytes, BytesMut};
use mainline::MutableItem;
use pkraft_types::{KeyBytes, Payload, VerifiedPacket};

/// The BEP 44 item of `key`'s stored `payload`, or `None` if its timestamp does not fit BEP 44's
/// signed `seq` (a timestamp past the year 292,277, which verification refuses anyway).
pub fn to_item(key: &KeyBytes, payload: &Payload) -> Option<MutableItem> {
    let bytes = payload.as_bytes();
    let signature: [u8; 64] = bytes.get(..64)?.try_into().ok()?;
    let seq = i64::try_from(payload.timestamp_micros()).ok()?;
    Some(MutableItem::new_signed_unchecked(
        *key,
        signature,
        payload.dns_packet(),
        seq,
        None,
    ))
}

/// The relay payload of a DHT item, checked as a PUT is checked (signature, length, DNS parse
/// by pkarr and by the DNS frontend). `None` for an item pkraft would not accept from a client.
pub fn from_item(item: &MutableItem) -> Option<VerifiedPacket> {
    if item.salt().is_some() {
        return None;
    }
    let seq = u64::try_from(item.seq()).ok()?;
    let mut body = BytesMut::with_capacity(64 + 8 + item.value().len());
    body.put_slice(item.signature());
    body.put_u64(seq);
    body.put_slice(item.value());
    VerifiedPacket::verify_stored(item.key(), Bytes::from(body)).ok()
}

#[cfg(test)]
mod tests {
    use pkraft_testkit::{iroh_packet, keypair};

    use super::*;

    #[test]
    fn a_payload_goes_to_an_item_and_back_unchanged() {
        let keys = keypair(7);
        let payload = iroh_packet(&keys, 1_700_000_000_000_000, &["127.0.0.1:1"]);
        let packet = VerifiedPacket::verify(&keys.public_key(), payload.to_relay_payload())
            .expect("verifies");
        let key = packet.key_bytes();
        let item = to_item(&key, packet.payload()).expect("item");
        assert_eq!(item.seq(), 1_700_000_000_000_000);
        let back = from_item(&item).expect("valid");
        assert_eq!(back.payload(), packet.payload());
    }

    #[test]
    fn an_item_with_a_bad_signature_or_salt_is_refused() {
        let keys = keypair(8);
        let payload = iroh_packet(&keys, 1_700_000_000_000_000, &["127.0.0.1:1"]);
        let packet = VerifiedPacket::verify(&keys.public_key(), payload.to_relay_payload())
            .expect("verifies");
        let key = packet.key_bytes();
        let item = to_item(&key, packet.payload()).expect("item");
        let forged = MutableItem::new_signed_unchecked(
            key,
            *item.signature(),
            item.value(),
            item.seq() + 1,
            None,
        );
        assert!(from_item(&forged).is_none());
        let salted = MutableItem::new_signed_unchecked(
            key,
            *item.signature(),
            item.value(),
            item.seq(),
            Some(b"salt"),
        );
        assert!(from_item(&salted).is_none());
    }
}
