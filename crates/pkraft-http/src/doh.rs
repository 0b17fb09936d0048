//! DNS-over-HTTPS (RFC 8484) on the public listener, plus the JSON form iroh-dns-server offers.
//!
//! - `GET /dns-query?dns=<base64url query>` and `POST /dns-query` with an
//!   `application/dns-message` body: the answer as `application/dns-message`.
//! - `GET /dns-query?name=<name>&type=<type>`: the answer as `application/dns-json`, in the
//!   schema of Google's and Cloudflare's JSON APIs (`Status`, `Question`, `Answer`, ...).
//!
//! Answers come from [`pkraft_dns::Answerer`], the one way the UDP and TCP listeners answer,
//! so they are the same answers. `Accept` is not needed: a missing one and `*/*` both get the
//! form the request asked for. `Cache-Control: max-age` is the smallest TTL in the answer and
//! authority sections (RFC 8484 §5.1; an SOA counts with the smaller of its TTL and MINIMUM, as
//! RFC 2308 caches a negative answer), capped by `http.cache_max_age_max`; an answer without
//! records (SERVFAIL, REFUSED) is `no-store`.

use std::net::SocketAddr;
use std::str::FromStr;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use hickory_proto::op::{Message, Query as DnsQuery};
use hickory_proto::rr::RData;
use hickory_proto::rr::{Name, Record, RecordType};
use pkraft_dns::AnswerError;
use serde::{Deserialize, Serialize};

use crate::{AppState, SharedState};

/// Media type of a DNS wire message (RFC 8484 §6).
pub const DNS_MESSAGE: &str = "application/dns-message";
/// Media type of the JSON form.
pub const DNS_JSON: &str = "application/dns-json";
/// The largest DNS message (RFC 8484 §6 leaves the limit to DNS itself).
pub const DNS_MESSAGE_MAX: usize = 65_535;

/// RFC 8484 §4.1 says the `dns` parameter is unpadded base64url; padded input is accepted too.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The source address handed to the DNS handler, which uses it for nothing but logs. (The
/// listener does not track peer addresses.)
const UNKNOWN_SOURCE: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

#[derive(Debug, Deserialize)]
pub struct DohParams {
    /// A wire query, base64url.
    dns: Option<String>,
    /// The JSON form's query name.
    name: Option<String>,
    /// The JSON form's query type, as a mnemonic (`TXT`) or a number (`16`). Default `A`.
    #[serde(rename = "type")]
    rtype: Option<String>,
}

/// Why a DoH request got no DNS answer. Every variant is the client's fault but `Internal`.
#[derive(Debug, thiserror::Error)]
pub enum DohError {
    /// A parameter that does not make a DNS query (`what`, and why).
    #[error("{what}: {source}")]
    BadParameter {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The query itself: malformed, or no query.
    #[error(transparent)]
    BadQuery(AnswerError),
    #[error("GET /dns-query needs a dns parameter (RFC 8484) or a name parameter (JSON)")]
    NoQueryParameter,
    #[error("POST /dns-query needs Content-Type: {DNS_MESSAGE}")]
    UnsupportedMediaType,
    /// This node's own answer could not be had or written out (`what`, and why); logged, the
    /// client gets a bare 500.
    #[error("DNS answer: {what}: {source}")]
    Internal {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl IntoResponse for DohError {
    fn into_response(self) -> Response {
        let status = match self {
            DohError::BadParameter { .. } | DohError::BadQuery(_) | DohError::NoQueryParameter => {
                StatusCode::BAD_REQUEST
            }
            DohError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            DohError::Internal { .. } => {
                tracing::error!(reason = %self, "DNS-over-HTTPS answer failed");
                return (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response();
            }
        };
        (status, format!("{self}\n")).into_response()
    }
}

fn bad_parameter(
    what: &'static str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> DohError {
    DohError::BadParameter {
        what,
        source: Box::new(source),
    }
}

impl From<AnswerError> for DohError {
    fn from(e: AnswerError) -> Self {
        match e {
            AnswerError::Malformed(_) | AnswerError::NotAQuery => DohError::BadQuery(e),
            AnswerError::NoAnswer => DohError::Internal {
                what: "the query",
                source: Box::new(e),
            },
        }
    }
}

/// `GET /dns-query`: the wire form with `?dns=`, the JSON form with `?name=`.
pub async fn get_query(
    State(state): State<SharedState>,
    Query(params): Query<DohParams>,
) -> Result<Response, DohError> {
    if let Some(dns) = params.dns {
        let query = BASE64URL
            .decode(dns.as_bytes())
            .map_err(|e| bad_parameter("dns parameter is not base64url", e))?;
        return wire_answer(&state, query).await;
    }
    let Some(name) = params.name else {
        return Err(DohError::NoQueryParameter);
    };
    json_answer(&state, &name, params.rtype.as_deref()).await
}

/// `POST /dns-query`: a wire query in the body.
pub async fn post_query(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, DohError> {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if !media_type.is_some_and(|m| m.eq_ignore_ascii_case(DNS_MESSAGE)) {
        return Err(DohError::UnsupportedMediaType);
    }
    wire_answer(&state, body.to_vec()).await
}

async fn wire_answer(state: &AppState, query: Vec<u8>) -> Result<Response, DohError> {
    let answer = state.dns.answer(query, UNKNOWN_SOURCE).await?;
    // Parsed again only for the TTLs; should it not parse, the answer is still the answer.
    let cache_control = match Message::from_vec(&answer) {
        Ok(message) => cache_control(&message, state),
        Err(_) => HeaderValue::from_static("no-store"),
    };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(DNS_MESSAGE)),
            (header::CACHE_CONTROL, cache_control),
        ],
        answer,
    )
        .into_response())
}

async fn json_answer(
    state: &AppState,
    name: &str,
    rtype: Option<&str>,
) -> Result<Response, DohError> {
    let name = Name::from_str(name).map_err(|e| bad_parameter("name parameter", e))?;
    let rtype = match rtype {
        None => RecordType::A,
        Some(text) => match text.parse::<u16>() {
            Ok(number) => RecordType::from(number),
            Err(_) => RecordType::from_str(&text.to_ascii_uppercase())
                .map_err(|e| bad_parameter("type parameter", e))?,
        },
    };
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(DnsQuery::query(name, rtype));
    let wire = query
        .to_vec()
        .map_err(|e| bad_parameter("query does not encode", e))?;
    let answer = state.dns.answer(wire, UNKNOWN_SOURCE).await?;
    let message = Message::from_vec(&answer).map_err(|e| DohError::Internal {
        what: "its own answer does not parse",
        source: Box::new(e),
    })?;
    let body =
        serde_json::to_vec(&JsonMessage::from(&message)).map_err(|e| DohError::Internal {
            what: "the JSON form",
            source: Box::new(e),
        })?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(DNS_JSON)),
            (header::CACHE_CONTROL, cache_control(&message, state)),
        ],
        body,
    )
        .into_response())
}

