//! A whole `CheckRequest` through `decide` with the fixed registry, built two
//! ways: protobuf bytes decoded with prost exactly as tonic would (first byte
//! even), or assembled from arbitrary parts around the certificate pool
//! (first byte odd). Whatever the request, the decision never panics, an
//! Allow is justified by the oracle, and the response matches the decision.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use service_auth_fuzz::{SERVICES, assert_justified, decide, world};

#[derive(Arbitrary, Debug)]
struct Parts {
    cert: Option<CertChoice>,
    principal: String,
    headers: Vec<(String, String)>,
    api_key: Option<u8>,
    mode: Option<String>,
    scope: Option<String>,
    token: Option<String>,
}

#[derive(Arbitrary, Debug)]
enum CertChoice {
    Pool(u8),
    /// A pool certificate with one byte of the forwarded string replaced.
    Damaged {
        index: u8,
        at: u16,
        byte: u8,
    },
    Raw(String),
}

fn build(p: Parts) -> CheckRequest {
    let w = world();
    let certificate = match p.cert {
        None => String::new(),
        Some(CertChoice::Pool(i)) => w.certs[i as usize % w.certs.len()].clone(),
        Some(CertChoice::Damaged { index, at, byte }) => {
            let mut bytes = w.certs[index as usize % w.certs.len()].clone().into_bytes();
            let at = at as usize % bytes.len();
            bytes[at] = byte;
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Some(CertChoice::Raw(s)) => s,
    };
    let mut headers: std::collections::HashMap<String, String> = p.headers.into_iter().collect();
    if let Some(i) = p.api_key {
        let keys: Vec<&str> = SERVICES
            .iter()
            .flat_map(|s| s.keys.iter().map(|k| k.0))
            .collect();
        headers.insert("x-api-key".into(), keys[i as usize % keys.len()].into());
    }
    if let Some(t) = p.token {
        headers.insert("x-service-jwt".into(), t);
    }
    let mut context_extensions = std::collections::HashMap::new();
    if let Some(m) = p.mode {
        context_extensions.insert("mode".into(), m);
    }
    if let Some(s) = p.scope {
        context_extensions.insert("scope".into(), s);
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                certificate,
                principal: p.principal,
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions,
            ..Default::default()
        }),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let req = if selector % 2 == 0 {
        match CheckRequest::decode(rest) {
            Ok(req) => req,
            Err(_) => return,
        }
    } else {
        match Parts::arbitrary_take_rest(Unstructured::new(rest)) {
            Ok(parts) => build(parts),
            Err(_) => return,
        }
    };
    assert_justified(&req, decide(&req));
});
