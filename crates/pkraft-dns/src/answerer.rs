//! [`Answerer`]: answers DNS messages that arrive outside hickory's own listeners (DNS-over-HTTPS
//! on the HTTP listener) with the same handler chain as UDP and TCP: the freshness guard, the
//! `Catalog`, the zones and the record cache. So DoH answers are the UDP/TCP answers, byte for
//! byte apart from UDP's truncation.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{Catalog, MessageResponse};

use crate::freshness::FreshnessGuard;

/// The handler chain, shared by the hickory `Server` and the [`Answerer`].
#[derive(Clone)]
pub(crate) struct SharedHandler(pub(crate) Arc<FreshnessGuard<Catalog>>);

#[async_trait::async_trait]
impl RequestHandler for SharedHandler {
    async fn handle_request<R: ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.0
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

/// Why a message got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// Not a DNS query (the header or question does not parse, or it is a response).
    #[error("not a DNS query: {0}")]
    Malformed(String),
    #[error("the answer could not be encoded: {0}")]
    Encode(String),
}

/// Answers DNS wire messages; see the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Answerer {
    handler: SharedHandler,
}

impl Answerer {
    pub(crate) fn new(handler: SharedHandler) -> Self {
        Answerer { handler }
    }

    /// The wire answer to the wire query `query` from `src`. Answers are encoded as for TCP: DoH
    /// carries them whole, with no truncation (RFC 8484 §5.2 leaves size to HTTP).
    pub async fn answer(&self, query: Vec<u8>, src: SocketAddr) -> Result<Vec<u8>, AnswerError> {
        let request = Request::from_bytes(query, src, Protocol::Tcp)
            .map_err(|e| AnswerError::Malformed(e.to_string()))?;
        if request.metadata.message_type != hickory_server::proto::op::MessageType::Query {
            return Err(AnswerError::Malformed(
                "a response, not a query".to_string(),
            ));
        }
        let capture = Capture::default();
        self.handler
            .handle_request::<_, TokioTime>(&request, capture.clone())
            .await;
        let encoded = capture
            .0
            .lock()
            .map_err(|_| AnswerError::Encode("the answer handler panicked".to_string()))?
            .take();
        match encoded {
            Some(Ok(bytes)) => Ok(bytes),
            Some(Err(e)) => Err(AnswerError::Encode(e)),
            None => Err(AnswerError::Encode("no answer was sent".to_string())),
        }
    }
}

/// The encoded answer, or why it could not be encoded.
type Encoded = Result<Vec<u8>, String>;

/// A `ResponseHandler` that keeps the encoded answer instead of sending it.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Option<Encoded>>>);

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // What hickory's own handler does for TCP (`MessageResponse::encode` is crate-private):
        // the whole message, up to the 64 KiB a DNS message can have.
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(u16::MAX);
        let emitted = response.destructive_emit(&mut encoder);
        let (result, stored) = match emitted {
            Ok(info) => (Ok(info), Ok(bytes)),
            Err(e) => {
                let message = e.to_string();
                (Err(NetError::from(e)), Err(message))
            }
        };
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(stored);
        }
        result
    }
}
