//! A gRPC client that sends Check request bytes exactly as given (no
//! validation), for hostile-input tests through a real listener.

use std::net::SocketAddr;

use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

use crate::wire::CHECK_PATH;

/// Sends `message` (the protobuf bytes of a CheckRequest, however broken)
/// to the Check method at `addr` with a real tonic client.
pub async fn raw_check(addr: SocketAddr, message: Vec<u8>) -> Result<CheckResponse, tonic::Status> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    raw_check_on(channel, message).await
}

/// [`raw_check`] on an existing channel.
pub async fn raw_check_on(
    channel: Channel,
    message: Vec<u8>,
) -> Result<CheckResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    grpc.unary(
        tonic::Request::new(message),
        http::uri::PathAndQuery::from_static(CHECK_PATH),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// The request's encoding with the first byte of `marker` (a string the
/// caller placed in one field) replaced by 0xFF: invalid UTF-8 in exactly
/// that field.
pub fn with_invalid_utf8(req: &CheckRequest, marker: &str) -> Vec<u8> {
    let mut bytes = req.encode_to_vec();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .unwrap_or_else(|| panic!("{marker:?} is not in the encoded request"));
    bytes[at] = 0xff;
    bytes
}

/// Encodes request bytes verbatim; decodes the response with prost.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = CheckResponse;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = CheckResponse;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<CheckResponse>, tonic::Status> {
        CheckResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

/// The string `key` of the `service_auth` dynamic metadata a response
/// carries (`reason`, `would_deny`, `service_id`...), if any.
pub fn metadata<'r>(resp: &'r CheckResponse, key: &str) -> Option<&'r str> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let meta = resp.dynamic_metadata.as_ref()?;
    let Some(Kind::StructValue(inner)) = &meta.fields.get("service_auth")?.kind else {
        return None;
    };
    match &inner.fields.get(key)?.kind {
        Some(Kind::StringValue(s)) => Some(s),
        _ => None,
    }
}

/// Whether the response lets the request through (an OK response).
pub fn is_ok(resp: &CheckResponse) -> bool {
    use envoy_types::ext_authz::v3::pb::HttpResponse;
    matches!(resp.http_response, Some(HttpResponse::OkResponse(_)))
}

/// "allow", or the denial reason the response's metadata names.
pub fn outcome(resp: &CheckResponse) -> String {
    if is_ok(resp) {
        return "allow".into();
    }
    match metadata(resp, "reason") {
        Some(reason) => reason.to_owned(),
        None => panic!("a denial without a reason: {resp:?}"),
    }
}
