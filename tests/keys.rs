//! Asymmetric mesh tokens: EdDSA and ES256 beside HS256, checked by an
//! independent JOSE library (PyJWT over pyca/cryptography, `common/jose.py`)
//! against the JWKS served over HTTP; algorithm confusion through
//! `token::verify` and verify mode; verify-only public keys; the key
//! schedule (`not_before`, `not_after`) at the second, without a reload; a
//! rotation HS256 -> EdDSA -> EdDSA under load; the admin listener and its
//! limits; and the `gen-signing-key` and `jwks` commands.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::procs::poll;
use common::{Ca, ClientSpec, Fixture, InProcess, Req, SECRET, Svc, tcp0, unix_now};
use envoy_types::ext_authz::v3::pb::{CheckResponse, HttpResponse};
use service_auth::check::{Decision, Grant, Reason, TokenCheck};
use service_auth::config::{Admin, KeyEntry, ListenAddr, RegistryFile, StaticConfig};
use service_auth::keys::{Algorithm, Found, Key, KeyError, KeySource, generate};
use service_auth::registry::{LoadError, Problem, Registry, Warning};
use service_auth::telemetry::credentials::{Expiry, expiries};
use service_auth::testkit::{claims_json, decide, forge_hs256};
use service_auth::token::{self, KeySetError, Subject, VerifyError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const A_URI: &str = "spiffe://mesh.test/ns/default/sa/a";
const A_KEY: &str = "key-of-service-a-0123456789";
/// The fixture's HS256 key.
const HS_KID: &str = "test-1";
const WAIT: Duration = Duration::from_secs(20);

fn fixture() -> Fixture {
    Fixture::new(&[Svc::new("a", A_URI, A_KEY)])
}

/// A new key pair: the private PKCS#8 PEM and its public SPKI PEM.
fn key_pair(algorithm: Algorithm) -> (String, String) {
    let private = generate(algorithm).unwrap().to_string();
    let public = Key::load(
        "pair",
        algorithm,
        KeySource::PrivateKeyPem(private.as_bytes()),
    )
    .unwrap()
    .public_key_pem()
    .unwrap();
    (private, public)
}

/// An entry signing with a private key written to `keys/<kid>.pem`.
fn private_entry(fixture: &Fixture, kid: &str, algorithm: Algorithm, pem: &str) -> KeyEntry {
    fixture.write_file(&format!("keys/{kid}.pem"), pem);
    KeyEntry {
        kid: kid.into(),
        algorithm,
        private_key_file: Some(format!("keys/{kid}.pem").into()),
        ..Default::default()
    }
}

/// A verify-only entry holding only a public key, at `keys/<kid>.pub`.
fn public_entry(fixture: &Fixture, kid: &str, algorithm: Algorithm, pem: &str) -> KeyEntry {
    fixture.write_file(&format!("keys/{kid}.pub"), pem);
    KeyEntry {
        kid: kid.into(),
        algorithm,
        public_key_file: Some(format!("keys/{kid}.pub").into()),
        verify_only: true,
        ..Default::default()
    }
}

/// The fixture's HS256 entry (`secrets/jwt.key`, kid `test-1`).
fn hs_entry() -> KeyEntry {
    common::registry_file(&[]).token.keys.remove(0)
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn with_keys(fixture: &Fixture, keys: Vec<KeyEntry>) -> RegistryFile {
    let mut file = fixture.registry_file(&[Svc::new("a", A_URI, A_KEY)]);
    file.token.keys = keys;
    file
}

fn load(fixture: &Fixture, file: &RegistryFile) -> Result<Registry, Vec<LoadError>> {
    fixture.write(file);
    Registry::load(&fixture.registry_path())
}

/// A static config with the admin listener on a kernel-chosen loopback port.
fn admin_config(fixture: &Fixture, admin: Admin) -> StaticConfig {
    let mut config = fixture.static_config(tcp0());
    config.admin = Some(Admin {
        listen: tcp0(),
        ..admin
    });
    config
}

fn admin_url(sidecar: &service_auth::Sidecar, path: &str) -> String {
    match sidecar.admin_addr() {
        Some(ListenAddr::Tcp(addr)) => format!("http://{addr}{path}"),
        other => panic!("no TCP admin listener: {other:?}"),
    }
}

async fn get_jwks(url: &str) -> serde_json::Value {
    let response = reqwest::get(url).await.expect("GET the JWKS");
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["cache-control"], "max-age=60");
    response.json().await.expect("a JSON JWKS")
}

fn jwks_kids(jwks: &serde_json::Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .expect("keys array")
        .iter()
        .map(|k| k["kid"].as_str().expect("string kid").to_owned())
        .collect()
}

/// The token an OK response injects.
fn token_of(response: &CheckResponse) -> Option<String> {
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == "x-service-jwt")
            .map(|h| h.value.clone()),
        _ => None,
    }
}

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

