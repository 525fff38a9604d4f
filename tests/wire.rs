//! `wire::CheckService` behind a real tonic server on 127.0.0.1, with a stub
//! handler that records what it was given: real tonic clients (typed, and a
//! raw-bytes codec for requests prost cannot encode) and a raw h2 client.
//! Every request on the Check method must come back as one `CheckResponse`
//! with gRPC status OK, the malformed ones through the handler's malformed
//! branch, and an oversized message must be answered without being read.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes};
use envoy_types::ext_authz::v3::pb::{CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use http::uri::PathAndQuery;
use prost::Message;
use service_auth::testkit::grpc::{RawCodec, with_invalid_utf8};
use service_auth::wire::{
    CHECK_PATH, CheckHandler, CheckService, CheckView, Denial, EncodedResponse, Malformed,
    OkFields, OkTemplate,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Server};

/// The message limit the tests run with.
const LIMIT: usize = 64 * 1024;
/// h2's default (and hyper's) largest DATA frame.
const MAX_FRAME: usize = 16 * 1024;
/// A guard against a hung test, not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// What the handler was given, owned.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    View {
        certificate: String,
        api_key: Vec<Vec<u8>>,
        scope: Option<String>,
        request_id: String,
    },
    Malformed(Malformed),
}

struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    ok: OkTemplate,
    malformed: EncodedResponse,
}

impl CheckHandler for Recorder {
    fn check(&self, request: Result<CheckView<'_>, Malformed>) -> EncodedResponse {
        let (seen, answer) = match request {
            Ok(view) => (
                Seen::View {
                    certificate: view.certificate().to_owned(),
                    api_key: view
                        .header_values("x-api-key")
                        .map(<[u8]>::to_vec)
                        .collect(),
                    scope: view.context_extension("scope").map(str::to_owned),
                    request_id: view.request_id().to_owned(),
                },
                self.ok.encode(&OkFields {
                    token: "token-for-test",
                    kid: "k1",
                    jti: view.request_id(),
                    service: Some("stub"),
                }),
            ),
            Err(malformed) => (Seen::Malformed(malformed), self.malformed.clone()),
        };
        self.seen.lock().unwrap().push(seen);
        answer
    }
}

struct Harness {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    service: CheckService<Recorder>,
}

