//! Strict parsing of z-base-32 encoded ed25519 public keys.
//!
//! `pkarr::PublicKey::from_str` is lenient on purpose (it digs a key out of URLs). A relay route
//! or a DNS label must be exactly one key, so this module checks the shape first and only then
//! hands the string to pkarr.
//!
//! [`decode_z32_key`] stops before the curve: decompressing the point costs about as much as
//! answering a DNS query, and a lookup only needs the 32 bytes (a key that is not a valid point
//! was never stored, so it is simply not found).

use pkarr::PublicKey;

use crate::KeyBytes;

/// Length of a z-base-32 encoded 32-byte key (256 bits / 5 bits per character, rounded up).
pub const Z32_KEY_LEN: usize = 52;

/// The z-base-32 alphabet (lower case).
const Z32_ALPHABET: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";

/// `IN_Z32_ALPHABET[b]`: whether byte `b` is in [`Z32_ALPHABET`]. A table, because every DNS
/// query checks 52 bytes (a search of the alphabet per byte was 4 % of a query's CPU).
const IN_Z32_ALPHABET: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < Z32_ALPHABET.len() {
        table[Z32_ALPHABET[i] as usize] = true;
        i += 1;
    }
    table
};

/// Why a string is not a public key. The messages are shown to HTTP clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("public key must be {Z32_KEY_LEN} z-base-32 characters, got {0}")]
    Length(usize),
    #[error("public key is not z-base-32: unexpected character {0:?}")]
    Encoding(char),
    #[error("public key is not a valid ed25519 point")]
    InvalidPoint,
}

/// Parses a z-base-32 key, accepting any letter case (DNS resolvers randomise the case of query
/// names, RFC draft "0x20"), and nothing but the 52 characters of the key.
pub fn parse_z32_key(text: &str) -> Result<PublicKey, KeyError> {
    let bytes = decode_z32_key(text)?;
    PublicKey::try_from(&bytes).map_err(|_| KeyError::InvalidPoint)
}

/// The 32 key bytes of a z-base-32 key, with the same shape checks as [`parse_z32_key`] but
/// without checking that they are a point on the curve.
pub fn decode_z32_key(text: &str) -> Result<KeyBytes, KeyError> {
    if text.len() != Z32_KEY_LEN {
        return Err(KeyError::Length(text.len()));
    }
    let mut lower = [0u8; Z32_KEY_LEN];
    for (slot, byte) in lower.iter_mut().zip(text.bytes()) {
        let byte = byte.to_ascii_lowercase();
        if !IN_Z32_ALPHABET[usize::from(byte)] {
            return Err(KeyError::Encoding(char::from(byte)));
        }
        *slot = byte;
    }
    // Every byte is from the ASCII alphabet checked above, so this is valid UTF-8.
    let lower = std::str::from_utf8(&lower).map_err(|_| KeyError::Encoding('?'))?;
    base32::decode(base32::Alphabet::Z, lower)
        .and_then(|bytes| KeyBytes::try_from(bytes).ok())
        .ok_or(KeyError::Length(text.len()))
}

/// The z-base-32 form of 32 key bytes, whether or not they are a point on the curve (reports
/// name keys that failed verification this way).
pub fn encode_z32_key(key: &KeyBytes) -> String {
    base32::encode(base32::Alphabet::Z, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_pkarrs_and_decodes_back() {
        let key = pkraft_testkit::keypair(2).public_key();
        let z32 = encode_z32_key(&key.to_bytes());
        assert_eq!(z32, key.to_z32());
        assert_eq!(decode_z32_key(&z32), Ok(key.to_bytes()));
    }

    #[test]
    fn accepts_any_case_and_rejects_other_shapes() {
        let key = pkraft_testkit::keypair(1).public_key();
        let z32 = key.to_z32();
        assert_eq!(parse_z32_key(&z32), Ok(key.clone()));
        assert_eq!(parse_z32_key(&z32.to_uppercase()), Ok(key));
        assert_eq!(parse_z32_key(&z32[1..]), Err(KeyError::Length(51)));
        assert_eq!(
            parse_z32_key(&format!("pk:{z32}")),
            Err(KeyError::Length(55))
        );
        let with_v = format!("v{}", &z32[1..]);
        assert_eq!(parse_z32_key(&with_v), Err(KeyError::Encoding('v')));
    }

    #[test]
    fn decoding_gives_the_key_bytes_without_a_curve_check() {
        let key = pkraft_testkit::keypair(2).public_key();
        let z32 = key.to_z32();
        assert_eq!(decode_z32_key(&z32), Ok(key.to_bytes()));
        assert_eq!(decode_z32_key(&z32.to_uppercase()), Ok(key.to_bytes()));
        assert_eq!(decode_z32_key(&z32[1..]), Err(KeyError::Length(51)));
        // About half of all 32-byte strings are not a point; take the first of a few candidates.
        let (text, not_a_point) = (0u8..=255)
            .map(|b| {
                let bytes = [b; 32];
                (base32::encode(base32::Alphabet::Z, &bytes), bytes)
            })
            .find(|(text, _)| parse_z32_key(text) == Err(KeyError::InvalidPoint))
            .expect("some byte pattern is not a point");
        assert_eq!(decode_z32_key(&text), Ok(not_a_point));
    }
}