/// A compact JWS with any header, signed by `key`'s own algorithm.
fn signed(header: serde_json::Value, claims: &str, key: &Key) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn subject() -> Subject<'static> {
    Subject {
        service: "a",
        principal: A_URI,
        scope: "read write".into(),
        certificate_sha256: None,
    }
}

/// Allowed, or the denial's reason and what happened to the token.
type Verdict = Result<(), (Reason, Option<TokenCheck>)>;

fn verify_mode(registry: &Registry, token: &str, now: i64) -> Verdict {
    let req = Req::default()
        .header("authorization", &format!("Bearer {token}"))
        .ext("mode", "verify");
    match decide(&req.build(), registry, now) {
        Decision::Allow(Grant::Verify(_)) => Ok(()),
        Decision::Allow(Grant::Issue(g)) => panic!("verify mode issued a token for {g:?}"),
        Decision::Deny(d) => Err((d.reason, d.token)),
    }
}

fn refused(error: VerifyError) -> Verdict {
    Err((Reason::InvalidToken, Some(TokenCheck::Rejected(error))))
}

/// Runs `common/jose.py` with `args`, feeding `stdin`; fails clearly when
/// python3 lacks PyJWT or cryptography.
fn jose(args: &[&str], stdin: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/jose.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be on PATH for the JOSE cross-checks");
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(3),
        "python3 cannot import PyJWT with cryptography; install them: pip install pyjwt cryptography\n{stderr}"
    );
    assert!(out.status.success(), "jose.py {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_algorithm_verifies_with_pyjwt_against_the_served_jwks() {
    let ca = Ca::new("keys test CA");
    let cert = ca.client(&ClientSpec::uri(A_URI));
    let mut sidecars = Vec::new();
    let mut cases = Vec::new();
    for algorithm in Algorithm::ALL {
        let fixture = fixture();
        if algorithm != Algorithm::Hs256 {
            let (private, _) = key_pair(algorithm);
            let kid = format!("{algorithm}-kid");
            let mut old = hs_entry();
            old.verify_only = true;
            let file = with_keys(
                &fixture,
                vec![private_entry(&fixture, &kid, algorithm, &private), old],
            );
            fixture.write(&file);
        }
        let sidecar = InProcess::start(&admin_config(&fixture, Admin::default())).await;
        let response = sidecar
            .client()
            .await
            .check(Req::cert(cert.forwarded()).key(A_KEY).build())
            .await
            .unwrap()
            .into_inner();
        let token = token_of(&response).expect("an allowed Check with a token");
        let header: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], algorithm.as_str());
        assert_eq!(header["typ"], "JWT");

        let url = admin_url(&sidecar.sidecar, "/.well-known/jwks.json");
        let jwks = get_jwks(&url).await;
        let published = jwks["keys"].as_array().unwrap();
        if algorithm == Algorithm::Hs256 {
            // The HS256 signing key and the old HS256 key: never published.
            assert!(published.is_empty(), "{jwks}");
            cases.push(serde_json::json!({"token": token, "alg": "HS256", "secret": SECRET}));
        } else {
            assert_eq!(published.len(), 1, "{jwks}");
            let jwk = published[0].as_object().unwrap();
            let mut members: Vec<&str> = jwk.keys().map(String::as_str).collect();
            members.sort_unstable();
            let (kty, crv, expected): (&str, &str, &[&str]) = match algorithm {
                Algorithm::EdDsa => ("OKP", "Ed25519", &["alg", "crv", "kid", "kty", "use", "x"]),
                _ => (
                    "EC",
                    "P-256",
                    &["alg", "crv", "kid", "kty", "use", "x", "y"],
                ),
            };
            assert_eq!(members, expected, "public members only: {jwks}");
            assert_eq!(jwk["kty"], kty);
            assert_eq!(jwk["crv"], crv);
            assert_eq!(jwk["alg"], algorithm.as_str());
            assert_eq!(jwk["use"], "sig");
            assert_eq!(jwk["kid"], format!("{algorithm}-kid"));
            cases.push(
                serde_json::json!({"token": token, "alg": algorithm.as_str(), "jwks_url": url}),
            );
        }
        sidecars.push((fixture, sidecar));
    }
    let spec = serde_json::json!({
        "issuer": common::ISSUER, "audience": common::AUDIENCE, "cases": cases,
    });
    let results = tokio::task::spawn_blocking(move || jose(&["check"], &spec.to_string()))
        .await
        .unwrap();
    let results: Vec<serde_json::Value> = serde_json::from_str(&results).unwrap();
    assert_eq!(results.len(), 3);
    for (algorithm, result) in Algorithm::ALL.iter().zip(&results) {
        assert_eq!(result["ok"], true, "{algorithm}: {result}");
        assert_eq!(result["sub"], "a");
    }
    for (_, sidecar) in sidecars {
        sidecar.sidecar.shutdown().await.unwrap();
    }
}

