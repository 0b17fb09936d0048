//! `pkraft keygen`, `pkraft publish` and `pkraft resolve`: a small pkarr client, so that an
//! operator or user can check a node or a cluster without writing code.
//!
//! Keys are pkarr's secret-key files (64 hex characters, as `pkarr::Keypair::write_secret_key_file`
//! writes them).
//! Packets are signed with `pkarr::SignedPacket` and checked on the way back with the same
//! verification the relay runs ([`VerifiedPacket`]); records are parsed and printed with
//! hickory-proto's zone-file syntax, and DNS lookups go through hickory-resolver.

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, StatusCode, Uri};
use pkarr::{Keypair, PublicKey, SignedPacket, Timestamp};
use pkraft_types::VerifiedPacket;
use pkraft_types::packet::dns_records;

use super::http::{Answer, exchange};

/// Most bytes read of an answer's body: a relay payload is at most 1,104 bytes and error
/// messages are short; anything longer is not a pkarr relay.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Bound on one HTTP request or DNS lookup. A PUT waits at most `raft.publish_timeout` (5 s by
/// default) for its commit on the node.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The default relay URL: the dev server's (`pkraft dev`, `make run`).
pub const DEFAULT_RELAY_URL: &str = "http://127.0.0.1:8080/pkarr";

/// Reads a pkarr secret-key file: 64 hex characters (surrounding whitespace ignored), the format
/// of `pkarr::Keypair::write_secret_key_file` and `pkraft keygen`.
pub fn read_secret_key(path: &Path) -> anyhow::Result<Keypair> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the secret key file {}", path.display()))?;
    let secret = decode_secret_key(text.trim()).with_context(|| {
        format!(
            "{}: not a secret key (expected 64 hex characters, as `pkraft keygen` writes)",
            path.display()
        )
    })?;
    Ok(Keypair::from_secret_key(&secret))
}

/// 64 hex characters to 32 bytes. (pkarr's own reader slices the text by bytes and panics on
/// non-ASCII input.)
fn decode_secret_key(hex: &str) -> anyhow::Result<[u8; 32]> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{} characters, or not all hex digits", hex.chars().count());
    }
    let mut secret = [0u8; 32];
    for (byte, pair) in secret.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        let pair = std::str::from_utf8(pair)?;
        *byte = u8::from_str_radix(pair, 16)?;
    }
    Ok(secret)
}

/// Writes a new random secret key to `path`, which must not exist (overwriting a key loses the
/// identity it names). The file is created with mode 0600, so the key is never readable by
/// others, not even for a moment, and a symlink planted at `path` is not followed.
pub fn write_new_secret_key(path: &Path) -> anyhow::Result<Keypair> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let keypair = Keypair::random();
    let hex: String = keypair
        .secret_key()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                "{} already exists; refusing to overwrite a secret key",
                path.display()
            ),
            _ => anyhow::Error::new(e).context(format!("cannot create {}", path.display())),
        })?;
    file.write_all(hex.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(keypair)
}

/// One record given on the command line as `NAME TYPE DATA`, e.g. `_iroh TXT addr=192.0.2.1:4433`
/// or `@ A 192.0.2.1`. NAME is relative to the key (`@` is the key itself); DATA is in zone-file
/// syntax (quote TXT strings that contain spaces).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordSpec {
    /// Relative name: empty for the apex.
    pub name: String,
    pub data: RData,
}

impl FromStr for RecordSpec {
    type Err = anyhow::Error;

    fn from_str(spec: &str) -> anyhow::Result<RecordSpec> {
        let explain = || {
            format!(
                "record {spec:?}: expected `NAME TYPE DATA`, e.g. `_iroh TXT addr=192.0.2.1:4433`"
            )
        };
        // NAME and TYPE are single words; DATA is the rest, spaces and quotes included.
        let spec_trimmed = spec.trim();
        let mut words = spec_trimmed.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            bail!(explain());
        };
        let data = spec_trimmed[name.len()..].trim_start()[kind.len()..].trim();
        if data.is_empty() {
            bail!(explain());
        }
        let record_type = RecordType::from_str(&kind.to_ascii_uppercase())
            .map_err(|_| anyhow::anyhow!("record {spec:?}: unknown record type {kind:?}"))?;
        let data = RData::try_from_str(record_type, data)
            .map_err(|e| anyhow::anyhow!("record {spec:?}: invalid {record_type} data: {e}"))?;
        let name = match name {
            "@" | "." => String::new(),
            name if name.ends_with('.') => bail!(
                "record {spec:?}: NAME is relative to the key (`_iroh`, `@` for the key itself), \
                 not a fully qualified name"
            ),
            name => name.to_string(),
        };
        Ok(RecordSpec { name, data })
    }
}

