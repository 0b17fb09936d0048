//! DNS clients for the tests: hickory-resolver (a real stub resolver) and raw messages over UDP
//! and TCP, for checking rcode, flags and truncation exactly.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::{Resolver, TokioResolver};
use pkraft_testkit::pkarr::Keypair;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::ORIGIN;

/// Bound on one raw query: loopback answers in microseconds; this only stops a hung test.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
pub enum Transport {
    Udp,
    Tcp,
}

pub const TRANSPORTS: [Transport; 2] = [Transport::Udp, Transport::Tcp];

/// A resolver that asks only `addr` over `transport` and caches nothing.
pub fn resolver(addr: SocketAddr, transport: Transport) -> TokioResolver {
    let mut server = match transport {
        Transport::Udp => NameServerConfig::udp(addr.ip()),
        Transport::Tcp => NameServerConfig::tcp(addr.ip()),
    };
    for connection in &mut server.connections {
        connection.port = addr.port();
    }
    let config = ResolverConfig::from_parts(None, vec![], vec![server]);
    let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    // Every lookup must reach the server: no answers from the resolver's cache.
    builder.options_mut().cache_size = 0;
    builder.build().expect("resolver")
}

pub fn name(text: &str) -> Name {
    Name::from_str(text).expect("name")
}

/// `<sub>.<z32>.<ORIGIN>.` (or `<z32>.<ORIGIN>.` for an empty `sub`).
pub fn key_name(sub: &str, key: &Keypair) -> String {
    let z32 = key.public_key().to_z32();
    if sub.is_empty() {
        format!("{z32}.{ORIGIN}.")
    } else {
        format!("{sub}.{z32}.{ORIGIN}.")
    }
}

/// The TXT strings in `records`, each record's strings joined, sorted.
pub fn txt_strings(records: &[Record]) -> Vec<String> {
    let mut strings: Vec<String> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect();
    strings.sort();
    strings
}

/// The negative-answer details a resolver reports: rcode and whether an SOA came with it.
pub fn no_records(error: NetError) -> (ResponseCode, bool) {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(no)) => (no.response_code, no.soa.is_some()),
        other => panic!("expected a negative answer, got {other:?}"),
    }
}

/// Sends one query as raw wire bytes (with an EDNS OPT of `edns` bytes if given) and returns the
/// decoded response.
pub async fn raw_query(
    addr: SocketAddr,
    transport: Transport,
    qname: &str,
    qtype: RecordType,
    edns: Option<u16>,
) -> Message {
    let mut query = Message::query();
    query.add_query(Query::query(name(qname), qtype));
    if let Some(size) = edns {
        let mut opt = Edns::new();
        opt.set_max_payload(size);
        query.set_edns(opt);
    }
    let bytes = query.to_vec().expect("encode");
    let response = tokio::time::timeout(QUERY_TIMEOUT, exchange(addr, transport, &bytes))
        .await
        .expect("DNS answer within the timeout");
    let message = Message::from_vec(&response).expect("decode response");
    assert_eq!(message.metadata.id, query.metadata.id);
    message
}

pub async fn exchange(addr: SocketAddr, transport: Transport, query: &[u8]) -> Vec<u8> {
    match transport {
        Transport::Udp => {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind");
            socket.send_to(query, addr).await.expect("send");
            let mut buf = vec![0u8; 65_535];
            let len = socket.recv(&mut buf).await.expect("recv");
            buf.truncate(len);
            buf
        }
        Transport::Tcp => {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let len = u16::try_from(query.len()).expect("small query");
            stream.write_all(&len.to_be_bytes()).await.expect("write");
            stream.write_all(query).await.expect("write");
            let len = stream.read_u16().await.expect("length");
            let mut buf = vec![0u8; usize::from(len)];
            stream.read_exact(&mut buf).await.expect("read");
            buf
        }
    }
}

/// The TXT strings at `_iroh.<key>` over UDP, as raw DNS.
pub async fn iroh_txt(addr: SocketAddr, key: &Keypair) -> Vec<String> {
    let response = raw_query(
        addr,
        Transport::Udp,
        &key_name("_iroh", key),
        RecordType::TXT,
        None,
    )
    .await;
    txt_strings(&response.answers)
}
