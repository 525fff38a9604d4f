//! `CheckResponse` encodings, already framed for gRPC.
//!
//! Denials are constants per reason: build each once with
//! [`Denial::encode`] and clone the [`EncodedResponse`] (a reference count)
//! per Check. The OK response differs per Check only in the token and the
//! metadata ids, so [`OkTemplate`] keeps the rest pre-encoded and writes one
//! buffer of the exact size, with no prost message or map built per request.
//! The prost builders ([`Denial::message`], [`OkTemplate::message`]) define
//! the shape; tests check that both encodings decode to the same message.

use bytes::Bytes;
use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, HttpStatusCode, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{BoolValue, Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

/// gRPC message prefix: compressed flag + big-endian length.
const PREFIX_LEN: usize = 5;

/// The top-level `dynamic_metadata` key Envoy's access log reads.
const METADATA_NAMESPACE: &str = "service_auth";

/// One `CheckResponse`, with its 5-byte gRPC prefix: what the Check method
/// sends. Cloning shares the bytes.
///
/// Handlers return this rather than a prost message so that a denial is a
/// shared constant (a reference-count bump per Check, ~30 ns, instead of
/// building and encoding ~1 µs of maps and strings), the OK response is
/// written once into a buffer of the exact size, and the service sends the
/// bytes as they are, prefix included, with no further copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedResponse(Bytes);

impl EncodedResponse {
    /// Encodes a prost message (the reference path).
    pub fn from_message(message: &CheckResponse) -> Self {
        let len = message.encoded_len();
        let mut buf = Vec::with_capacity(PREFIX_LEN + len);
        put_prefix(&mut buf, len);
        // A Vec grows as needed: `encode` cannot run out of capacity.
        let _ = message.encode(&mut buf);
        EncodedResponse(buf.into())
    }

    /// The `CheckResponse` bytes, without the gRPC prefix.
    pub fn message_bytes(&self) -> &[u8] {
        self.0.get(PREFIX_LEN..).unwrap_or_default()
    }

    /// Decodes the response back (for tests and diagnostics).
    pub fn decode(&self) -> Result<CheckResponse, prost::DecodeError> {
        CheckResponse::decode(self.message_bytes())
    }

    pub(super) fn into_frame(self) -> Bytes {
        self.0
    }
}

/// A denial as Envoy answers the caller with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    /// gRPC code in `CheckResponse.status`.
    pub grpc: tonic::Code,
    /// HTTP status Envoy sends the caller.
    pub http: HttpStatusCode,
    /// JSON body Envoy sends the caller, e.g. `{"error":"bad_request"}`.
    pub body: &'static str,
    /// Reason for Envoy's access log (`dynamic_metadata`), never the body.
    pub reason: &'static str,
}

impl Denial {
    /// A request that could not be read: see [`super::Malformed`].
    pub const MALFORMED_REQUEST: Denial = Denial {
        grpc: tonic::Code::InvalidArgument,
        http: HttpStatusCode::BadRequest,
        body: r#"{"error":"bad_request"}"#,
        reason: "malformed_request",
    };

    /// The denial as a prost message.
    pub fn message(&self) -> CheckResponse {
        CheckResponse {
            status: Some(rpc::Status {
                code: self.grpc as i32,
                ..Default::default()
            }),
            dynamic_metadata: Some(service_auth_metadata([("reason", self.reason)])),
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: self.http as i32,
                }),
                headers: vec![overwrite_header("content-type", "application/json")],
                body: self.body.to_owned(),
            })),
        }
    }

    /// The denial, encoded: build once per reason and clone per Check.
    pub fn encode(&self) -> EncodedResponse {
        EncodedResponse::from_message(&self.message())
    }
}

/// What changes between two OK responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OkFields<'a> {
    /// The token header's value (the JWT).
    pub token: &'a str,
    pub kid: &'a str,
    pub jti: &'a str,
    /// The authenticated service, when there is one.
    pub service: Option<&'a str>,
}

impl<'a> OkFields<'a> {
    /// The `service_auth` metadata entries, in a fixed order.
    fn metadata(&self) -> impl Iterator<Item = (&'static str, &'a str)> + use<'a> {
        [("kid", self.kid), ("jti", self.jti)]
            .into_iter()
            .chain(self.service.map(|s| ("service", s)))
    }
}

/// The OK response for one configuration (token header name, API key header
/// to remove), with everything but [`OkFields`] pre-encoded.
#[derive(Debug, Clone)]
pub struct OkTemplate {
    token_header: String,
    remove_header: Option<String>,
    /// `status` (code 0).
    status: Vec<u8>,
    /// `HeaderValue.key` (the token header's name).
    header_key: Vec<u8>,
    /// `HeaderValueOption.append` (false) and `.append_action` (overwrite).
    overwrite: Vec<u8>,
    /// `OkHttpResponse.headers_to_remove`.
    remove: Vec<u8>,
    /// The metadata map key, `service_auth`.
    namespace_key: Vec<u8>,
}