/// Signs `records` (each with `ttl`) as a packet of `keypair`, timestamped now.
pub fn sign_packet(
    keypair: &Keypair,
    records: &[RecordSpec],
    ttl: u32,
) -> anyhow::Result<SignedPacket> {
    let z32 = keypair.public_key().to_z32();
    // hickory encodes the records (it parsed their data); pkarr's simple-dns reads them back,
    // and pkarr signs the packet.
    let mut message = Message::response(0, hickory_proto::op::OpCode::Query);
    for record in records {
        let owner = if record.name.is_empty() {
            z32.clone()
        } else {
            format!("{}.{z32}", record.name)
        };
        let owner = Name::from_str(&owner)
            .map_err(|e| anyhow::anyhow!("record name {:?}: {e}", record.name))?;
        message.add_answer(Record::from_rdata(owner, ttl, record.data.clone()));
    }
    let wire = message.to_vec().context("encode the records")?;
    let packet = pkarr::dns::Packet::parse(&wire).context("re-read the encoded records")?;
    SignedPacket::new(keypair, &packet.answers, Timestamp::now())
        .context("sign the packet (a pkarr packet holds at most 1000 bytes of DNS records)")
}

/// `{relay}/{z32}`: the relay URL convention of iroh and the pkarr crate (`/pkarr` on pkraft,
/// or the bare host).
fn key_url(relay: &str, key: &PublicKey) -> anyhow::Result<Uri> {
    let url = format!("{}/{}", relay.trim_end_matches('/'), key.to_z32());
    let uri: Uri = url
        .parse()
        .with_context(|| format!("invalid relay URL {relay:?}"))?;
    super::http::check_scheme(&uri, "relay URL", relay)?;
    Ok(uri)
}

/// The node's explanation of an answer (its error bodies are short plain text).
fn message(answer: &Answer) -> String {
    let text = String::from_utf8_lossy(&answer.body).trim().to_string();
    if text.is_empty() {
        answer.status.to_string()
    } else {
        format!("{}: {text}", answer.status)
    }
}

/// The answer's Retry-After, in seconds, if it has a valid one.
fn retry_after(answer: &Answer) -> Option<u64> {
    answer
        .headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|secs| secs.trim().parse().ok())
}

fn retry_hint(answer: &Answer) -> String {
    retry_after(answer)
        .map(|secs| format!(" (Retry-After: {secs} s)"))
        .unwrap_or_default()
}

async fn send(method: Method, uri: Uri, body: Bytes) -> anyhow::Result<Answer> {
    let mut request = Request::builder().method(method).uri(uri);
    if !body.is_empty() {
        request = request.header(CONTENT_TYPE, "application/pkarr.org/relays#payload");
    }
    exchange(
        request.body(Full::new(body))?,
        REQUEST_TIMEOUT,
        MAX_ANSWER_BYTES,
    )
    .await
}

/// Most seconds a retry waits, whatever Retry-After says.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);