#[test]
fn a_token_must_carry_exactly_its_kids_algorithm() {
    let fixture = fixture();
    let (ed_private, ed_public) = key_pair(Algorithm::EdDsa);
    let (ec_private, ec_public) = key_pair(Algorithm::Es256);
    let file = with_keys(
        &fixture,
        vec![
            hs_entry(),
            private_entry(&fixture, "ed", Algorithm::EdDsa, &ed_private),
            private_entry(&fixture, "ec", Algorithm::Es256, &ec_private),
        ],
    );
    let registry = load(&fixture, &file).unwrap();
    // One signer per algorithm, each the very key registered under its kid.
    let signer = |algorithm: Algorithm| match algorithm {
        Algorithm::Hs256 => {
            Key::load(HS_KID, algorithm, KeySource::Secret(SECRET.as_bytes())).unwrap()
        }
        Algorithm::EdDsa => Key::load(
            "ed",
            algorithm,
            KeySource::PrivateKeyPem(ed_private.as_bytes()),
        )
        .unwrap(),
        Algorithm::Es256 => Key::load(
            "ec",
            algorithm,
            KeySource::PrivateKeyPem(ec_private.as_bytes()),
        )
        .unwrap(),
    };
    let now = unix_now();
    let claims = claims_json("a", now, |_| {});
    let kids = [
        (HS_KID, Algorithm::Hs256),
        ("ed", Algorithm::EdDsa),
        ("ec", Algorithm::Es256),
    ];
    for (kid, own) in kids {
        for algorithm in Algorithm::ALL {
            let header = serde_json::json!({"alg": algorithm.as_str(), "typ": "JWT", "kid": kid});
            let token = signed(header, &claims, &signer(algorithm));
            let case = format!("a {algorithm} token naming {own} kid {kid:?}");
            if algorithm == own {
                assert_eq!(
                    token::verify(&registry.token, &token, now).unwrap().kid,
                    kid,
                    "{case}"
                );
                assert_eq!(verify_mode(&registry, &token, now), Ok(()), "{case}");
            } else {
                assert_eq!(
                    token::verify(&registry.token, &token, now).unwrap_err(),
                    VerifyError::BadHeader,
                    "{case}"
                );
                assert_eq!(
                    verify_mode(&registry, &token, now),
                    refused(VerifyError::BadHeader),
                    "{case}"
                );
            }
        }
        // Spellings that are not the key's algorithm, however close.
        let spellings = match own {
            Algorithm::Hs256 => vec!["hs256", "HS256 ", "HS512", "none"],
            Algorithm::EdDsa => vec!["EDDSA", "Ed25519", "eddsa", "none"],
            Algorithm::Es256 => vec!["es256", "ES384", "ES256K", "none"],
        };
        for alg in spellings {
            let header = serde_json::json!({"alg": alg, "typ": "JWT", "kid": kid});
            let token = signed(header, &claims, &signer(own));
            assert_eq!(
                token::verify(&registry.token, &token, now).unwrap_err(),
                VerifyError::BadHeader,
                "alg {alg:?} naming kid {kid:?}"
            );
        }
    }

    // The classic confusion: HMAC "signed" with the public key, in every
    // form a verifier might hand to HMAC, naming the asymmetric kid.
    for (kid, public_pem, jwk) in [
        ("ed", &ed_public, signer(Algorithm::EdDsa).jwk().unwrap()),
        ("ec", &ec_public, signer(Algorithm::Es256).jwk().unwrap()),
    ] {
        let der = pem_der(public_pem);
        let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
        let secrets: Vec<(&str, Vec<u8>)> = vec![
            ("SPKI PEM", public_pem.as_bytes().to_vec()),
            ("SPKI DER", der),
            ("raw x", x),
            ("JWK JSON", jwk.to_string().into_bytes()),
            ("JWK x text", jwk["x"].as_str().unwrap().as_bytes().to_vec()),
        ];
        for (form, secret) in secrets {
            let header = format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#);
            let token = forge_hs256(&header, &claims, &secret);
            assert_eq!(
                token::verify(&registry.token, &token, now).unwrap_err(),
                VerifyError::BadHeader,
                "HS256 over the {form} of {kid}"
            );
            assert_eq!(
                verify_mode(&registry, &token, now),
                refused(VerifyError::BadHeader),
                "HS256 over the {form} of {kid}"
            );
        }
    }

    // And a registry refuses a public key given as an HS256 secret.
    for (contents, problem) in [
        (ed_public.clone().into_bytes(), KeyError::SecretIsPem),
        (
            pem_der(&ed_public),
            KeyError::SecretIsKey(Found::Ed25519 { private: false }),
        ),
    ] {
        fixture.write_file("secrets/public-as-secret.key", &contents);
        let entry = KeyEntry {
            kid: "confused".into(),
            secret_file: Some("secrets/public-as-secret.key".into()),
            ..Default::default()
        };
        let errors = load(&fixture, &with_keys(&fixture, vec![entry])).unwrap_err();
        assert!(
            matches!(
                errors.as_slice(),
                [e] if e.at() == Some("token.keys[0].secret_file")
                    && matches!(e.problem(), Some(Problem::Key(k)) if *k == problem)
            ),
            "{errors:#?}"
        );
    }
}

