//! Writes the benchmark's request: one CheckRequest exactly as Envoy sends
//! it (URL-encoded client certificate, API key header, a few usual
//! headers), framed for gRPC, so h2load can replay it byte for byte.
//! Not part of the product.
//!
//! `encode_check CERT_PEM_FILE API_KEY OUT_FILE`

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, cert, key, out] = args.as_slice() else {
        return Err("usage: encode_check CERT_PEM_FILE API_KEY OUT_FILE".into());
    };
    let pem = std::fs::read_to_string(cert)?;
    let forwarded =
        percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC).to_string();
    let headers = [
        (":authority", "orders.mesh.local"),
        (":method", "GET"),
        (":path", "/orders/42"),
        (":scheme", "https"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("x-request-id", "5b0b1a3c-0c1e-4c4e-9d0e-3f1f5c3c2b1a"),
        ("x-api-key", key.as_str()),
    ];
    let req = CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: String::new(),
                certificate: forwarded,
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    id: "5b0b1a3c".into(),
                    method: "GET".into(),
                    path: "/orders/42".into(),
                    host: "orders.mesh.local".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/2".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let body = req.encode_to_vec();
    let mut framed = Vec::with_capacity(body.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    std::fs::write(out, framed)?;
    Ok(())
}