/// PUTs `packet` to the relay, `attempts` times at most: a 503 (no quorum, or not committed in
/// time) or 429 is retried after its Retry-After. Re-sending the same packet is safe: a node
/// that already stored it answers 204. Every other non-2xx answer is an error that says what to
/// do.
pub async fn publish(relay: &str, packet: &SignedPacket, attempts: u32) -> anyhow::Result<()> {
    let uri = key_url(relay, &packet.public_key())?;
    let mut attempt = 1;
    loop {
        let answer = send(Method::PUT, uri.clone(), packet.to_relay_payload()).await?;
        match answer.status {
            status if status.is_success() => return Ok(()),
            StatusCode::CONFLICT => bail!(
                "PUT {uri}: {}; the node holds a packet with a newer timestamp for this key \
                 (is this machine's clock behind?)",
                message(&answer)
            ),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                if attempt < attempts =>
            {
                let wait = retry_after(&answer)
                    .map_or(Duration::from_secs(1), Duration::from_secs)
                    .min(MAX_RETRY_WAIT);
                eprintln!(
                    "PUT {uri}: {}; retrying in {wait:?} (attempt {attempt} of {attempts})",
                    message(&answer)
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => bail!(
                "PUT {uri}: {}{}; not stored after {attempts} attempt(s), try again later",
                message(&answer),
                retry_hint(&answer)
            ),
            _ => bail!("PUT {uri}: {}", message(&answer)),
        }
    }
}

/// GETs and verifies the key's packet; `None` if the node has none (404).
pub async fn fetch(relay: &str, key: &PublicKey) -> anyhow::Result<Option<VerifiedPacket>> {
    let uri = key_url(relay, key)?;
    let answer = send(Method::GET, uri.clone(), Bytes::new()).await?;
    match answer.status {
        StatusCode::OK => VerifiedPacket::verify(key, answer.body)
            .map(Some)
            .with_context(|| format!("GET {uri}: the answer is not a valid packet for this key")),
        StatusCode::NOT_FOUND => Ok(None),
        _ => bail!("GET {uri}: {}{}", message(&answer), retry_hint(&answer)),
    }
}

/// The records of a verified packet as zone-file lines, after a comment naming the key and the
/// signing time.
pub fn format_packet(packet: &VerifiedPacket) -> anyhow::Result<String> {
    let micros = packet.payload().timestamp_micros();
    let signed = UNIX_EPOCH + Duration::from_micros(micros);
    let age = SystemTime::now()
        .duration_since(signed)
        .map(|d| {
            format!(
                "{} ago",
                humantime::format_duration(Duration::from_secs(d.as_secs()))
            )
        })
        .unwrap_or_else(|_| "in the future".to_string());
    let records = dns_records(packet.payload()).context("the packet's DNS records")?;
    let mut text = format!(
        "; key {} signed {} ({age}), {} record(s)\n",
        packet.key().to_z32(),
        humantime::format_rfc3339_micros(signed),
        records.len()
    );
    text.push_str(&format_records(&records));
    Ok(text)
}

/// One zone-file line per record, as dig prints them.
pub fn format_records(records: &[Record]) -> String {
    records
        .iter()
        .map(|r| match &r.data {
            // hickory prints TXT strings unquoted and run together; a zone file (and dig)
            // quotes each one, so that `"two words"` and `"two" "words"` stay distinct.
            RData::TXT(txt) => {
                let strings: Vec<String> = txt
                    .txt_data
                    .iter()
                    .map(|s| quote_character_string(s))
                    .collect();
                format!(
                    "{} {} {} TXT {}\n",
                    r.name,
                    r.ttl,
                    r.dns_class,
                    strings.join(" ")
                )
            }
            _ => format!("{r}\n"),
        })
        .collect()
}

/// A DNS character-string in zone-file syntax: quoted, with `"` and `\` escaped and bytes
/// outside printable ASCII as `\DDD`.
fn quote_character_string(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() + 2);
    text.push('"');
    for &byte in bytes {
        match byte {
            b'"' | b'\\' => {
                text.push('\\');
                text.push(char::from(byte));
            }
            0x20..=0x7e => text.push(char::from(byte)),
            _ => text.push_str(&format!("\\{byte:03}")),
        }
    }
    text.push('"');
    text
}

/// The DNS transport of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DnsTransport {
    Udp,
    Tcp,
}

/// What a DNS lookup found.
pub enum DnsAnswer {
    Records(Vec<Record>),
    /// No records: the rcode (NXDOMAIN for an unknown key, NOERROR for a known key without
    /// records of that type at that name).
    Empty(ResponseCode),
}

