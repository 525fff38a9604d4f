//! The `envoy.service.auth.v3.Authorization` service as a tower service that
//! plugs into tonic's router in place of the generated `AuthorizationServer`.
//!
//! It owns the transport side of Check: reads the one request message with
//! the size limit enforced as frames arrive, hands the handler a decoded
//! [`CheckView`] or the [`Malformed`] reason, and always answers HTTP 200,
//! one `CheckResponse`, `grpc-status: 0`.
//!
//! A request known to be malformed before its stream ends (too large,
//! compressed, a second message) is answered at once, and the rest of its
//! body is not read: dropping the body makes h2 discard whatever else
//! arrives (returning connection-level flow-control credit), and once the
//! answer is complete h2 resets the stream with NO_ERROR (RFC 9113 §8.1),
//! which tells the client to stop sending without failing the response it
//! already has. No client sits blocked on flow control for a body nobody
//! reads, and nothing of it is buffered.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tonic::body::Body as TonicBody;
use tonic::server::NamedService;

use super::frame::read_message;
use super::{CheckView, EncodedResponse, Malformed};

/// The Check method's request path.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Decides one Check. Called exactly once per request on [`CHECK_PATH`],
/// synchronously on the connection's task.
///
/// It must not panic (a panic would reset the stream, a gRPC error that
/// `failure_mode_allow` turns into an allow): catch one and deny.
pub trait CheckHandler: Send + Sync + 'static {
    fn check(&self, request: Result<CheckView<'_>, Malformed>) -> EncodedResponse;
}

impl<F> CheckHandler for F
where
    F: Fn(Result<CheckView<'_>, Malformed>) -> EncodedResponse + Send + Sync + 'static,
{
    fn check(&self, request: Result<CheckView<'_>, Malformed>) -> EncodedResponse {
        self(request)
    }
}

/// The Check service. Clones share the handler.
pub struct CheckService<H> {
    shared: Arc<Shared<H>>,
}

struct Shared<H> {
    handler: H,
    max_message_bytes: usize,
    /// Most bytes one request has held in this service's buffers.
    peak_buffered: AtomicUsize,
}

impl<H: CheckHandler> CheckService<H> {
    /// Serves Check with `handler`, refusing request messages larger than
    /// `max_message_bytes` (as a [`Malformed::TooLarge`]).
    pub fn new(handler: H, max_message_bytes: usize) -> Self {
        CheckService {
            shared: Arc::new(Shared {
                handler,
                max_message_bytes,
                peak_buffered: AtomicUsize::new(0),
            }),
        }
    }

    /// The most bytes any one request has held in this service so far: its
    /// partial message copy plus the DATA frame being read. Bounded by the
    /// message limit plus one frame; exposed so tests can check that bound.
    pub fn peak_buffered_bytes(&self) -> usize {
        self.shared.peak_buffered.load(Ordering::Relaxed)
    }
}

impl<H> Clone for CheckService<H> {
    fn clone(&self) -> Self {
        CheckService {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<H> NamedService for CheckService<H> {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

impl<H: CheckHandler> tower::Service<http::Request<TonicBody>> for CheckService<H> {
    type Response = http::Response<TonicBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<TonicBody>) -> Self::Future {
        if request.uri().path() != CHECK_PATH {
            return Box::pin(std::future::ready(Ok(unimplemented())));
        }
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let mut body = request.into_body();
            let read =
                read_message(&mut body, shared.max_message_bytes, &shared.peak_buffered).await;
            // Whatever else the client sends is discarded from here on.
            drop(body);
            let answer = match &read {
                Ok(message) => shared.handler.check(CheckView::decode(message)),
                Err(malformed) => shared.handler.check(Err(*malformed)),
            };
            Ok(answer_response(answer))
        })
    }
}

/// What tonic's generated services answer for an unknown method.
fn unimplemented() -> http::Response<TonicBody> {
    let mut response = http::Response::new(TonicBody::default());
    let headers = response.headers_mut();
    headers.insert(
        tonic::Status::GRPC_STATUS,
        HeaderValue::from(tonic::Code::Unimplemented as i32),
    );
    headers.insert(CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
    response
}

fn answer_response(answer: EncodedResponse) -> http::Response<TonicBody> {
    let body = AnswerBody {
        message: Some(answer.into_frame()),
        trailers_sent: false,
    };
    let mut response = http::Response::new(TonicBody::new(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
    response
}

/// The response body: the framed message, then `grpc-status: 0`.
struct AnswerBody {
    message: Option<Bytes>,
    trailers_sent: bool,
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        if self.trailers_sent {
            return Poll::Ready(None);
        }
        self.trailers_sent = true;
        let mut trailers = HeaderMap::with_capacity(1);
        trailers.insert(
            tonic::Status::GRPC_STATUS,
            HeaderValue::from(tonic::Code::Ok as i32),
        );
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && self.trailers_sent
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.message.as_ref().map_or(0, |m| m.len() as u64))
    }
}