/// `max-age` from the smallest TTL among the answer and authority records (an SOA with the
/// smaller of its TTL and MINIMUM), capped by `http.cache_max_age_max`; `no-store` without
/// records. Publishers choose their TTLs, so the cap keeps a packet from being cached for years.
fn cache_control(message: &Message, state: &AppState) -> HeaderValue {
    let min_ttl = message
        .answers
        .iter()
        .chain(&message.authorities)
        .map(|record| match &record.data {
            RData::SOA(soa) => record.ttl.min(soa.minimum),
            _ => record.ttl,
        })
        .min();
    let Some(ttl) = min_ttl else {
        return HeaderValue::from_static("no-store");
    };
    let max_age = u64::from(ttl).min(state.settings.cache_max_age_max.as_secs());
    HeaderValue::from_str(&format!("max-age={max_age}"))
        .unwrap_or_else(|_| HeaderValue::from_static("no-store"))
}

/// The JSON form (the schema of Google's and Cloudflare's DNS JSON APIs, which
/// iroh-dns-server follows too).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct JsonMessage {
    status: u16,
    #[serde(rename = "TC")]
    tc: bool,
    #[serde(rename = "RD")]
    rd: bool,
    #[serde(rename = "RA")]
    ra: bool,
    #[serde(rename = "AD")]
    ad: bool,
    #[serde(rename = "CD")]
    cd: bool,
    question: Vec<JsonQuestion>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    answer: Vec<JsonRecord>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    authority: Vec<JsonRecord>,
}

#[derive(Debug, Serialize)]
struct JsonQuestion {
    name: String,
    #[serde(rename = "type")]
    rtype: u16,
}

#[derive(Debug, Serialize)]
struct JsonRecord {
    name: String,
    #[serde(rename = "type")]
    rtype: u16,
    #[serde(rename = "TTL")]
    ttl: u32,
    data: String,
}

impl From<&Message> for JsonMessage {
    fn from(message: &Message) -> Self {
        let records = |records: &[Record]| {
            records
                .iter()
                .map(|record| JsonRecord {
                    name: record.name.to_string(),
                    rtype: u16::from(record.record_type()),
                    ttl: record.ttl,
                    data: record.data.to_string(),
                })
                .collect()
        };
        let metadata = &message.metadata;
        JsonMessage {
            status: u16::from(metadata.response_code),
            tc: metadata.truncation,
            rd: metadata.recursion_desired,
            ra: metadata.recursion_available,
            ad: metadata.authentic_data,
            cd: metadata.checking_disabled,
            question: message
                .queries
                .iter()
                .map(|q| JsonQuestion {
                    name: q.name().to_string(),
                    rtype: u16::from(q.query_type()),
                })
                .collect(),
            answer: records(&message.answers),
            authority: records(&message.authorities),
        }
    }
}