/// `<name>.<z32>.<origin>.` (`<z32>.<origin>.` for an empty name).
pub fn query_name(name: &str, key: &PublicKey, origin: &str) -> anyhow::Result<Name> {
    let origin = origin.trim_end_matches('.');
    let z32 = key.to_z32();
    let text = match (name, origin) {
        ("" | "@", "") => format!("{z32}."),
        ("" | "@", origin) => format!("{z32}.{origin}."),
        (name, "") => format!("{name}.{z32}."),
        (name, origin) => format!("{name}.{z32}.{origin}."),
    };
    Name::from_str(&text).map_err(|e| anyhow::anyhow!("query name {text:?}: {e}"))
}

/// Asks `server` (and only it, with no cache) for `qname`/`qtype`.
pub async fn dns_lookup(
    server: SocketAddr,
    transport: DnsTransport,
    qname: Name,
    qtype: RecordType,
) -> anyhow::Result<DnsAnswer> {
    let mut nameserver = match transport {
        DnsTransport::Udp => NameServerConfig::udp(server.ip()),
        DnsTransport::Tcp => NameServerConfig::tcp(server.ip()),
    };
    for connection in &mut nameserver.connections {
        connection.port = server.port();
    }
    let config = ResolverConfig::from_parts(None, vec![], vec![nameserver]);
    let mut builder =
        hickory_resolver::Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    let options = builder.options_mut();
    options.cache_size = 0;
    options.timeout = Duration::from_secs(3);
    options.attempts = 2;
    let resolver = builder.build().context("DNS resolver")?;
    let lookup = tokio::time::timeout(REQUEST_TIMEOUT, resolver.lookup(qname.clone(), qtype))
        .await
        .map_err(|_| {
            anyhow::anyhow!("{qname} {qtype} @{server}: no answer within {REQUEST_TIMEOUT:?}")
        })?;
    match lookup {
        Ok(lookup) => Ok(DnsAnswer::Records(lookup.answers().to_vec())),
        Err(NetError::Dns(DnsError::NoRecordsFound(none))) => {
            Ok(DnsAnswer::Empty(none.response_code))
        }
        Err(e) => bail!("{qname} {qtype} @{server}: {e}"),
    }
}

/// What `pkraft resolve` asks, and where.
#[derive(Debug)]
pub struct ResolveQuery<'a> {
    /// The public key, z-base-32.
    pub key: &'a str,
    /// The relay URL for an HTTP fetch.
    pub relay: &'a str,
    /// A DNS server to ask instead, with the transport, origin, name and type.
    pub dns: Option<(SocketAddr, DnsTransport)>,
    pub origin: &'a str,
    pub name: &'a str,
    pub record_type: &'a str,
}