impl OkTemplate {
    /// `token_header` is set to the token replacing any client-sent copy;
    /// `remove_header` (the API key header unless it is forwarded) is removed.
    pub fn new(token_header: &str, remove_header: Option<&str>) -> Self {
        let header = overwrite_header(token_header, "");
        OkTemplate {
            token_header: token_header.to_owned(),
            remove_header: remove_header.map(str::to_owned),
            status: CheckResponse {
                status: Some(ok_status()),
                ..Default::default()
            }
            .encode_to_vec(),
            header_key: header.header.clone().unwrap_or_default().encode_to_vec(),
            overwrite: HeaderValueOption {
                header: None,
                ..header
            }
            .encode_to_vec(),
            remove: OkHttpResponse {
                headers_to_remove: remove_header.map(str::to_owned).into_iter().collect(),
                ..Default::default()
            }
            .encode_to_vec(),
            namespace_key: string_field(1, METADATA_NAMESPACE),
        }
    }

    /// The OK response as a prost message (the reference shape).
    pub fn message(&self, fields: &OkFields<'_>) -> CheckResponse {
        CheckResponse {
            status: Some(ok_status()),
            dynamic_metadata: Some(service_auth_metadata(fields.metadata())),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![overwrite_header(&self.token_header, fields.token)],
                headers_to_remove: self.remove_header.clone().into_iter().collect(),
                ..Default::default()
            })),
        }
    }

    /// The OK response, encoded into one buffer of the exact size.
    pub fn encode(&self, fields: &OkFields<'_>) -> EncodedResponse {
        // Lengths inside out: HeaderValue, HeaderValueOption, OkHttpResponse;
        // metadata entry Values, the inner Struct, its Value, the outer Struct.
        let header_value = self.header_key.len() + string_len(2, fields.token);
        let option = delimited_len(1, header_value) + self.overwrite.len();
        let ok = delimited_len(2, option) + self.remove.len();
        let inner: usize = fields
            .metadata()
            .map(|(k, v)| delimited_len(1, entry_len(k, v)))
            .sum();
        let namespace_value = delimited_len(5, inner);
        let namespace_entry = self.namespace_key.len() + delimited_len(2, namespace_value);
        let metadata = delimited_len(1, namespace_entry);
        let len = self.status.len() + delimited_len(3, ok) + delimited_len(4, metadata);

        let mut buf = Vec::with_capacity(PREFIX_LEN + len);
        put_prefix(&mut buf, len);
        buf.extend_from_slice(&self.status);
        // http_response.ok_response
        put_delimited(&mut buf, 3, ok);
        put_delimited(&mut buf, 2, option);
        put_delimited(&mut buf, 1, header_value);
        buf.extend_from_slice(&self.header_key);
        put_string(&mut buf, 2, fields.token);
        buf.extend_from_slice(&self.overwrite);
        buf.extend_from_slice(&self.remove);
        // dynamic_metadata: {"service_auth": {"kid": .., "jti": .., "service": ..}}
        put_delimited(&mut buf, 4, metadata);
        put_delimited(&mut buf, 1, namespace_entry);
        buf.extend_from_slice(&self.namespace_key);
        put_delimited(&mut buf, 2, namespace_value);
        put_delimited(&mut buf, 5, inner);
        for (key, value) in fields.metadata() {
            put_delimited(&mut buf, 1, entry_len(key, value));
            put_string(&mut buf, 1, key);
            put_delimited(&mut buf, 2, string_len(3, value));
            put_string(&mut buf, 3, value);
        }
        debug_assert_eq!(buf.len(), PREFIX_LEN + len);
        EncodedResponse(buf.into())
    }
}

pub(crate) fn ok_status() -> rpc::Status {
    rpc::Status {
        code: tonic::Code::Ok as i32,
        ..Default::default()
    }
}

/// A header that replaces any client-sent copy on every Envoy version:
/// `append_action` for 1.37+, and the deprecated `append: false` because
/// 1.37.0 briefly honoured only one of them and merged a forged value in.
#[allow(deprecated)] // `append` is deprecated, and still needed: see above.
fn overwrite_header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        append: Some(BoolValue { value: false }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// `{"service_auth": {...}}` for Envoy's access log.
pub(crate) fn service_auth_metadata<'a>(
    fields: impl IntoIterator<Item = (&'static str, &'a str)>,
) -> Struct {
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let inner = Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| (k.to_owned(), string(v)))
            .collect(),
    };
    Struct {
        fields: [(
            METADATA_NAMESPACE.to_owned(),
            Value {
                kind: Some(Kind::StructValue(inner)),
            },
        )]
        .into(),
    }
}