impl Harness {
    async fn start() -> Harness {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let service = CheckService::new(
            Recorder {
                seen: seen.clone(),
                ok: OkTemplate::new("x-service-jwt", Some("x-api-key")),
                malformed: Denial::MALFORMED_REQUEST.encode(),
            },
            LIMIT,
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Server::builder().add_service(service.clone());
        tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
        Harness {
            addr,
            seen,
            service,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Sends `message` as it is (no validation) with a tonic client.
    async fn raw_check(&self, message: Vec<u8>) -> Result<CheckResponse, tonic::Status> {
        service_auth::testkit::grpc::raw_check(self.addr, message).await
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn assert_malformed_denial(resp: &CheckResponse) {
    assert_eq!(resp, &Denial::MALFORMED_REQUEST.message());
    assert_eq!(resp.status.as_ref().unwrap().code, 3);
    let Some(HttpResponse::DeniedResponse(denied)) = &resp.http_response else {
        panic!("expected a denied_response: {resp:?}")
    };
    assert_eq!(denied.status.as_ref().unwrap().code, 400);
    assert_eq!(denied.body, r#"{"error":"bad_request"}"#);
}

fn request(certificate: &str, api_key: &str, path: &str, body: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                certificate: certificate.into(),
                ..Default::default()
            }),
            request: Some(Request {
                time: None,
                http: Some(HttpRequest {
                    id: "req-7".into(),
                    headers: [("x-api-key".into(), api_key.into())].into(),
                    path: path.into(),
                    body: body.into(),
                    ..Default::default()
                }),
            }),
            context_extensions: [("scope".into(), "read".into())].into(),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn a_valid_request_reaches_the_handler_as_a_view() {
    let h = Harness::start().await;
    let mut client = AuthorizationClient::new(h.channel().await);
    let resp = client
        .check(request("cert%20pem", "key-1", "/orders", ""))
        .await
        .expect("gRPC OK")
        .into_inner();
    assert_eq!(
        h.seen(),
        [Seen::View {
            certificate: "cert%20pem".into(),
            api_key: vec![b"key-1".to_vec()],
            scope: Some("read".into()),
            request_id: "req-7".into(),
        }]
    );
    assert_eq!(resp.status.as_ref().unwrap().code, 0);
    let Some(HttpResponse::OkResponse(ok)) = &resp.http_response else {
        panic!("expected ok_response: {resp:?}")
    };
    assert_eq!(
        ok.headers[0].header.as_ref().unwrap().value,
        "token-for-test"
    );
}

#[tokio::test]
async fn invalid_utf8_in_a_header_the_body_or_the_path_is_a_malformed_denial() {
    let h = Harness::start().await;
    let cases = [
        ("header value", request("c", "KEY-MARKER", "/p", "")),
        ("http.body", request("c", "k", "/p", "BODY-MARKER")),
        ("http.path", request("c", "k", "/PATH-MARKER", "")),
    ];
    for (name, req) in &cases {
        let marker = match *name {
            "header value" => "KEY-MARKER",
            "http.body" => "BODY-MARKER",
            _ => "PATH-MARKER",
        };
        let resp = h
            .raw_check(with_invalid_utf8(req, marker))
            .await
            .unwrap_or_else(|s| panic!("{name}: gRPC error {s:?}"));
        assert_malformed_denial(&resp);
    }
    assert_eq!(h.seen(), vec![Seen::Malformed(Malformed::Protobuf); 3]);
}

#[tokio::test]
async fn an_oversized_message_is_answered_without_being_buffered() {
    let h = Harness::start().await;
    let huge = vec![0u8; 10 * 1024 * 1024];
    let resp = tokio::time::timeout(HANG_GUARD, h.raw_check(huge))
        .await
        .expect("answered")
        .expect("gRPC OK, not OUT_OF_RANGE");
    assert_malformed_denial(&resp);
    assert_eq!(
        h.seen(),
        [Seen::Malformed(Malformed::TooLarge {
            len: 10 * 1024 * 1024,
            limit: LIMIT
        })]
    );
    assert!(
        h.service.peak_buffered_bytes() <= MAX_FRAME,
        "held {} bytes of a refused message",
        h.service.peak_buffered_bytes()
    );
    // The connection is still good for the next Check.
    let resp = h.raw_check(Vec::new()).await.expect("gRPC OK");
    assert_eq!(resp.status.unwrap().code, 0);
}

#[tokio::test]
async fn a_message_at_the_limit_is_read_across_frames_within_the_bound() {
    let h = Harness::start().await;
    let mut req = request("c", "k", "/p", "");
    // Pad the certificate until the message is exactly LIMIT bytes (its
    // length prefixes grow with it, hence the second pass).
    let mut filler = LIMIT - req.encoded_len();
    for _ in 0..2 {
        req.attributes
            .as_mut()
            .unwrap()
            .source
            .as_mut()
            .unwrap()
            .certificate = "x".repeat(filler);
        filler -= req.encoded_len() - LIMIT;
    }
    let bytes = req.encode_to_vec();
    assert_eq!(bytes.len(), LIMIT);
    let resp = h.raw_check(bytes).await.expect("gRPC OK");
    assert_eq!(resp.status.unwrap().code, 0);
    assert!(
        matches!(&h.seen()[..], [Seen::View { certificate, .. }] if certificate.len() == filler)
    );
    let peak = h.service.peak_buffered_bytes();
    assert!(peak <= LIMIT + MAX_FRAME, "held {peak} bytes");
    assert!(
        peak >= LIMIT,
        "the probe measures the assembled message ({peak})"
    );
}

#[tokio::test]
async fn a_zero_length_message_is_an_empty_check_request() {
    let h = Harness::start().await;
    let resp = h.raw_check(Vec::new()).await.expect("gRPC OK");
    assert_eq!(resp.status.unwrap().code, 0);
    assert_eq!(
        h.seen(),
        [Seen::View {
            certificate: String::new(),
            api_key: vec![],
            scope: None,
            request_id: String::new(),
        }]
    );
}

#[tokio::test]
async fn two_messages_or_none_in_one_stream_are_malformed() {
    let h = Harness::start().await;
    let mut grpc = tonic::client::Grpc::new(h.channel().await);
    let one = request("c", "k", "/p", "").encode_to_vec();
    for (messages, expected) in [
        (vec![one.clone(), one.clone()], Malformed::Extra),
        (vec![], Malformed::Missing),
    ] {
        grpc.ready().await.unwrap();
        let resp = grpc
            .client_streaming(
                tonic::Request::new(tokio_stream::iter(messages)),
                PathAndQuery::from_static(CHECK_PATH),
                RawCodec,
            )
            .await
            .expect("gRPC OK")
            .into_inner();
        assert_malformed_denial(&resp);
        assert_eq!(h.seen().last(), Some(&Seen::Malformed(expected)));
    }
}

#[tokio::test]
async fn other_methods_are_unimplemented_as_tonic_answers_them() {
    let h = Harness::start().await;
    let mut grpc = tonic::client::Grpc::new(h.channel().await);
    grpc.ready().await.unwrap();
    let status = grpc
        .unary(
            tonic::Request::new(Vec::new()),
            PathAndQuery::from_static("/envoy.service.auth.v3.Authorization/Other"),
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert!(h.seen().is_empty());
}

// ---- raw h2: framing a gRPC client library would never produce ----

async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    client.ready().await.unwrap()
}

fn check_headers(addr: SocketAddr) -> http::Request<()> {
    http::Request::post(format!("http://{addr}{CHECK_PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

fn prefix(compressed: u8, len: u32) -> Vec<u8> {
    let mut p = vec![compressed];
    p.extend_from_slice(&len.to_be_bytes());
    p
}

/// Reads one answer: HTTP status, the single framed message, grpc-status.
async fn read_answer(response: h2::client::ResponseFuture) -> (u16, CheckResponse, String) {
    let response = response.await.expect("response headers");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("response body");
        body.flow_control().release_capacity(chunk.len()).unwrap();
        data.extend_from_slice(&chunk);
    }
    let trailers = body
        .trailers()
        .await
        .expect("trailers")
        .expect("some trailers");
    let mut data = &data[..];
    assert_eq!(data.get_u8(), 0, "uncompressed");
    let len = data.get_u32() as usize;
    assert_eq!(len, data.len(), "exactly one message");
    let message = CheckResponse::decode(data).unwrap();
    let grpc_status = trailers["grpc-status"].to_str().unwrap().to_owned();
    (status, message, grpc_status)
}

/// Sends `frames` and ends the stream; returns the answer.
async fn send_raw(addr: SocketAddr, frames: &[&[u8]]) -> (u16, CheckResponse, String) {
    let mut client = h2_client(addr).await;
    let (response, mut stream) = client.send_request(check_headers(addr), false).unwrap();
    for frame in frames {
        stream
            .send_data(Bytes::copy_from_slice(frame), false)
            .unwrap();
    }
    stream.send_data(Bytes::new(), true).unwrap();
    read_answer(response).await
}

#[tokio::test]
async fn malformed_framing_from_a_raw_h2_client_is_a_denial() {
    let h = Harness::start().await;
    let one = request("c", "k", "/p", "").encode_to_vec();
    let framed = [prefix(0, one.len() as u32), one.clone()].concat();
    let cases: Vec<(Vec<&[u8]>, Malformed)> = vec![
        (vec![], Malformed::Missing),
        (vec![&[0, 0]], Malformed::Truncated),
        (vec![&framed[..framed.len() - 1]], Malformed::Truncated),
        (vec![&[1, 0, 0, 0, 1, 0]], Malformed::Compressed { flag: 1 }),
        (vec![&framed, &framed], Malformed::Extra),
        (vec![&framed, &[0]], Malformed::Extra),
    ];
    for (frames, expected) in cases {
        let (status, resp, grpc_status) = send_raw(h.addr, &frames).await;
        assert_eq!((status, grpc_status.as_str()), (200, "0"));
        assert_malformed_denial(&resp);
        assert_eq!(
            h.seen().last(),
            Some(&Seen::Malformed(expected)),
            "{frames:02x?}"
        );
    }
    // The same message split byte by byte across DATA frames is fine.
    let bytes: Vec<&[u8]> = framed.chunks(1).collect();
    let (_, resp, _) = send_raw(h.addr, &bytes).await;
    assert_eq!(resp.status.unwrap().code, 0);
}

#[tokio::test]
async fn a_huge_body_sent_slowly_is_answered_before_it_ends_and_reset_with_no_error() {
    let h = Harness::start().await;
    const TOTAL: usize = 10 * 1024 * 1024;
    let mut client = h2_client(h.addr).await;
    let (response, mut stream) = client.send_request(check_headers(h.addr), false).unwrap();
    stream
        .send_data(Bytes::from(prefix(0, TOTAL as u32)), false)
        .unwrap();
    // Send the body one frame at a time, as flow control allows, yielding
    // between frames; stop when the server resets the stream.
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn({
        let sent = sent.clone();
        async move {
            while sent.load(Ordering::SeqCst) < TOTAL {
                stream.reserve_capacity(MAX_FRAME);
                match poll_fn(|cx| stream.poll_capacity(cx)).await {
                    Some(Ok(n)) => {
                        let n = n.min(TOTAL - sent.load(Ordering::SeqCst));
                        if stream.send_data(Bytes::from(vec![0u8; n]), false).is_err() {
                            break;
                        }
                        sent.fetch_add(n, Ordering::SeqCst);
                    }
                    Some(Err(_)) | None => break,
                }
                tokio::task::yield_now().await;
            }
            poll_fn(|cx| stream.poll_reset(cx)).await
        }
    });
    let (status, resp, grpc_status) = tokio::time::timeout(HANG_GUARD, read_answer(response))
        .await
        .expect("answered while the body was still coming");
    let sent_when_answered = sent.load(Ordering::SeqCst);
    assert!(sent_when_answered < TOTAL, "sent {sent_when_answered}");
    assert_eq!((status, grpc_status.as_str()), (200, "0"));
    assert_malformed_denial(&resp);
    assert_eq!(
        h.seen(),
        [Seen::Malformed(Malformed::TooLarge {
            len: TOTAL,
            limit: LIMIT
        })]
    );
    let reset = tokio::time::timeout(HANG_GUARD, sender)
        .await
        .expect("the sender stopped")
        .unwrap()
        .expect("a reset");
    assert_eq!(reset, h2::Reason::NO_ERROR);
    assert!(h.service.peak_buffered_bytes() <= MAX_FRAME);
}
