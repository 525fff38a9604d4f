//! The decision as a pure function: `decide(parsed request, &Registry, now)`
//! (here through `testkit::decide`, which parses and gathers evidence
//! exactly as the server does, without its memo). Every denial reason is
//! reached here, with real certificates.

mod common;

use common::{Ca, ClientSpec, Fixture, Req, Svc, unix_now};
use rcgen::ExtendedKeyUsagePurpose;
use service_auth::check::{Decision, Grant, IssueGrant, Reason};
use service_auth::config::RevocationSection;
use service_auth::registry::Registry;
use service_auth::testkit::decide;
use service_auth::token::{self, Issued};
use time::{Duration, OffsetDateTime};

const A_URI: &str = "spiffe://mesh.test/ns/default/sa/a";
const B_URI: &str = "spiffe://mesh.test/ns/default/sa/b";
const A_KEY: &str = "key-of-service-a-0123456789";
const B_KEY: &str = "key-of-service-b-0123456789";

struct World {
    ca: Ca,
    fixture: Fixture,
    registry: Registry,
}

fn world_with(services: &[Svc], revocation: RevocationSection) -> World {
    let ca = Ca::new("decision test CA");
    let mut fixture = Fixture::new(&[]);
    fixture.revocation = revocation;
    fixture.write_registry(services);
    let registry = fixture.load();
    World {
        ca,
        fixture,
        registry,
    }
}

fn world() -> World {
    world_with(
        &[Svc::new("a", A_URI, A_KEY), Svc::new("b", B_URI, B_KEY)],
        RevocationSection::default(),
    )
}

fn reason(d: &Decision<'_>) -> Reason {
    match d {
        Decision::Deny(denial) => denial.reason,
        Decision::Allow(_) => panic!("expected a denial, got an allow for {:?}", d.service()),
    }
}

/// The issue-mode grant of an allowed decision.
fn granted<'d, 'r>(d: &'d Decision<'r>) -> &'d IssueGrant<'r> {
    match d {
        Decision::Allow(Grant::Issue(grant)) => grant,
        other => panic!("expected an issue-mode allow, got {other:?}"),
    }
}

/// The token the server signs for an allowed decision, as the step after it.
fn issued<'r>(registry: &'r Registry, d: &Decision<'_>, now: i64) -> Issued<'r> {
    token::issue(&registry.token, &granted(d).subject(), now).expect("sign the token")
}

fn assert_denied(w: &World, req: Req, want: Reason) {
    let d = decide(&req.build(), &w.registry, unix_now());
    assert_eq!(reason(&d), want);
}

fn a_cert(w: &World) -> String {
    w.ca.client(&ClientSpec::uri(A_URI)).forwarded()
}

#[test]
fn allow_issues_a_token_describing_the_caller() {
    let w = world();
    let cert = w.ca.client(&ClientSpec::uri(A_URI));
    let now = unix_now();
    let d = decide(
        &Req::cert(cert.forwarded()).key(A_KEY).build(),
        &w.registry,
        now,
    );
    assert_eq!(d.service(), Some("a"));
    assert_eq!(granted(&d).principal, A_URI);
    let token = issued(&w.registry, &d, now);
    assert_eq!(w.registry.token.header, "x-service-jwt");
    assert_eq!(w.registry.request.api_key_header, "x-api-key");
    assert!(!w.registry.request.forward_api_key);
    assert_eq!(token.kid, "test-1");
    let v = token::verify(&w.registry.token, &token.token, now).unwrap();
    assert_eq!(v.claims.sub, "a");
    assert_eq!(v.claims.aud, common::AUDIENCE);
    assert_eq!(v.claims.iss, common::ISSUER);
    assert_eq!(v.claims.principal, A_URI);
    assert_eq!(v.claims.scope, "read write");
    assert_eq!(v.claims.exp - v.claims.iat, 300);
    assert_eq!(v.claims.jti, token.jti);
    let cnf = v.claims.cnf.expect("cnf for a forwarded certificate");
    assert_eq!(
        cnf,
        token::Confirmation::for_certificate_sha256(&sha256(&cert.der))
    );
}

fn sha256(der: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(der).into()
}

#[test]
fn raw_header_map_is_read_too() {
    let w = world();
    let req = Req::cert(a_cert(&w)).raw_header("x-api-key", A_KEY.as_bytes());
    assert!(matches!(
        decide(&req.build(), &w.registry, unix_now()),
        Decision::Allow(_)
    ));
}