/// The DER inside a one-block PEM.
fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

#[test]
fn a_verifying_pod_needs_only_the_public_key() {
    // The issuing pod signs with the private key...
    let issuer = fixture();
    let (private, public) = key_pair(Algorithm::EdDsa);
    let mut hs = hs_entry();
    hs.verify_only = true;
    let issuing = with_keys(
        &issuer,
        vec![
            private_entry(&issuer, "ed-2026", Algorithm::EdDsa, &private),
            hs,
        ],
    );
    let issuing = load(&issuer, &issuing).unwrap();
    let now = unix_now();
    let issued = token::issue(&issuing.token, &subject(), now).unwrap();
    assert_eq!(issued.kid, "ed-2026");

    // ...the verifying pod holds its public half only (and its own HS256
    // key, since every registry signs for its own audience).
    let verifier = fixture();
    let file = with_keys(
        &verifier,
        vec![
            hs_entry(),
            public_entry(&verifier, "ed-2026", Algorithm::EdDsa, &public),
        ],
    );
    let verifying = load(&verifier, &file).unwrap();
    let ed = verifying
        .token
        .keys()
        .iter()
        .find(|k| k.kid() == "ed-2026")
        .unwrap();
    assert!(
        !ed.key.can_sign(),
        "no signing material for the issuer's key"
    );
    assert_eq!(
        token::verify(&verifying.token, &issued.token, now)
            .unwrap()
            .kid,
        "ed-2026"
    );
    assert_eq!(verify_mode(&verifying, &issued.token, now), Ok(()));
    assert_eq!(jwks_kids(&verifying.token.jwks(now)), ["ed-2026"]);
    // Its own tokens are signed with its own key, never the public one.
    let own = token::issue(&verifying.token, &subject(), now).unwrap();
    assert_eq!(own.kid, HS_KID);
}

#[test]
fn key_entries_are_checked_against_their_algorithm_and_schedule() {
    let f = fixture();
    let (ed_private, ed_public) = key_pair(Algorithm::EdDsa);
    let (ec_private, _) = key_pair(Algorithm::Es256);
    let now = unix_now();
    let one = |entry: KeyEntry| with_keys(&f, vec![hs_entry(), entry]);
    let only_error = |file: &RegistryFile, at: &str, is: &dyn Fn(&Problem) -> bool| {
        let errors = load(&f, file).unwrap_err();
        assert!(
            matches!(errors.as_slice(), [e] if e.at() == Some(at) && e.problem().is_some_and(is)),
            "expected one error at {at}: {errors:#?}"
        );
    };

    // A P-256 key under an EdDSA entry.
    let mut wrong = private_entry(&f, "ed", Algorithm::EdDsa, &ec_private);
    only_error(
        &one(wrong.clone()),
        "token.keys[1].private_key_file",
        &|p| {
            matches!(
                p,
                Problem::Key(KeyError::Mismatch {
                    found: Found::P256 { private: true },
                    algorithm: Algorithm::EdDsa
                })
            )
        },
    );
    // A signing entry with only a public key.
    let mut public_only = public_entry(&f, "ed", Algorithm::EdDsa, &ed_public);
    public_only.verify_only = false;
    only_error(
        &one(public_only),
        "token.keys[1].public_key_file",
        &|p| matches!(p, Problem::KeySet(KeySetError::CannotSign(kid)) if kid == "ed"),
    );
    // A private key where the public one belongs.
    let leaked = public_entry(&f, "ed", Algorithm::EdDsa, &ed_private);
    only_error(&one(leaked), "token.keys[1].public_key_file", &|p| {
        matches!(p, Problem::Key(KeyError::PrivateKeyAsPublic))
    });
    // An asymmetric entry with a secret, an HS256 entry with a PEM file.
    wrong.private_key_file = None;
    wrong.secret_file = Some("secrets/jwt.key".into());
    only_error(&one(wrong), "token.keys[1]", &|p| {
        matches!(
            p,
            Problem::KeySource {
                algorithm: Algorithm::EdDsa
            }
        )
    });
    let mut hs_with_pem = hs_entry();
    hs_with_pem.private_key_file = Some("keys/ed.pem".into());
    only_error(&with_keys(&f, vec![hs_with_pem]), "token.keys[0]", &|p| {
        matches!(
            p,
            Problem::KeySource {
                algorithm: Algorithm::Hs256
            }
        )
    });
    // Times are RFC 3339.
    let mut bad_time = private_entry(&f, "ed", Algorithm::EdDsa, &ed_private);
    bad_time.not_before = Some("tomorrow".into());
    only_error(
        &one(bad_time),
        "token.keys[1].not_before",
        &|p| matches!(p, Problem::InvalidTime(t) if t == "tomorrow"),
    );
    // No key may sign yet: refused, not left to fail every Check.
    let mut early = private_entry(&f, "ed", Algorithm::EdDsa, &ed_private);
    early.not_before = Some(rfc3339(now + 3600));
    only_error(&with_keys(&f, vec![early.clone()]), "token.keys", &|p| {
        matches!(p, Problem::KeySet(KeySetError::NoSigningKeyNow))
    });

    // A key past its not_after loads, with a warning; it verifies nothing.
    let mut retired = hs_entry();
    retired.kid = "retired".into();
    retired.verify_only = true;
    retired.not_after = Some(rfc3339(now - 60));
    let registry = load(&f, &one(retired)).unwrap();
    assert_eq!(
        registry.warnings(),
        [Warning::KeyRetired {
            at: "token.keys[1]".into(),
            kid: "retired".into()
        }]
    );
    let old = forge_hs256(
        r#"{"alg":"HS256","typ":"JWT","kid":"retired"}"#,
        &claims_json("a", now, |_| {}),
        SECRET.as_bytes(),
    );
    assert_eq!(
        token::verify(&registry.token, &old, now).unwrap_err(),
        VerifyError::RetiredKey
    );
    // A schedule that ends: the only signer retires in an hour.
    let mut ending = hs_entry();
    ending.not_after = Some(rfc3339(now + 3600));
    let registry = load(&f, &with_keys(&f, vec![ending])).unwrap();
    // ttl 300 s: it signs its last token 300 s before its not_after.
    assert_eq!(
        registry.warnings(),
        [Warning::SigningEnds {
            at: rfc3339(now + 3600 - 300 + 1)
        }]
    );
    assert_eq!(
        expiries(&registry),
        [Expiry {
            kind: "signing_key",
            service: "token".into(),
            id: HS_KID.into(),
            not_after: now + 3600,
        }]
    );
}

