//! The token verifier, on arbitrary strings and on structured mutations of a
//! valid token (header and claim edits, re-signed with a known, retired or
//! unknown key, or keeping the old signature). Whatever verifies must satisfy
//! an independent oracle: exactly HS256, a known kid, no trust-delegating
//! header, a correct HMAC, integer dates inside the leeway window, and the
//! right issuer and audience.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use service_auth::keys::{Algorithm, Key, KeySource};
use service_auth::token::{self, TokenKey, TokenSettings};
use service_auth_fuzz::{AUDIENCE, ISSUER, LEEWAY, NOW, SECRETS};

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(String),
    Mutated(Mutation),
}

#[derive(Arbitrary, Debug)]
struct Mutation {
    header: Vec<Edit>,
    claims: Vec<Edit>,
    signature: Signature,
    /// Segment-level damage after encoding.
    tail: Option<String>,
}

#[derive(Arbitrary, Debug)]
enum Signature {
    /// HMAC with `k1`, `k2`, or a secret nobody configured.
    Resign(u8),
    /// The original token's signature.
    Keep,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Edit {
    Remove(Field),
    Set(Field, Val),
    Add(String, Val),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Field {
    Alg,
    Kid,
    Typ,
    Crit,
    Jku,
    Jwk,
    X5u,
    X5c,
    Iss,
    Sub,
    Aud,
    Iat,
    Nbf,
    Exp,
    Jti,
    Scope,
    Principal,
    Cnf,
}

impl Field {
    fn name(self) -> &'static str {
        use Field::*;
        match self {
            Alg => "alg",
            Kid => "kid",
            Typ => "typ",
            Crit => "crit",
            Jku => "jku",
            Jwk => "jwk",
            X5u => "x5u",
            X5c => "x5c",
            Iss => "iss",
            Sub => "sub",
            Aud => "aud",
            Iat => "iat",
            Nbf => "nbf",
            Exp => "exp",
            Jti => "jti",
            Scope => "scope",
            Principal => "principal",
            Cnf => "cnf",
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// `NOW + offset`, as a number or as a string.
    Time(i32),
    TimeStr(i32),
    Str(String),
    Known(u8),
    List(Vec<String>),
}

const KNOWN: [&str; 10] = [
    "HS256", "none", "RS256", "hs256", "HS512", "k1", "k2", "k3", ISSUER, AUDIENCE,
];

fn val(v: &Val) -> Value {
    match v {
        Val::Null => Value::Null,
        Val::Bool(b) => json!(b),
        Val::Int(i) => json!(i),
        Val::Float(f) => json!(f),
        Val::Time(o) => json!(NOW + i64::from(*o)),
        Val::TimeStr(o) => json!((NOW + i64::from(*o)).to_string()),
        Val::Str(s) => json!(s),
        Val::Known(i) => json!(KNOWN[*i as usize % KNOWN.len()]),
        Val::List(l) => json!(l),
    }
}

fn apply(obj: &mut Map<String, Value>, edits: &[Edit]) {
    for e in edits {
        match e {
            Edit::Remove(f) => {
                obj.remove(f.name());
            }
            Edit::Set(f, v) => {
                obj.insert(f.name().into(), val(v));
            }
            Edit::Add(k, v) => {
                obj.insert(k.clone(), val(v));
            }
        }
    }
}

fn hmac(secret: &[u8], input: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(input);
    mac.finalize().into_bytes().to_vec()
}

fn settings() -> &'static TokenSettings {
    static S: std::sync::OnceLock<TokenSettings> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let keys = SECRETS
            .iter()
            .enumerate()
            .map(|(i, (kid, secret))| {
                let key = Key::load(*kid, Algorithm::Hs256, KeySource::Secret(secret.as_bytes()));
                TokenKey::new(key.unwrap(), i > 0)
            })
            .collect();
        TokenSettings::new(
            ISSUER.into(),
            AUDIENCE.into(),
            Duration::from_secs(300),
            Duration::from_secs(LEEWAY as u64),
            "x-service-jwt".into(),
            keys,
        )
        .unwrap()
    })
}

fn mutated(m: &Mutation) -> String {
    let mut header: Map<String, Value> =
        serde_json::from_value(json!({"alg": "HS256", "typ": "JWT", "kid": "k1"})).unwrap();
    let mut claims: Map<String, Value> = serde_json::from_value(json!({
        "iss": ISSUER, "sub": "a", "aud": AUDIENCE, "iat": NOW, "nbf": NOW,
        "exp": NOW + 300, "jti": "fuzz", "scope": "read",
    }))
    .unwrap();
    let original = |h: &Map<String, Value>, c: &Map<String, Value>| {
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(Value::Object(h.clone()).to_string()),
            URL_SAFE_NO_PAD.encode(Value::Object(c.clone()).to_string())
        )
    };
    let original_sig = hmac(
        SECRETS[0].1.as_bytes(),
        original(&header, &claims).as_bytes(),
    );
    apply(&mut header, &m.header);
    apply(&mut claims, &m.claims);
    let input = original(&header, &claims);
    let sig = match &m.signature {
        Signature::Resign(i) => {
            let secret = SECRETS
                .get(*i as usize % 3)
                .map_or("nobody-knows-this-0123456789abcdef", |s| s.1);
            URL_SAFE_NO_PAD.encode(hmac(secret.as_bytes(), input.as_bytes()))
        }
        Signature::Keep => URL_SAFE_NO_PAD.encode(&original_sig),
        Signature::Raw(s) => s.clone(),
    };
    format!("{input}.{sig}{}", m.tail.as_deref().unwrap_or(""))
}

/// Independent of `token::verify`: what any token it accepts must look like.
fn assert_acceptable(token: &str, verified: &token::Verified<'_>) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Map<String, Value> =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "HS256");
    for p in ["crit", "jku", "jwk", "x5u", "x5c"] {
        assert!(!header.contains_key(p), "accepted a token with {p}");
    }
    let kid = header["kid"].as_str().expect("string kid");
    assert_eq!(kid, verified.kid);
    let secret = SECRETS
        .iter()
        .find(|(k, _)| *k == kid)
        .expect("known kid")
        .1;
    let expected = hmac(
        secret.as_bytes(),
        format!("{}.{}", parts[0], parts[1]).as_bytes(),
    );
    assert_eq!(
        URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
        expected,
        "signature"
    );
    let claims: Map<String, Value> =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["aud"], AUDIENCE);
    assert!(claims["sub"].is_string());
    let int = |k: &str| {
        claims[k]
            .as_i64()
            .unwrap_or_else(|| panic!("{k} is not an integer: {}", claims[k]))
    };
    let (exp, nbf, _iat) = (int("exp"), int("nbf"), int("iat"));
    assert!(NOW < exp.saturating_add(LEEWAY), "expired token accepted");
    assert!(NOW >= nbf.saturating_sub(LEEWAY), "future token accepted");
    assert_eq!(verified.claims.sub, claims["sub"].as_str().unwrap());
}

fuzz_target!(|input: Input| {
    let token = match &input {
        Input::Raw(s) => s.clone(),
        Input::Mutated(m) => mutated(m),
    };
    if let Ok(verified) = token::verify(settings(), &token, NOW) {
        assert_acceptable(&token, &verified);
    }
});