#[test]
fn forward_api_key_keeps_the_key_header() {
    let w = world_with(&[Svc::new("a", A_URI, A_KEY)], RevocationSection::default());
    let mut file = w.fixture.registry_file(&[Svc::new("a", A_URI, A_KEY)]);
    file.request.forward_api_key = true;
    w.fixture.write(&file);
    let registry = w.fixture.load();
    let d = decide(
        &Req::cert(a_cert(&w)).key(A_KEY).build(),
        &registry,
        unix_now(),
    );
    granted(&d);
    assert!(registry.request.forward_api_key);
}

/// `world()`, with `identity.require_certificate: false`.
fn world_accepting_principals() -> World {
    let w = world();
    let mut file = w
        .fixture
        .registry_file(&[Svc::new("a", A_URI, A_KEY), Svc::new("b", B_URI, B_KEY)]);
    file.identity.require_certificate = false;
    w.fixture.write(&file);
    World {
        registry: w.fixture.load(),
        ..w
    }
}

#[test]
fn envoys_principal_is_refused_unless_configured() {
    // The default: the certificate factor cannot drop out (a workload that
    // reaches the sidecar directly could otherwise name any principal).
    let w = world();
    assert_denied(
        &w,
        Req::principal(A_URI).key(A_KEY),
        Reason::MissingIdentity,
    );
    assert!(w.registry.require_certificate);
}

#[test]
fn principal_is_used_only_without_a_certificate() {
    let w = world_accepting_principals();
    let req = Req {
        principal: Some(A_URI.into()),
        ..Default::default()
    }
    .key(A_KEY);
    let d = decide(&req.build(), &w.registry, unix_now());
    let token = issued(&w.registry, &d, unix_now());
    let v = token::verify(&w.registry.token, &token.token, unix_now()).unwrap();
    assert_eq!(v.claims.cnf, None);
    // A forwarded certificate wins over the principal, even if the principal names a service.
    let mut req = Req::cert(w.ca.client(&ClientSpec::uri("spiffe://other")).forwarded()).key(A_KEY);
    req.principal = Some(A_URI.into());
    assert_denied(&w, req, Reason::UnknownPrincipal);
}

#[test]
fn dns_sans_match_case_insensitively_and_by_type() {
    let w = world_with(
        &[Svc::new("d", "api.mesh.test", A_KEY)],
        RevocationSection::default(),
    );
    let ok = Req::cert(w.ca.client(&ClientSpec::dns("API.Mesh.Test")).forwarded()).key(A_KEY);
    assert!(matches!(
        decide(&ok.build(), &w.registry, unix_now()),
        Decision::Allow(_)
    ));
    // The same text as a URI SAN is a different identity (SAN type confusion).
    let uri = Req::cert(w.ca.client(&ClientSpec::uri("api.mesh.test")).forwarded()).key(A_KEY);
    assert_denied(&w, uri, Reason::UnknownPrincipal);
}

#[test]
fn missing_identity() {
    let w = world();
    assert_denied(&w, Req::default().key(A_KEY), Reason::MissingIdentity);
}

#[test]
fn unknown_principal_and_cn_only_certificates() {
    let w = world();
    let other =
        w.ca.client(&ClientSpec::uri("spiffe://mesh.test/ns/x/sa/nobody"));
    assert_denied(
        &w,
        Req::cert(other.forwarded()).key(A_KEY),
        Reason::UnknownPrincipal,
    );
    // The CN names a registered principal, but the CN is never an identity.
    let cn_only = w.ca.client(&ClientSpec::empty().with_cn(A_URI));
    assert_denied(
        &w,
        Req::cert(cn_only.forwarded()).key(A_KEY),
        Reason::UnknownPrincipal,
    );
}

#[test]
fn ambiguous_principal() {
    let w = world();
    let both = w.ca.client(&ClientSpec::uri(A_URI).with_uri(B_URI));
    assert_denied(
        &w,
        Req::cert(both.forwarded()).key(A_KEY),
        Reason::AmbiguousPrincipal,
    );
}

#[test]
fn api_key_missing_invalid_repeated_or_huge() {
    let w = world();
    assert_denied(&w, Req::cert(a_cert(&w)), Reason::MissingApiKey);
    assert_denied(
        &w,
        Req::cert(a_cert(&w)).key("wrong"),
        Reason::InvalidApiKey,
    );
    // Sent twice, joined by Envoy.
    assert_denied(
        &w,
        Req::cert(a_cert(&w)).key(&format!("{A_KEY},{A_KEY}")),
        Reason::InvalidApiKey,
    );
    // Sent twice in header_map.
    let twice = Req::cert(a_cert(&w))
        .raw_header("x-api-key", A_KEY.as_bytes())
        .raw_header("x-api-key", A_KEY.as_bytes());
    assert_denied(&w, twice, Reason::InvalidApiKey);
    assert_denied(
        &w,
        Req::cert(a_cert(&w)).key(&"k".repeat(100 * 1024)),
        Reason::InvalidApiKey,
    );
    assert_denied(&w, Req::cert(a_cert(&w)).key(""), Reason::InvalidApiKey);
    assert_denied(
        &w,
        Req::cert(a_cert(&w)).raw_header("x-api-key", b"\xff\xfe"),
        Reason::InvalidApiKey,
    );
}