#[test]
fn the_schedule_picks_the_signer_and_retires_keys_at_the_second() {
    let f = fixture();
    let (private, _) = key_pair(Algorithm::EdDsa);
    let now = unix_now();
    let activates = now + 600;
    let retires = now + 900;
    let mut ed = private_entry(&f, "ed", Algorithm::EdDsa, &private);
    ed.not_before = Some(rfc3339(activates));
    let mut hs = hs_entry();
    hs.not_after = Some(rfc3339(retires));
    let registry = load(&f, &with_keys(&f, vec![ed, hs])).unwrap();
    assert_eq!(registry.warnings(), []);

    // One registry, no reload: the clock alone switches the signer.
    let before = token::issue(&registry.token, &subject(), activates - 1).unwrap();
    assert_eq!(before.kid, HS_KID);
    let after = token::issue(&registry.token, &subject(), activates).unwrap();
    assert_eq!(after.kid, "ed");
    // Published ahead: the JWKS lists the EdDSA key before it signs.
    assert_eq!(jwks_kids(&registry.token.jwks(now)), ["ed"]);
    // The HS256 key's last token verifies until the key retires, not after.
    assert_eq!(
        token::verify(&registry.token, &before.token, retires - 1)
            .unwrap()
            .kid,
        HS_KID
    );
    assert_eq!(
        token::verify(&registry.token, &before.token, retires).unwrap_err(),
        VerifyError::RetiredKey
    );
    assert_eq!(
        verify_mode(&registry, &before.token, retires),
        refused(VerifyError::RetiredKey)
    );
    assert!(token::verify(&registry.token, &after.token, activates).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_before_switches_the_signer_without_a_reload() {
    let f = fixture();
    let (private, _) = key_pair(Algorithm::EdDsa);
    let activates = unix_now() + 3;
    let mut ed = private_entry(&f, "ed", Algorithm::EdDsa, &private);
    ed.not_before = Some(rfc3339(activates));
    f.write(&with_keys(&f, vec![ed, hs_entry()]));
    let sidecar = InProcess::for_fixture(&f).await;
    let generation = sidecar.sidecar.snapshot().load().unwrap().generation;
    let cert = Ca::new("keys test CA").client(&ClientSpec::uri(A_URI));
    let client = sidecar.client().await;
    let check = || {
        let mut client = client.clone();
        let req = Req::cert(cert.forwarded()).key(A_KEY).build();
        async move { token_of(&client.check(req).await.unwrap().into_inner()) }
    };
    let first = check().await.expect("allowed");
    assert!(
        unix_now() < activates,
        "the machine was too slow to see the key before it activates"
    );
    assert_eq!(kid_of(&first), HS_KID);
    let switched = poll("tokens signed by the EdDSA key", WAIT, || {
        let next = check();
        async move { next.await.filter(|t| kid_of(t) == "ed") }
    })
    .await;
    assert!(unix_now() >= activates);
    assert_eq!(kid_of(&switched), "ed");
    assert_eq!(
        sidecar.sidecar.snapshot().load().unwrap().generation,
        generation,
        "no reload happened"
    );
    sidecar.sidecar.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_keys_tokens_are_refused_after_its_not_after() {
    // Another pod signed with the EdDSA key before it was retired.
    let (private, public) = key_pair(Algorithm::EdDsa);
    let issuer = fixture();
    let mut hs = hs_entry();
    hs.verify_only = true;
    let issuing = with_keys(
        &issuer,
        vec![
            private_entry(&issuer, "old", Algorithm::EdDsa, &private),
            hs,
        ],
    );
    let issuing = load(&issuer, &issuing).unwrap();
    let token = token::issue(&issuing.token, &subject(), unix_now())
        .unwrap()
        .token;

    let f = fixture();
    let retires = unix_now() + 2;
    let mut old = public_entry(&f, "old", Algorithm::EdDsa, &public);
    old.not_after = Some(rfc3339(retires));
    f.write(&with_keys(&f, vec![hs_entry(), old]));
    let sidecar = InProcess::start(&admin_config(&f, Admin::default())).await;
    let url = admin_url(&sidecar.sidecar, "/.well-known/jwks.json");
    let client = sidecar.client().await;
    let verify = || {
        let mut client = client.clone();
        let req = Req::default()
            .header("x-service-jwt", &token)
            .ext("mode", "verify")
            .build();
        async move { client.check(req).await.unwrap().into_inner() }
    };
    assert_eq!(verify().await.status.unwrap().code, 0, "accepted before");
    assert_eq!(jwks_kids(&get_jwks(&url).await), ["old"]);
    let refused = poll("the retired key's token to be refused", WAIT, || {
        let response = verify();
        async move { Some(response.await).filter(|r| r.status.as_ref().unwrap().code != 0) }
    })
    .await;
    assert!(unix_now() >= retires);
    assert_eq!(refused.status.unwrap().code, 16, "unauthenticated");
    assert_eq!(jwks_kids(&get_jwks(&url).await), Vec::<String>::new());
    sidecar.sidecar.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_serves_probes_and_is_bounded() {
    let f = fixture();
    let limits = Admin {
        max_connections: 2,
        header_timeout: Duration::from_secs(1),
        ..Admin::default()
    };
    let sidecar = InProcess::start(&admin_config(&f, limits)).await;
    let Some(ListenAddr::Tcp(addr)) = sidecar.sidecar.admin_addr().cloned() else {
        panic!("admin listener on TCP");
    };
    for (path, status) in [
        ("/healthz", 200),
        ("/readyz", 200),
        ("/.well-known/jwks.json", 200),
        ("/metrics", 404),
    ] {
        let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        assert_eq!(response.status(), status, "{path}");
    }
    let post = reqwest::Client::new()
        .post(format!("http://{addr}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);

    // A client that never finishes its header is cut off...
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // ...and so is one that sends nothing; both hold the two slots.
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A third client waits for a slot: it is answered only once the server
    // has closed one of the two.
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, third.read_to_end(&mut answer))
        .await
        .expect("the third client is served once a slot frees")
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    // A direct peek at the socket, not tokio's readiness cache (which only
    // learns of the close when its reactor next turns): the server closed
    // one of the two before it served the third, so its end is visible now.
    let closed = |stream: tokio::net::TcpStream| {
        let stream = stream.into_std().unwrap();
        let mut buf = [0u8; 256];
        let closed =
            !matches!(stream.peek(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        (closed, tokio::net::TcpStream::from_std(stream).unwrap())
    };
    let (slow_closed, mut slow) = closed(slow);
    let (silent_closed, _silent) = closed(silent);
    assert!(
        slow_closed || silent_closed,
        "the third client got in while both slots were held"
    );
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(WAIT, slow.read_to_end(&mut rest))
        .await
        .expect("a header that never ends is cut off");
    assert!(
        cut.is_err() || !rest.starts_with(b"HTTP/1.1 200"),
        "{rest:?}"
    );
    sidecar.sidecar.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_a_registry() {
    let f = fixture();
    f.write_text("token: [not a registry\n");
    let mut sidecar = service_auth::Sidecar::start(&admin_config(&f, Admin::default()))
        .await
        .unwrap();
    assert!(sidecar.ready().await.is_err());
    let get = |path| reqwest::get(admin_url(&sidecar, path));
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 503);
    assert_eq!(get("/.well-known/jwks.json").await.unwrap().status(), 503);
    sidecar.shutdown().await.unwrap();
}

fn run_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_service-auth"))
        .args(args)
        .env_remove("SERVICE_AUTH_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn gen_signing_key_output_loads() {
    for algorithm in [Algorithm::EdDsa, Algorithm::Es256] {
        let out = run_cli(&["gen-signing-key", "--alg", algorithm.as_str()]);
        assert!(out.status.success(), "{out:?}");
        let key = Key::load("k", algorithm, KeySource::PrivateKeyPem(&out.stdout)).unwrap();
        assert!(key.can_sign());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.pem");
        let path_arg = path.to_str().unwrap();
        let out = run_cli(&[
            "gen-signing-key",
            "--alg",
            algorithm.as_str(),
            "--out",
            path_arg,
        ]);
        assert!(out.status.success(), "{out:?}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let written = std::fs::read(&path).unwrap();
        let private = Key::load("k", algorithm, KeySource::PrivateKeyPem(&written)).unwrap();
        // stdout holds the matching public key, for a verify-only pod.
        let public = Key::load("k", algorithm, KeySource::PublicKeyPem(&out.stdout)).unwrap();
        assert_eq!(private.jwk(), public.jwk());

        // An existing file is never replaced.
        let again = run_cli(&[
            "gen-signing-key",
            "--alg",
            algorithm.as_str(),
            "--out",
            path_arg,
        ]);
        assert!(!again.status.success());
        assert_eq!(std::fs::read(&path).unwrap(), written);
    }
    let hs = run_cli(&["gen-signing-key", "--alg", "HS256"]);
    assert!(!hs.status.success());
    assert!(String::from_utf8_lossy(&hs.stderr).contains("gen-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_command_prints_what_the_admin_listener_serves() {
    let f = fixture();
    let (ed, _) = key_pair(Algorithm::EdDsa);
    let (ec, _) = key_pair(Algorithm::Es256);
    let mut retired = hs_entry();
    retired.kid = "retired".into();
    retired.verify_only = true;
    retired.not_after = Some(rfc3339(unix_now() - 60));
    f.write(&with_keys(
        &f,
        vec![
            hs_entry(),
            private_entry(&f, "ed", Algorithm::EdDsa, &ed),
            private_entry(&f, "ec", Algorithm::Es256, &ec),
            retired,
        ],
    ));
    let config = admin_config(&f, Admin::default());
    let config_path = f.write_config(&config);
    let out = run_cli(&["jwks", "--config", config_path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    // stdout is the JWKS alone; the warning goes to stderr.
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("retired"));
    let sidecar = InProcess::start(&config).await;
    let served = get_jwks(&admin_url(&sidecar.sidecar, "/.well-known/jwks.json")).await;
    assert_eq!(printed, served);
    assert_eq!(jwks_kids(&served), ["ed", "ec"]);
    sidecar.sidecar.shutdown().await.unwrap();
}

/// The rotation order of the kids, for checking each caller sees it in order.
const ROTATION: [&str; 3] = [HS_KID, "ed-1", "ed-2"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_from_hs256_to_eddsa_to_eddsa_under_load() {
    const CALLERS: usize = 4;
    /// How often the downstream refetches the JWKS (it never does on an
    /// unknown kid): a key must be published at least this long before it
    /// signs.
    const JWKS_REFRESH: &str = "1";
    /// How long before a new key signs that it is published.
    const LEAD: i64 = 3;

    let f = fixture();
    let sidecar = InProcess::start(&admin_config(&f, Admin::default())).await;
    let jwks_url = admin_url(&sidecar.sidecar, "/.well-known/jwks.json");
    let cert = Ca::new("keys test CA").client(&ClientSpec::uri(A_URI));

    // The downstream: PyJWT with the JWKS (over HTTP) and the HS256 secret,
    // verifying each token before the next is handed over.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/jose.py");
    let hs_secret = format!("{HS_KID}={SECRET}");
    let mut downstream = Command::new("python3")
        .args([script, "stream", &jwks_url, JWKS_REFRESH, common::ISSUER])
        .args([common::AUDIENCE, &hs_secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be on PATH for the downstream verifier");
    let verified = Arc::new(AtomicUsize::new(0));
    let (tokens, mut to_verify) = tokio::sync::mpsc::channel::<String>(1);
    let counter = verified.clone();
    let verifier = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, Write};
        let mut input = downstream.stdin.take().unwrap();
        let mut answers = std::io::BufReader::new(downstream.stdout.take().unwrap());
        let mut kids: HashMap<String, usize> = HashMap::new();
        let mut refused = Vec::new();
        while let Some(token) = to_verify.blocking_recv() {
            let mut answer = String::new();
            let answered = writeln!(input, "{token}")
                .and_then(|()| input.flush())
                .and_then(|()| answers.read_line(&mut answer));
            match (answered, answer.trim_end().split_once(' ')) {
                (Ok(_), Some(("ok", kid))) => *kids.entry(kid.to_owned()).or_default() += 1,
                (Ok(n), _) if n > 0 => refused.push(format!("{}: {answer}", kid_of(&token))),
                _ => break,
            }
            counter.fetch_add(1, Ordering::Relaxed);
        }
        drop(input);
        let out = downstream.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_ne!(
            out.status.code(),
            Some(3),
            "python3 cannot import PyJWT with cryptography; install them: pip install pyjwt cryptography\n{stderr}"
        );
        assert!(out.status.success(), "downstream verifier failed: {stderr}");
        (kids, refused)
    });

    let stop = Arc::new(AtomicUsize::new(0));
    let latest = Arc::new(AtomicUsize::new(0));
    let checks = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let mut client = sidecar.client().await;
        let req = Req::cert(cert.forwarded()).key(A_KEY).build();
        let (stop, latest, checks, tokens) =
            (stop.clone(), latest.clone(), checks.clone(), tokens.clone());
        callers.push(tokio::spawn(async move {
            let mut seen: Vec<usize> = Vec::new();
            let mut failed = Vec::new();
            while stop.load(Ordering::Relaxed) == 0 {
                let response = client.check(req.clone()).await.unwrap().into_inner();
                checks.fetch_add(1, Ordering::Relaxed);
                let Some(token) = token_of(&response) else {
                    failed.push(format!("{response:?}"));
                    continue;
                };
                let kid = kid_of(&token);
                let index = ROTATION.iter().position(|k| *k == kid).unwrap();
                latest.fetch_max(index, Ordering::Relaxed);
                seen.push(index);
                tokens.send(token).await.unwrap();
            }
            (seen, failed)
        }));
    }
    drop(tokens);

    let wait_for_kid = |index: usize| {
        let latest = latest.clone();
        poll("the next key to sign", WAIT, move || {
            let now = latest.load(Ordering::Relaxed);
            async move { (now >= index).then_some(()) }
        })
    };
    let wait_published = |kid: &'static str| {
        let url = jwks_url.clone();
        poll("the new key in the JWKS", WAIT, move || {
            let url = url.clone();
            async move {
                let kids = jwks_kids(&get_jwks(&url).await);
                kids.iter().any(|k| k == kid).then_some(())
            }
        })
    };

    // The downstream is up and holds a JWKS before anything changes.
    poll("the downstream to verify tokens", WAIT, || {
        let n = verified.load(Ordering::Relaxed);
        async move { (n >= 50).then_some(()) }
    })
    .await;
    let (ed1, _) = key_pair(Algorithm::EdDsa);
    let (ed2, _) = key_pair(Algorithm::EdDsa);
    // 1. Publish ed-1 ahead of its not_before; it takes over from HS256.
    let mut ed1_entry = private_entry(&f, "ed-1", Algorithm::EdDsa, &ed1);
    ed1_entry.not_before = Some(rfc3339(unix_now() + LEAD));
    f.write(&with_keys(&f, vec![ed1_entry.clone(), hs_entry()]));
    wait_published("ed-1").await;
    wait_for_kid(1).await;
    // 2. Publish ed-2 the same way; HS256 retires once its tokens expire.
    let mut ed2_entry = private_entry(&f, "ed-2", Algorithm::EdDsa, &ed2);
    ed2_entry.not_before = Some(rfc3339(unix_now() + LEAD));
    let mut hs_retiring = hs_entry();
    hs_retiring.verify_only = true;
    hs_retiring.not_after = Some(rfc3339(unix_now() + 300 + 30));
    f.write(&with_keys(&f, vec![ed2_entry, ed1_entry, hs_retiring]));
    wait_published("ed-2").await;
    wait_for_kid(2).await;
    let settled = checks.load(Ordering::Relaxed) + 100;
    poll("more Checks with ed-2", WAIT, || {
        let n = checks.load(Ordering::Relaxed);
        async move { (n >= settled).then_some(()) }
    })
    .await;
    stop.store(1, Ordering::Relaxed);

    let mut issued = 0;
    for caller in callers {
        let (seen, failed) = caller.await.unwrap();
        assert!(failed.is_empty(), "failed Checks: {failed:#?}");
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "a caller saw the keys out of rotation order: {seen:?}"
        );
        issued += seen.len();
    }
    let (kids, refused) = verifier.await.unwrap();
    assert!(
        refused.is_empty(),
        "tokens the downstream refused: {refused:#?}"
    );
    assert_eq!(
        kids.values().sum::<usize>(),
        issued,
        "every token was verified"
    );
    for kid in ROTATION {
        assert!(
            kids.get(kid).is_some_and(|n| *n > 0),
            "no token from {kid}: {kids:?}"
        );
    }
    sidecar.sidecar.shutdown().await.unwrap();
}
