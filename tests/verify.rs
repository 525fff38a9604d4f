//! Verify mode against hostile tokens: every attack in the issue is a
//! denial with the right reason, through the same `decide` a Check uses.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Ca, ClientSpec, Fixture, Req, Svc, unix_now};
use service_auth::check::{Decision, Grant, Reason, TokenCheck};
use service_auth::config::KeyEntry;
use service_auth::registry::Registry;
use service_auth::testkit::{claims_json, decide, forge_hs256};
use service_auth::token::VerifyError;

const A_URI: &str = "spiffe://mesh.test/a";
const A_KEY: &str = "key-of-a-0123456789";

/// Claims the fixture accepts for service `a` at `now`, edited by `edit`.
fn claims(now: i64, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    claims_json("a", now, edit)
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT","kid":"test-1"}"#;

/// Allowed, or the denial's reason and what happened to the token.
type Verdict = Result<(), (Reason, Option<TokenCheck>)>;

fn verdict(registry: &Registry, req: Req, now: i64) -> Verdict {
    match decide(&req.ext("mode", "verify").build(), registry, now) {
        Decision::Allow(Grant::Verify(_)) => Ok(()),
        Decision::Allow(Grant::Issue(g)) => panic!("verify mode issued a token for {g:?}"),
        Decision::Deny(d) => Err((d.reason, d.token)),
    }
}

/// The verdict for a token refused with `error`.
fn rejected(reason: Reason, error: VerifyError) -> Verdict {
    Err((reason, Some(TokenCheck::Rejected(error))))
}

fn bearer(token: &str) -> Req {
    Req::default().header("authorization", &format!("Bearer {token}"))
}

#[test]
fn hostile_tokens_are_denied_with_the_right_reason() {
    let fixture = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let registry = fixture.load();
    let now = unix_now();
    let secret = common::SECRET.as_bytes();
    let good = forge_hs256(HEADER, &claims(now, |_| {}), secret);
    assert_eq!(
        verdict(&registry, bearer(&good), now),
        Ok(()),
        "control: the untampered token verifies"
    );

    let parts: Vec<&str> = good.split('.').collect();
    let invalid = |e| rejected(Reason::InvalidToken, e);
    let cases: Vec<(&str, String, Verdict)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"test-1"}"#),
                parts[1]
            ),
            invalid(VerifyError::BadHeader),
        ),
        (
            "alg HS512",
            forge_hs256(
                r#"{"alg":"HS512","kid":"test-1"}"#,
                &claims(now, |_| {}),
                secret,
            ),
            invalid(VerifyError::BadHeader),
        ),
        (
            "alg RS256",
            forge_hs256(
                r#"{"alg":"RS256","kid":"test-1"}"#,
                &claims(now, |_| {}),
                secret,
            ),
            invalid(VerifyError::BadHeader),
        ),
        (
            "missing kid",
            forge_hs256(r#"{"alg":"HS256"}"#, &claims(now, |_| {}), secret),
            invalid(VerifyError::BadHeader),
        ),
        (
            "unknown kid",
            forge_hs256(
                r#"{"alg":"HS256","kid":"nope"}"#,
                &claims(now, |_| {}),
                secret,
            ),
            invalid(VerifyError::UnknownKid),
        ),
        (
            "kid with path characters",
            forge_hs256(
                r#"{"alg":"HS256","kid":"../secrets/jwt.key"}"#,
                &claims(now, |_| {}),
                secret,
            ),
            invalid(VerifyError::UnknownKid),
        ),
        (
            "crit header",
            forge_hs256(
                r#"{"alg":"HS256","kid":"test-1","crit":["x"]}"#,
                &claims(now, |_| {}),
                secret,
            ),
            invalid(VerifyError::BadHeader),
        ),
        (
            "jwk header",
            forge_hs256(
                r#"{"alg":"HS256","kid":"test-1","jwk":{}}"#,
                &claims(now, |_| {}),
                secret,
            ),
            invalid(VerifyError::BadHeader),
        ),
        (
            "x5u header",
            forge_hs256(
                r#"{"alg":"HS256","kid":"test-1","x5u":"https://x"}"#,
                &claims(now, |_| {}),
                secret,
            ),
            invalid(VerifyError::BadHeader),
        ),
        (
            "tampered payload",
            format!(
                "{}.{}.{}",
                parts[0],
                URL_SAFE_NO_PAD.encode(claims(now, |c| c["sub"] = "admin".into())),
                parts[2]
            ),
            invalid(VerifyError::BadSignature),
        ),
        (
            "tampered signature",
            format!(
                "{}.{}.{}",
                parts[0],
                parts[1],
                URL_SAFE_NO_PAD.encode([0u8; 32])
            ),
            invalid(VerifyError::BadSignature),
        ),
        (
            "truncated token",
            format!("{}.{}", parts[0], parts[1]),
            invalid(VerifyError::Malformed),
        ),
        (
            "extra segments",
            format!("{good}.{}", parts[2]),
            invalid(VerifyError::Malformed),
        ),
        (
            "non-base64url characters",
            format!(
                "{}.{}.{}",
                parts[0],
                parts[1].replacen('e', "*", 1),
                parts[2]
            ),
            invalid(VerifyError::Malformed),
        ),
        (
            "expired",
            forge_hs256(
                HEADER,
                &claims(now, |c| {
                    c["iat"] = (now - 700).into();
                    c["nbf"] = (now - 700).into();
                    c["exp"] = (now - 31).into();
                }),
                secret,
            ),
            rejected(Reason::ExpiredToken, VerifyError::Expired),
        ),
        (
            "nbf beyond leeway",
            forge_hs256(
                HEADER,
                &claims(now, |c| c["nbf"] = (now + 31).into()),
                secret,
            ),
            invalid(VerifyError::NotYetValid),
        ),
        (
            "wrong iss",
            forge_hs256(
                HEADER,
                &claims(now, |c| c["iss"] = "https://evil".into()),
                secret,
            ),
            invalid(VerifyError::BadClaims),
        ),
        (
            "wrong aud",
            forge_hs256(
                HEADER,
                &claims(now, |c| c["aud"] = "billing".into()),
                secret,
            ),
            invalid(VerifyError::BadClaims),
        ),
        (
            "missing sub",
            forge_hs256(
                HEADER,
                &claims(now, |c| {
                    c.as_object_mut().unwrap().remove("sub");
                }),
                secret,
            ),
            invalid(VerifyError::BadClaims),
        ),
        (
            "exp as a string",
            forge_hs256(
                HEADER,
                &claims(now, |c| c["exp"] = (now + 300).to_string().into()),
                secret,
            ),
            invalid(VerifyError::BadClaims),
        ),
        (
            "1 MB token",
            "e".repeat(1024 * 1024),
            invalid(VerifyError::Malformed),
        ),
        (
            "signed with another secret",
            forge_hs256(
                HEADER,
                &claims(now, |_| {}),
                b"another-secret-0123456789abcdef-0123",
            ),
            invalid(VerifyError::BadSignature),
        ),
    ];
    for (name, token, want) in cases {
        assert_eq!(verdict(&registry, bearer(&token), now), want, "{name}");
    }
}