#[test]
fn expired_api_key_and_rotation() {
    let mut svc = Svc::new("a", A_URI, A_KEY);
    let past = (OffsetDateTime::now_utc() - Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let future = (OffsetDateTime::now_utc() + Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    svc.keys = vec![
        ("old".into(), "old-key-0123456789".into(), Some(past)),
        ("new".into(), A_KEY.into(), Some(future)),
    ];
    let w = world_with(&[svc], RevocationSection::default());
    assert_denied(
        &w,
        Req::cert(a_cert(&w)).key("old-key-0123456789"),
        Reason::ExpiredApiKey,
    );
    assert!(matches!(
        decide(
            &Req::cert(a_cert(&w)).key(A_KEY).build(),
            &w.registry,
            unix_now()
        ),
        Decision::Allow(_)
    ));
}

#[test]
fn another_services_key_is_an_identity_mismatch() {
    let w = world();
    let d = decide(
        &Req::cert(a_cert(&w)).key(B_KEY).build(),
        &w.registry,
        unix_now(),
    );
    assert_eq!(reason(&d), Reason::IdentityMismatch);
    assert_eq!(Reason::IdentityMismatch.alert(), Some("identity_mismatch"));
    let Decision::Deny(denial) = d else {
        unreachable!()
    };
    assert_eq!(denial.service, Some("a"));
}

#[test]
fn certificate_validity_window() {
    let w = world();
    let now = OffsetDateTime::now_utc();
    let expired = w
        .ca
        .client(&ClientSpec::uri(A_URI).valid(now - Duration::days(10), now - Duration::days(1)));
    assert_denied(
        &w,
        Req::cert(expired.forwarded()).key(A_KEY),
        Reason::CertificateExpired,
    );
    let future = w
        .ca
        .client(&ClientSpec::uri(A_URI).valid(now + Duration::days(1), now + Duration::days(10)));
    assert_denied(
        &w,
        Req::cert(future.forwarded()).key(A_KEY),
        Reason::CertificateNotYetValid,
    );
}

#[test]
fn revoked_serials_and_crls() {
    let w = world_with(
        &[Svc::new("a", A_URI, A_KEY)],
        RevocationSection {
            serials: vec!["00:4F:1A:77".into()],
            ..Default::default()
        },
    );
    let revoked =
        w.ca.client(&ClientSpec::uri(A_URI).serial(&[0x4f, 0x1a, 0x77]));
    assert_denied(
        &w,
        Req::cert(revoked.forwarded()).key(A_KEY),
        Reason::CertificateRevoked,
    );
    let fine =
        w.ca.client(&ClientSpec::uri(A_URI).serial(&[0x4f, 0x1a, 0x78]));
    assert!(matches!(
        decide(
            &Req::cert(fine.forwarded()).key(A_KEY).build(),
            &w.registry,
            unix_now()
        ),
        Decision::Allow(_)
    ));

    // The same through a CRL file of the CA that issued it.
    let fixture = Fixture::new(&[]);
    std::fs::write(
        fixture.path().join("mesh.crl.pem"),
        w.ca.crl_pem(&[&[0x4f, 0x1a, 0x78]]),
    )
    .unwrap();
    let mut fixture = fixture;
    fixture.revocation.crl_files = vec!["mesh.crl.pem".into()];
    fixture.write_registry(&[Svc::new("a", A_URI, A_KEY)]);
    let registry = fixture.load();
    let d = decide(
        &Req::cert(fine.forwarded()).key(A_KEY).build(),
        &registry,
        unix_now(),
    );
    assert_eq!(reason(&d), Reason::CertificateRevoked);
}

#[test]
fn ca_and_non_client_certificates_are_untrusted() {
    let w = world();
    let ca_leaf = w.ca.client(&ClientSpec::uri(A_URI).ca());
    assert_denied(
        &w,
        Req::cert(ca_leaf.forwarded()).key(A_KEY),
        Reason::CertificateUntrusted,
    );
    let server_only =
        w.ca.client(&ClientSpec::uri(A_URI).eku(vec![ExtendedKeyUsagePurpose::ServerAuth]));
    assert_denied(
        &w,
        Req::cert(server_only.forwarded()).key(A_KEY),
        Reason::CertificateUntrusted,
    );
    // No EKU extension at all is fine (RFC 5280: unrestricted).
    let no_eku = w.ca.client(&ClientSpec::uri(A_URI).eku(vec![]));
    assert!(matches!(
        decide(
            &Req::cert(no_eku.forwarded()).key(A_KEY).build(),
            &w.registry,
            unix_now()
        ),
        Decision::Allow(_)
    ));
}

#[test]
fn service_ca_file_must_have_signed_the_certificate() {
    let trusted = Ca::new("service a CA");
    let mut svc = Svc::new("a", A_URI, A_KEY);
    svc.ca_file = Some("a-ca.crt".into());
    let fixture = Fixture::new(&[]);
    std::fs::write(fixture.path().join("a-ca.crt"), trusted.cert_pem()).unwrap();
    let mut file = fixture.registry_file(&[svc]);
    // Let a bare principal through identity, so the CA rule itself is tested.
    file.identity.require_certificate = false;
    fixture.write(&file);
    let registry = fixture.load();
    let good = trusted.client(&ClientSpec::uri(A_URI));
    assert!(matches!(
        decide(
            &Req::cert(good.forwarded()).key(A_KEY).build(),
            &registry,
            unix_now()
        ),
        Decision::Allow(_)
    ));
    let other = Ca::new("service a CA"); // same name, different key
    let forged = other.client(&ClientSpec::uri(A_URI));
    let d = decide(
        &Req::cert(forged.forwarded()).key(A_KEY).build(),
        &registry,
        unix_now(),
    );
    assert_eq!(reason(&d), Reason::CertificateUntrusted);
    // Without a certificate the CA cannot be checked: fail closed.
    let bare = Req {
        principal: Some(A_URI.into()),
        ..Default::default()
    }
    .key(A_KEY);
    assert_eq!(
        reason(&decide(&bare.build(), &registry, unix_now())),
        Reason::CertificateUntrusted
    );
}

#[test]
fn certificate_pins() {
    let ca = Ca::new("pin CA");
    let pinned = ca.client(&ClientSpec::uri(A_URI));
    let other = ca.client(&ClientSpec::uri(A_URI));
    let mut svc = Svc::new("a", A_URI, A_KEY);
    svc.pins = vec![pinned.sha256_hex()];
    let w = world_with(&[svc], RevocationSection::default());
    assert!(matches!(
        decide(
            &Req::cert(pinned.forwarded()).key(A_KEY).build(),
            &w.registry,
            unix_now()
        ),
        Decision::Allow(_)
    ));
    assert_denied(
        &w,
        Req::cert(other.forwarded()).key(A_KEY),
        Reason::CertificatePinMismatch,
    );
}

#[test]
fn malformed_certificates() {
    let w = world();
    let good = a_cert(&w);
    let cases = [
        "garbage".to_string(),
        "%ZZ".to_string() + &good,
        good[..good.len() / 2].to_string(),
        "A".repeat(200 * 1024),
        good.replace("CERTIFICATE", "PRIVATE%20KEY"),
        format!("{good}{good}"),
    ];
    for cert in cases {
        assert_denied(&w, Req::cert(cert).key(A_KEY), Reason::MalformedCertificate);
    }
}

#[test]
fn control_characters_in_a_san_make_it_malformed() {
    let w = world();
    // rcgen refuses NUL in an Ia5String, so build the DER by hand: swap one
    // byte of a known SAN for NUL and re-sign is not possible, but the
    // parser must reject the bytes before any signature matters.
    let cert = w.ca.client(&ClientSpec::uri("spiffe://mesh.test/xAx"));
    let mut der = cert.der.clone();
    let pos = der
        .windows(3)
        .position(|win| win == b"xAx")
        .expect("SAN bytes in DER");
    der[pos + 1] = 0;
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64_lines(&der)
    );
    assert_denied(
        &w,
        Req::cert(common::pki::forwarded(&pem)).key(A_KEY),
        Reason::MalformedCertificate,
    );
}

fn base64_lines(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    b64.as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn scopes_from_header_and_route() {
    let w = world();
    let allow_scope = |req: Req| {
        let d = decide(&req.build(), &w.registry, unix_now());
        let token = issued(&w.registry, &d, unix_now());
        token::verify(&w.registry.token, &token.token, unix_now())
            .unwrap()
            .claims
            .scope
    };
    assert_eq!(
        allow_scope(
            Req::cert(a_cert(&w))
                .key(A_KEY)
                .header("x-auth-scope", "read")
        ),
        "read"
    );
    assert_eq!(
        allow_scope(Req::cert(a_cert(&w)).key(A_KEY).ext("scope", "write")),
        "write"
    );
    assert_eq!(
        allow_scope(
            Req::cert(a_cert(&w))
                .key(A_KEY)
                .header("x-auth-scope", "read")
                .ext("scope", "write")
        ),
        "read write"
    );
    assert_denied(
        &w,
        Req::cert(a_cert(&w))
            .key(A_KEY)
            .header("x-auth-scope", "read admin"),
        Reason::ScopeNotAllowed,
    );
    assert_denied(
        &w,
        Req::cert(a_cert(&w)).key(A_KEY).ext("scope", "admin"),
        Reason::ScopeNotAllowed,
    );
    // Spaces separate scopes (docs/decision.md); a comma does not: no
    // service can hold a scope named `read,write`.
    assert_eq!(
        allow_scope(
            Req::cert(a_cert(&w))
                .key(A_KEY)
                .header("x-auth-scope", " read  write ")
        ),
        "read write"
    );
    for commas in ["read,write", "read, write"] {
        assert_denied(
            &w,
            Req::cert(a_cert(&w))
                .key(A_KEY)
                .header("x-auth-scope", commas),
            Reason::ScopeNotAllowed,
        );
    }
    assert_eq!(
        Reason::ScopeNotAllowed.outcome(),
        service_auth::check::Outcome::Forbidden
    );
}

#[test]
fn verify_mode_tokens() {
    let w = world();
    let now = unix_now();
    let cert = w.ca.client(&ClientSpec::uri(A_URI));
    let d = decide(
        &Req::cert(cert.forwarded()).key(A_KEY).build(),
        &w.registry,
        now,
    );
    let jwt = issued(&w.registry, &d, now).token;

    // Same certificate, token in the token header or as a bearer token.
    for req in [
        Req::cert(cert.forwarded()).header("x-service-jwt", &jwt),
        Req::cert(cert.forwarded()).header("authorization", &format!("Bearer {jwt}")),
    ] {
        let d = decide(&req.ext("mode", "verify").build(), &w.registry, now);
        let Decision::Allow(Grant::Verify(grant)) = &d else {
            panic!("verify should allow: {d:?}")
        };
        assert_eq!(grant.subject, "a");
        assert_eq!(d.service(), Some("a"));
    }
    // A certificate-bound token on another certificate.
    let other = w.ca.client(&ClientSpec::uri(A_URI));
    assert_denied(
        &w,
        Req::cert(other.forwarded())
            .header("x-service-jwt", &jwt)
            .ext("mode", "verify"),
        Reason::InvalidToken,
    );
    // No certificate at all for a bound token.
    assert_denied(
        &w,
        Req::default()
            .header("x-service-jwt", &jwt)
            .ext("mode", "verify"),
        Reason::InvalidToken,
    );
    // Different tokens in the two headers.
    assert_denied(
        &w,
        Req::cert(cert.forwarded())
            .header("x-service-jwt", &jwt)
            .header("authorization", "Bearer other")
            .ext("mode", "verify"),
        Reason::InvalidToken,
    );
    assert_denied(
        &w,
        Req::cert(cert.forwarded()).ext("mode", "verify"),
        Reason::InvalidToken,
    );
    // Route scope beyond the token's scope.
    assert_denied(
        &w,
        Req::cert(cert.forwarded())
            .header("x-service-jwt", &jwt)
            .ext("mode", "verify")
            .ext("scope", "admin"),
        Reason::ScopeNotAllowed,
    );
    // Expired, judged with the registry's leeway.
    let late = decide(
        &Req::cert(cert.forwarded())
            .header("x-service-jwt", &jwt)
            .ext("mode", "verify")
            .build(),
        &w.registry,
        now + 300 + 30,
    );
    assert_eq!(reason(&late), Reason::ExpiredToken);
}

#[test]
fn unknown_mode_fails_closed() {
    let w = world();
    let d = decide(
        &Req::cert(a_cert(&w))
            .key(A_KEY)
            .ext("mode", "bypass")
            .build(),
        &w.registry,
        unix_now(),
    );
    assert_eq!(reason(&d), Reason::InternalError);
    assert_eq!(
        Reason::InternalError.outcome(),
        service_auth::check::Outcome::Unavailable
    );
}

#[test]
fn empty_request_is_a_denial() {
    let w = world();
    let req = envoy_types::pb::envoy::service::auth::v3::CheckRequest::default();
    assert_eq!(
        reason(&decide(&req, &w.registry, unix_now())),
        Reason::MissingIdentity
    );
}