/// `pkraft resolve`: prints what it found, or fails (exit status 1) when nothing is there.
pub async fn resolve(query: &ResolveQuery<'_>) -> anyhow::Result<()> {
    let key =
        pkraft_types::parse_z32_key(query.key).with_context(|| format!("key {:?}", query.key))?;
    let Some((server, transport)) = query.dns else {
        return match fetch(query.relay, &key).await? {
            Some(packet) => {
                print!("{}", format_packet(&packet)?);
                Ok(())
            }
            None => bail!("{}: no packet for {}", query.relay, key.to_z32()),
        };
    };
    let qtype: RecordType = query
        .record_type
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| anyhow::anyhow!("--type {:?}: unknown record type", query.record_type))?;
    let qname = query_name(query.name, &key, query.origin)?;
    match dns_lookup(server, transport, qname.clone(), qtype).await? {
        DnsAnswer::Records(records) => {
            print!("{}", format_records(&records));
            Ok(())
        }
        DnsAnswer::Empty(rcode) => bail!("{qname} {qtype} @{server}: no records ({rcode})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_in_zone_file_syntax() {
        let spec: RecordSpec = "_iroh TXT addr=192.0.2.1:4433".parse().expect("txt");
        assert_eq!(spec.name, "_iroh");
        assert_eq!(spec.data.record_type(), RecordType::TXT);
        let apex: RecordSpec = "@ a 192.0.2.1".parse().expect("a");
        assert_eq!(apex.name, "");
        assert_eq!(apex.data.record_type(), RecordType::A);
        let spaced: RecordSpec = "  @   A   192.0.2.1 ".parse().expect("extra spaces");
        assert_eq!(spaced.data.record_type(), RecordType::A);
        let quoted: RecordSpec = "note TXT \"two words\"".parse().expect("quoted");
        let RData::TXT(txt) = &quoted.data else {
            panic!("TXT")
        };
        assert_eq!(txt.txt_data.len(), 1, "one string with a space");
    }

    #[test]
    fn refuses_malformed_records_naming_them() {
        for (spec, needle) in [
            ("_iroh TXT", "expected `NAME TYPE DATA`"),
            ("_iroh TXT   ", "expected `NAME TYPE DATA`"),
            ("@ BOGUS 1", "unknown record type"),
            ("@ A 300.1.1.1", "invalid A data"),
            ("www.example.com. A 192.0.2.1", "relative to the key"),
        ] {
            let error = spec.parse::<RecordSpec>().expect_err(spec).to_string();
            assert!(error.contains(needle), "{spec}: {error}");
            assert!(error.contains(spec), "the error names the record: {error}");
        }
    }

    #[test]
    fn signed_packet_verifies_and_holds_the_records() {
        let keypair = Keypair::from_secret_key(&[7; 32]);
        let records: Vec<RecordSpec> = ["_iroh TXT addr=192.0.2.1:4433", "@ AAAA 2001:db8::1"]
            .iter()
            .map(|s| s.parse().expect("record"))
            .collect();
        let packet = sign_packet(&keypair, &records, 30).expect("sign");
        let verified = VerifiedPacket::verify(&keypair.public_key(), packet.to_relay_payload())
            .expect("verify");
        let text = format_packet(&verified).expect("format");
        let z32 = keypair.public_key().to_z32();
        assert!(
            text.contains(&format!("_iroh.{z32}. 30 IN TXT \"addr=192.0.2.1:4433\"")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{z32}. 30 IN AAAA 2001:db8::1")),
            "{text}"
        );
    }

    #[test]
    fn secret_keys_round_trip_and_bad_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("key");
        let written = write_new_secret_key(&path).expect("keygen");
        let read = read_secret_key(&path).expect("read back");
        assert_eq!(read.public_key(), written.public_key());
        assert!(write_new_secret_key(&path).is_err(), "never overwrites");
        for bad in [
            "",
            "abc",
            "aé",
            &"é".repeat(32),
            &"g".repeat(64),
            &"0".repeat(66),
        ] {
            std::fs::write(&path, bad).expect("write");
            let error = read_secret_key(&path).expect_err(bad).to_string();
            assert!(error.contains("not a secret key"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn txt_strings_print_quoted_and_escaped() {
        assert_eq!(quote_character_string(b"two words"), "\"two words\"");
        assert_eq!(quote_character_string(b"a\"b\\c\n"), "\"a\\\"b\\\\c\\010\"");
    }

    #[test]
    fn relay_urls_follow_the_pkarr_convention() {
        let key = Keypair::from_secret_key(&[7; 32]).public_key();
        let z32 = key.to_z32();
        for relay in [
            "http://127.0.0.1:8080/pkarr",
            "http://127.0.0.1:8080/pkarr/",
        ] {
            assert_eq!(
                key_url(relay, &key).expect("url").to_string(),
                format!("http://127.0.0.1:8080/pkarr/{z32}")
            );
        }
        assert_eq!(
            key_url("https://relay.example/pkarr", &key)
                .expect("https")
                .to_string(),
            format!("https://relay.example/pkarr/{z32}")
        );
        assert!(key_url("ftp://relay.example/pkarr", &key).is_err());
        assert!(key_url("127.0.0.1:8080", &key).is_err());
    }

    #[test]
    fn query_names_put_the_key_under_the_origin() {
        let key = Keypair::from_secret_key(&[7; 32]).public_key();
        let z32 = key.to_z32();
        let name = query_name("_iroh", &key, "pkarr.test").expect("name");
        assert_eq!(name.to_string(), format!("_iroh.{z32}.pkarr.test."));
        let apex = query_name("@", &key, "pkarr.test.").expect("apex");
        assert_eq!(apex.to_string(), format!("{z32}.pkarr.test."));
        let root = query_name("_iroh", &key, ".").expect("root origin");
        assert_eq!(root.to_string(), format!("_iroh.{z32}."));
    }
}
