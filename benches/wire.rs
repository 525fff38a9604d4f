//! The Check wire format: partial decode (`wire::CheckView`) vs prost's full
//! decode of a realistic `CheckRequest`, and the OK response from the
//! pre-encoded template vs a prost message encoded per request.
//! Run: `cargo bench --bench wire`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::google::protobuf::Timestamp;
use prost::Message;
use service_auth::wire::{CheckView, Denial, EncodedResponse, OkFields, OkTemplate};

/// A 2 KiB URL-encoded PEM, shaped like Envoy's `forward_client_cert`.
fn forwarded_certificate() -> String {
    let mut pem = String::from("-----BEGIN%20CERTIFICATE-----%0A");
    let body = "MIIFazCCA1OgAwIBAgIUQ2xpZW50IGNlcnRpZmljYXRlIGZvciBiZW5jaG1hcmtz";
    while pem.len() < 2048 - 30 {
        pem.push_str(body);
        pem.push_str("%0A");
    }
    pem.push_str("-----END%20CERTIFICATE-----%0A");
    pem
}

fn socket(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

/// What Envoy sends for an mTLS caller: ~12 headers, 2 context extensions.
fn realistic_request() -> CheckRequest {
    let headers = [
        (":authority", "orders.mesh.internal"),
        (":method", "POST"),
        (":path", "/v1/orders?limit=20"),
        (":scheme", "https"),
        ("content-type", "application/json"),
        ("content-length", "312"),
        ("user-agent", "orders-client/2.4.1"),
        ("accept", "application/json"),
        ("x-request-id", "6f1c2a9e-2b7d-4e8a-9a41-0c3d5e7f9b21"),
        ("x-forwarded-proto", "https"),
        ("x-envoy-expected-rq-timeout-ms", "15000"),
        ("x-api-key", "billing-0123456789abcdefghijklmnop"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .into();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: socket("10.12.4.31", 48212),
                principal: "spiffe://mesh.internal/ns/billing/sa/billing".into(),
                certificate: forwarded_certificate(),
                ..Default::default()
            }),
            destination: Some(Peer {
                address: socket("10.12.7.2", 8443),
                principal: "spiffe://mesh.internal/ns/orders/sa/orders".into(),
                ..Default::default()
            }),
            request: Some(Request {
                time: Some(Timestamp {
                    seconds: 1_800_000_000,
                    nanos: 123_456_789,
                }),
                http: Some(HttpRequest {
                    id: "6f1c2a9e-2b7d-4e8a-9a41-0c3d5e7f9b21".into(),
                    method: "POST".into(),
                    headers,
                    path: "/v1/orders?limit=20".into(),
                    host: "orders.mesh.internal".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/2".into(),
                    size: 312,
                    ..Default::default()
                }),
            }),
            context_extensions: [
                ("mode".to_owned(), "issue".to_owned()),
                ("scope".to_owned(), "orders:read".to_owned()),
            ]
            .into(),
            ..Default::default()
        }),
    }
}

fn bench(c: &mut Criterion) {
    let bytes = realistic_request().encode_to_vec();
    eprintln!("realistic CheckRequest: {} bytes", bytes.len());

    c.bench_function("decode CheckRequest: prost, full", |b| {
        b.iter(|| CheckRequest::decode(black_box(&bytes[..])).unwrap())
    });
    c.bench_function("decode CheckRequest: wire::CheckView, partial", |b| {
        b.iter(|| CheckView::decode(black_box(&bytes[..])).unwrap())
    });
    // Decode plus what the decision reads: certificate, API key, scope.
    c.bench_function("decode + reads: prost, full", |b| {
        b.iter(|| {
            let req = CheckRequest::decode(black_box(&bytes[..])).unwrap();
            let attrs = req.attributes.as_ref().unwrap();
            let http = attrs.request.as_ref().unwrap().http.as_ref().unwrap();
            black_box((
                attrs.source.as_ref().unwrap().certificate.len(),
                http.headers.get("x-api-key").map(String::len),
                attrs.context_extensions.get("scope").map(String::len),
            ));
        })
    });
    c.bench_function("decode + reads: wire::CheckView, partial", |b| {
        b.iter(|| {
            let view = CheckView::decode(black_box(&bytes[..])).unwrap();
            black_box((
                view.certificate().len(),
                view.header_values("x-api-key").next().map(<[u8]>::len),
                view.context_extension("scope").map(str::len),
            ));
        })
    });

    let template = OkTemplate::new("x-service-jwt", Some("x-api-key"));
    let token = "e".repeat(560);
    let fields = OkFields {
        token: &token,
        kid: "k1",
        jti: "0f8e7d6c5b4a39281706f5e4d3c2b1a0",
        service: Some("billing"),
    };
    c.bench_function("encode OK response: prost message", |b| {
        b.iter(|| EncodedResponse::from_message(&template.message(black_box(&fields))))
    });
    c.bench_function("encode OK response: wire::OkTemplate", |b| {
        b.iter(|| template.encode(black_box(&fields)))
    });
    let denial = Denial::MALFORMED_REQUEST.encode();
    c.bench_function("encode denial: prost message", |b| {
        b.iter(|| black_box(Denial::MALFORMED_REQUEST).encode())
    });
    c.bench_function("encode denial: pre-encoded clone", |b| {
        b.iter(|| black_box(&denial).clone())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