#[test]
fn leeway_boundary_is_exact() {
    let fixture = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let registry = fixture.load();
    let now = unix_now();
    let token = forge_hs256(HEADER, &claims(now, |_| {}), common::SECRET.as_bytes());
    // exp = now + 300, leeway 30 s: valid until (exclusive) now + 330.
    assert_eq!(verdict(&registry, bearer(&token), now + 329), Ok(()));
    assert_eq!(
        verdict(&registry, bearer(&token), now + 330),
        rejected(Reason::ExpiredToken, VerifyError::Expired)
    );
    // nbf = now: valid from now - 30.
    assert_eq!(verdict(&registry, bearer(&token), now - 30), Ok(()));
    assert_eq!(
        verdict(&registry, bearer(&token), now - 31),
        rejected(Reason::InvalidToken, VerifyError::NotYetValid)
    );
}

#[test]
fn a_removed_key_stops_verifying() {
    let fixture = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let now = unix_now();
    let token = forge_hs256(HEADER, &claims(now, |_| {}), common::SECRET.as_bytes());
    fixture.write_file("secrets/new.key", "new-signing-secret-0123456789abcdef0123");
    let mut file = fixture.registry_file(&[Svc::new("a", A_URI, A_KEY)]);
    file.token.keys = vec![KeyEntry {
        kid: "test-2".into(),
        secret_file: Some("secrets/new.key".into()),
        ..Default::default()
    }];
    fixture.write(&file);
    let registry = fixture.load();
    assert_eq!(
        verdict(&registry, bearer(&token), now),
        rejected(Reason::InvalidToken, VerifyError::UnknownKid)
    );
}

#[test]
fn certificate_binding_and_header_conflicts() {
    let fixture = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let registry = fixture.load();
    let ca = Ca::new("verify CA");
    let now = unix_now();
    let cert = ca.client(&ClientSpec::uri(A_URI));
    let other = ca.client(&ClientSpec::uri(A_URI));
    use sha2::Digest;
    let thumb = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&cert.der));
    let bound = forge_hs256(
        HEADER,
        &claims(now, |c| c["cnf"] = serde_json::json!({"x5t#S256": thumb})),
        common::SECRET.as_bytes(),
    );

    assert_eq!(
        verdict(
            &registry,
            Req::cert(cert.forwarded()).header("x-service-jwt", &bound),
            now
        ),
        Ok(())
    );
    assert_eq!(
        verdict(
            &registry,
            Req::cert(other.forwarded()).header("x-service-jwt", &bound),
            now
        ),
        Err((Reason::InvalidToken, Some(TokenCheck::Unbound))),
        "a cert-bound token presented with another certificate"
    );
    let unbound = forge_hs256(HEADER, &claims(now, |_| {}), common::SECRET.as_bytes());
    assert_eq!(
        verdict(
            &registry,
            Req::default()
                .header("x-service-jwt", &unbound)
                .header("authorization", &format!("Bearer {bound}")),
            now
        ),
        rejected(Reason::InvalidToken, VerifyError::Malformed),
        "the same header pair with different tokens"
    );
    assert_eq!(
        verdict(
            &registry,
            Req::default()
                .header("x-service-jwt", &unbound)
                .header("authorization", &format!("Bearer {unbound}")),
            now
        ),
        Ok(()),
        "the same token in both places is one token"
    );
    assert_eq!(
        verdict(
            &registry,
            Req::default().header("authorization", &format!("Basic {unbound}")),
            now
        ),
        rejected(Reason::InvalidToken, VerifyError::Malformed)
    );
}
