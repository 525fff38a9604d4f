//! The API-key header handling: a caller with a known or unknown identity
//! sends arbitrary `headers` and `header_map` entries (any case, raw bytes,
//! repeats, commas, huge values). Through `decide` with the fixed registry,
//! an Allow must be justified by exactly one live key of the same service.
#![no_main]

use arbitrary::Arbitrary;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use libfuzzer_sys::fuzz_target;
use service_auth_fuzz::{SERVICES, assert_justified, decide, world};

/// A header name the decision cares about, or anything else.
#[derive(Arbitrary, Debug)]
enum Name {
    ApiKey,
    ApiKeyUpper,
    Scope,
    Other(String),
}

/// A value: a registered key (possibly decorated), or arbitrary bytes.
#[derive(Arbitrary, Debug)]
enum Value {
    Key(u8),
    KeyWith {
        key: u8,
        prefix: String,
        suffix: String,
    },
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Identity: a pool certificate, a principal (known or not), or nothing.
    cert: Option<u8>,
    principal: Option<(u8, String)>,
    headers: Vec<(Name, Value)>,
    raw: Option<Vec<(Name, Value, bool)>>,
}

fn all_keys() -> Vec<&'static str> {
    SERVICES
        .iter()
        .flat_map(|s| s.keys.iter().map(|k| k.0))
        .collect()
}

fn name(n: &Name) -> String {
    match n {
        Name::ApiKey => "x-api-key".into(),
        Name::ApiKeyUpper => "X-API-Key".into(),
        Name::Scope => "x-auth-scope".into(),
        Name::Other(s) => s.clone(),
    }
}

fn value(v: &Value) -> Vec<u8> {
    let keys = all_keys();
    match v {
        Value::Key(i) => keys[*i as usize % keys.len()].as_bytes().to_vec(),
        Value::KeyWith {
            key,
            prefix,
            suffix,
        } => format!("{prefix}{}{suffix}", keys[*key as usize % keys.len()]).into_bytes(),
        Value::Bytes(b) => b.clone(),
    }
}

fuzz_target!(|input: Input| {
    let w = world();
    let principals: Vec<&str> = SERVICES
        .iter()
        .flat_map(|s| s.principals.iter().copied())
        .collect();
    let certificate = input
        .cert
        .map(|i| w.certs[i as usize % w.certs.len()].clone())
        .unwrap_or_default();
    let principal = match &input.principal {
        // Sometimes a registered principal, sometimes a lookalike.
        Some((i, _)) if i % 2 == 0 => principals[*i as usize / 2 % principals.len()].to_owned(),
        Some((_, s)) => s.clone(),
        None => String::new(),
    };
    let headers = input
        .headers
        .iter()
        .map(|(n, v)| (name(n), String::from_utf8_lossy(&value(v)).into_owned()))
        .collect();
    let header_map = input.raw.as_ref().map(|raw| HeaderMap {
        headers: raw
            .iter()
            .map(|(n, v, as_raw)| {
                let bytes = value(v);
                if *as_raw {
                    HeaderValue {
                        key: name(n),
                        raw_value: bytes,
                        ..Default::default()
                    }
                } else {
                    HeaderValue {
                        key: name(n),
                        value: String::from_utf8_lossy(&bytes).into_owned(),
                        ..Default::default()
                    }
                }
            })
            .collect(),
    });
    let req = CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                certificate,
                principal,
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    headers,
                    header_map,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    assert_justified(&req, decide(&req));
});
