//! `CheckRequest`s as Envoy sends them, and the decision on one without a
//! server.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, HeaderMap, HeaderValue, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

use crate::check::{self, Decision, Input};
use crate::evidence::Evidence;
use crate::registry::Registry;
use crate::request::Attributes;
use crate::wire::CheckView;

/// Builds a `CheckRequest` as Envoy would send it.
#[derive(Default, Clone, Debug)]
pub struct Req {
    pub certificate: Option<String>,
    pub principal: Option<String>,
    pub headers: Vec<(String, String)>,
    /// Headers delivered in `header_map` (Envoy's `encode_raw_headers`).
    pub raw_headers: Vec<(String, Vec<u8>)>,
    pub ext: Vec<(String, String)>,
    /// `source.address` (an IP; the port is fixed), as Envoy reports the
    /// downstream peer.
    pub source_address: Option<String>,
}

impl Req {
    /// A request carrying a forwarded (URL-encoded PEM) certificate.
    pub fn cert(forwarded: String) -> Self {
        Req {
            certificate: Some(forwarded),
            ..Default::default()
        }
    }

    /// A request carrying only Envoy's `source.principal`.
    pub fn principal(principal: &str) -> Self {
        Req {
            principal: Some(principal.into()),
            ..Default::default()
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn raw_header(mut self, k: &str, v: &[u8]) -> Self {
        self.raw_headers.push((k.into(), v.to_vec()));
        self
    }

    /// The API key, in the default header.
    pub fn key(self, key: &str) -> Self {
        self.header("x-api-key", key)
    }

    /// The downstream peer's IP address (`source.address`).
    pub fn from_address(mut self, ip: &str) -> Self {
        self.source_address = Some(ip.into());
        self
    }

    /// A context extension (per-route setting).
    pub fn ext(mut self, k: &str, v: &str) -> Self {
        self.ext.push((k.into(), v.into()));
        self
    }

    /// The request Envoy sends for a typical mesh call: the forwarded
    /// certificate, the API key and the usual pseudo- and client headers
    /// (what the benchmarks replay).
    pub fn typical(forwarded: String, api_key: &str) -> Self {
        let mut req = Req::cert(forwarded);
        for (k, v) in [
            (":authority", "orders.mesh.local"),
            (":method", "GET"),
            (":path", "/orders/42"),
            (":scheme", "https"),
            ("user-agent", "curl/8.5.0"),
            ("accept", "*/*"),
            ("x-request-id", "5b0b1a3c-0c1e-4c4e-9d0e-3f1f5c3c2b1a"),
        ] {
            req = req.header(k, v);
        }
        req.key(api_key)
    }

    pub fn build(&self) -> CheckRequest {
        let headers: HashMap<String, String> = self.headers.iter().cloned().collect();
        let header_map = (!self.raw_headers.is_empty()).then(|| HeaderMap {
            headers: self
                .raw_headers
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: k.clone(),
                    raw_value: v.clone(),
                    ..Default::default()
                })
                .collect(),
        });
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    certificate: self.certificate.clone().unwrap_or_default(),
                    principal: self.principal.clone().unwrap_or_default(),
                    address: self.source_address.as_ref().map(|ip| Address {
                        address: Some(AddressKind::SocketAddress(SocketAddress {
                            address: ip.clone(),
                            port_specifier: Some(PortSpecifier::PortValue(50_000)),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                }),
                request: Some(Request {
                    http: Some(HttpRequest {
                        id: "req-1".into(),
                        method: "GET".into(),
                        path: "/".into(),
                        headers,
                        header_map,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: self.ext.iter().cloned().collect(),
                ..Default::default()
            }),
        }
    }
}

/// The decision on `req` at `now`, exactly as the server reaches it but
/// without its memo: encode the request, read it back with the wire
/// decoder, take its attributes, gather the certificate evidence, decide.
pub fn decide<'r>(req: &CheckRequest, registry: &'r Registry, now: i64) -> Decision<'r> {
    use prost::Message;
    let bytes = req.encode_to_vec();
    let view = match CheckView::decode(&bytes) {
        Ok(view) => view,
        // A message prost encoded always decodes; if not, it is malformed.
        Err(_) => return Decision::Deny(crate::check::Denial::malformed()),
    };
    let attributes = Attributes::from_view(&view);
    let evidence = (!attributes.certificate.is_empty())
        .then(|| Evidence::from_forwarded(attributes.certificate, registry, now));
    let input = Input {
        attributes,
        certificate: evidence.as_ref().map(|e| e.as_ref().map_err(|e| *e)),
    };
    check::decide(&input, registry, now)
}

/// `msg` framed as one gRPC message (uncompressed), as it travels in an
/// HTTP/2 DATA frame: what h2load replays and raw-h2 tests send.
pub fn grpc_frame(msg: &impl prost::Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut framed = Vec::with_capacity(body.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    framed
}