/// A `map<string, Value>` entry whose value is a `string_value`.
fn entry_len(key: &str, value: &str) -> usize {
    string_len(1, key) + delimited_len(2, string_len(3, value))
}

fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn string_len(tag: u32, s: &str) -> usize {
    delimited_len(tag, s.len())
}

fn put_delimited(buf: &mut Vec<u8>, tag: u32, len: usize) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn put_string(buf: &mut Vec<u8>, tag: u32, s: &str) {
    put_delimited(buf, tag, s.len());
    buf.extend_from_slice(s.as_bytes());
}

fn string_field(tag: u32, s: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(string_len(tag, s));
    put_string(&mut buf, tag, s);
    buf
}

fn put_prefix(buf: &mut Vec<u8>, len: usize) {
    // A response is a few KiB (a token and config names); past 4 GiB it
    // could not be framed at all, so clamping only ever mislabels the
    // impossible, and never panics.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    buf.push(0);
    buf.extend_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(resp: &CheckResponse) -> Vec<(String, String)> {
        let outer = &resp.dynamic_metadata.as_ref().unwrap().fields[METADATA_NAMESPACE];
        let Some(Kind::StructValue(inner)) = &outer.kind else {
            panic!("no struct: {resp:?}")
        };
        let mut out: Vec<_> = inner
            .fields
            .iter()
            .map(|(k, v)| match &v.kind {
                Some(Kind::StringValue(s)) => (k.clone(), s.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_template_encodes_what_the_prost_builder_builds() {
        let cases = [
            (
                "x-service-jwt",
                Some("x-api-key"),
                OkFields {
                    token: "eyJ.a.b",
                    kid: "k1",
                    jti: "abc",
                    service: Some("svc"),
                },
            ),
            (
                "authorization",
                None,
                OkFields {
                    token: "",
                    kid: "",
                    jti: "",
                    service: None,
                },
            ),
            (
                "x-t",
                Some("k"),
                OkFields {
                    token: &"t".repeat(700),
                    kid: &"k".repeat(200),
                    jti: "j",
                    service: Some(""),
                },
            ),
        ];
        for (header, remove, fields) in cases {
            let template = OkTemplate::new(header, remove);
            let fast = template.encode(&fields).decode().unwrap();
            let reference = template.message(&fields);
            assert_eq!(fast, reference);
            assert_eq!(
                EncodedResponse::from_message(&reference).decode().unwrap(),
                reference
            );
        }
    }

    #[test]
    fn the_ok_response_overwrites_the_token_header_both_ways() {
        let template = OkTemplate::new("x-service-jwt", Some("x-api-key"));
        let fields = OkFields {
            token: "jwt",
            kid: "k1",
            jti: "id-1",
            service: Some("orders"),
        };
        let resp = template.encode(&fields).decode().unwrap();
        assert_eq!(resp.status.as_ref().unwrap().code, 0);
        let Some(HttpResponse::OkResponse(ok)) = &resp.http_response else {
            panic!("{resp:?}")
        };
        assert_eq!(ok.headers.len(), 1);
        let h = &ok.headers[0];
        assert_eq!(h.header.as_ref().unwrap().key, "x-service-jwt");
        assert_eq!(h.header.as_ref().unwrap().value, "jwt");
        #[allow(deprecated)]
        let append = h.append;
        assert_eq!(append, Some(BoolValue { value: false }));
        assert_eq!(
            h.append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        );
        assert_eq!(ok.headers_to_remove, ["x-api-key"]);
        assert_eq!(
            metadata(&resp),
            [
                ("jti".into(), "id-1".into()),
                ("kid".into(), "k1".into()),
                ("service".into(), "orders".into())
            ]
        );
    }

    #[test]
    fn the_malformed_request_denial_has_the_documented_shape() {
        let resp = Denial::MALFORMED_REQUEST.encode().decode().unwrap();
        assert_eq!(resp, Denial::MALFORMED_REQUEST.message());
        assert_eq!(resp.status.as_ref().unwrap().code, 3);
        let Some(HttpResponse::DeniedResponse(denied)) = &resp.http_response else {
            panic!("{resp:?}")
        };
        assert_eq!(denied.status.as_ref().unwrap().code, 400);
        assert_eq!(denied.body, r#"{"error":"bad_request"}"#);
        let ct = denied.headers[0].header.as_ref().unwrap();
        assert_eq!((&*ct.key, &*ct.value), ("content-type", "application/json"));
        assert_eq!(
            metadata(&resp),
            [("reason".into(), "malformed_request".into())]
        );
    }

    #[test]
    fn the_prefix_frames_the_message() {
        let encoded = Denial::MALFORMED_REQUEST.encode();
        let frame = encoded.clone().into_frame();
        assert_eq!(frame[0], 0);
        let len = u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, encoded.message_bytes().len());
        assert_eq!(len + PREFIX_LEN, frame.len());
    }
}
