//! Security-critical lines of the decision that the fast in-process suite
//! let a mutation through (docs/TESTING.md lists each mutation and the test
//! here that kills it). In-process and fast: `tests/mutants.sh` runs them
//! against every mutant.

mod common;

use common::{Ca, ClientSpec, Fixture, Req, Svc, unix_now};
use service_auth::check::{Decision, Grant, MAX_API_KEY_LEN, Reason};
use service_auth::identity::PeerCertificate;
use service_auth::registry::{Registry, hash_api_key};
use service_auth::testkit::decide;
use service_auth::token;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const A_URI: &str = "spiffe://mesh.test/ns/default/sa/a";
const A_KEY: &str = "key-of-service-a-0123456789";

fn registry(services: &[Svc]) -> (Fixture, Registry) {
    let fixture = Fixture::new(services);
    let registry = fixture.load();
    (fixture, registry)
}

fn reason(d: &Decision<'_>) -> Option<Reason> {
    match d {
        Decision::Deny(denial) => Some(denial.reason),
        Decision::Allow(_) => None,
    }
}

/// The first key of the form `probe-N` whose SHA-256 agrees with `target`'s
/// on the bytes `at` selects (and differs somewhere else).
fn colliding_key(target: &[u8; 32], at: std::ops::Range<usize>) -> String {
    (0u64..)
        .map(|i| format!("probe-{i}"))
        .find(|k| {
            let h = hash_api_key(k.as_bytes());
            h[at.clone()] == target[at.clone()] && h != *target
        })
        .expect("an unbounded search ends")
}

/// A presented key whose hash shares its first (or last) two bytes with the
/// registered key's hash is still a wrong key: the comparison covers all 32
/// bytes. A comparison cut to a prefix or suffix would let it in.
#[test]
fn a_key_whose_hash_shares_a_prefix_or_suffix_with_the_registered_one_is_invalid() {
    let (_fixture, registry) = registry(&[Svc::new("a", A_URI, A_KEY)]);
    let ca = Ca::new("key compare CA");
    let cert = ca.client(&ClientSpec::uri(A_URI)).forwarded();
    let registered = hash_api_key(A_KEY.as_bytes());
    let now = unix_now();

    // The registered key itself is allowed, so a denial below is about the key.
    let good = decide(&Req::cert(cert.clone()).key(A_KEY).build(), &registry, now);
    assert!(matches!(good, Decision::Allow(_)), "{good:?}");

    for (what, at) in [("first", 0..2), ("last", 30..32)] {
        let probe = colliding_key(&registered, at);
        let d = decide(&Req::cert(cert.clone()).key(&probe).build(), &registry, now);
        assert_eq!(
            reason(&d),
            Some(Reason::InvalidApiKey),
            "{probe:?} shares the {what} two bytes of the registered key's hash"
        );
    }
}

/// Verify mode: the token must carry every scope the route asks for, not
/// just one of them.
#[test]
fn verify_mode_needs_every_route_scope_in_the_token() {
    let (_fixture, registry) = registry(&[Svc::new("a", A_URI, A_KEY)]);
    let ca = Ca::new("verify scope CA");
    let cert = ca.client(&ClientSpec::uri(A_URI)).forwarded();
    let now = unix_now();
    let d = decide(&Req::cert(cert.clone()).key(A_KEY).build(), &registry, now);
    let Decision::Allow(Grant::Issue(grant)) = &d else {
        panic!("issue mode should allow: {d:?}")
    };
    let jwt = token::issue(&registry.token, &grant.subject(), now)
        .expect("sign the token")
        .token;
    let claims = token::verify(&registry.token, &jwt, now).unwrap().claims;
    assert_eq!(claims.scope, "read write");

    let verify_on = |route_scope: &str| {
        let req = Req::cert(cert.clone())
            .header("x-service-jwt", &jwt)
            .ext("mode", "verify")
            .ext("scope", route_scope);
        reason(&decide(&req.build(), &registry, now))
    };
    // Every route scope is in the token: allowed.
    assert_eq!(verify_on("read"), None);
    assert_eq!(verify_on("write read"), None);
    // One of two route scopes is in the token, the other is not.
    assert_eq!(verify_on("read admin"), Some(Reason::ScopeNotAllowed));
    assert_eq!(verify_on("admin read"), Some(Reason::ScopeNotAllowed));
}

/// An RFC 3339 timestamp at Unix second `t`.
fn rfc3339(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .unwrap()
        .format(&Rfc3339)
        .unwrap()
}

/// Issue mode at the exact edges: a certificate is valid on both ends of
/// its window and an API key through its `not_after` second (RFC 5280
/// windows are inclusive), each refused one second outside.
#[test]
fn issue_mode_clock_boundaries_are_exact() {
    const EXPIRING_KEY: &str = "key-of-service-a-expiring-0123";
    let t0 = common::unix_now();
    let (not_before, not_after, key_not_after) = (t0 - 100, t0 + 100, t0 + 50);
    let mut svc = Svc::new("a", A_URI, A_KEY);
    svc.keys.push((
        "k2".into(),
        EXPIRING_KEY.into(),
        Some(rfc3339(key_not_after)),
    ));
    let registry = Fixture::new(&[svc]).load();
    let ca = Ca::new("clock CA");
    let at = |t: i64| OffsetDateTime::from_unix_timestamp(t).unwrap();
    let cert = ca.client(&ClientSpec::uri(A_URI).valid(at(not_before), at(not_after)));
    let outcome = |key: &str, now: i64| match decide(
        &Req::cert(cert.forwarded()).key(key).build(),
        &registry,
        now,
    ) {
        Decision::Allow(_) => None,
        Decision::Deny(d) => Some(d.reason),
    };
    // The certificate is valid on both ends of its window, inclusive.
    assert_eq!(
        outcome(A_KEY, not_before - 1),
        Some(Reason::CertificateNotYetValid)
    );
    assert_eq!(outcome(A_KEY, not_before), None);
    assert_eq!(outcome(A_KEY, not_after), None);
    assert_eq!(
        outcome(A_KEY, not_after + 1),
        Some(Reason::CertificateExpired)
    );
    // A key is good through its not_after second, expired one second later.
    assert_eq!(outcome(EXPIRING_KEY, key_not_after), None);
    assert_eq!(
        outcome(EXPIRING_KEY, key_not_after + 1),
        Some(Reason::ExpiredApiKey)
    );
}

/// DER prefixes `00` to a serial whose high bit is set. The parsed
/// certificate drops it (its documented form), and every spelling of the
/// serial revokes the certificate: configured ones, and the CRL entry
/// (whose DER has the `00` too). `80:01` itself is tests/trust.rs
/// `a_configured_serial_matches_a_der_serial_with_a_leading_zero`.
#[test]
fn a_serial_with_a_der_sign_byte_is_revoked_under_every_spelling() {
    const SERIAL: &[u8] = &[0x80, 0x01];
    let ca = Ca::new("serial CA");
    let cert = ca.client(&ClientSpec::uri(A_URI).serial(SERIAL));
    let parsed = PeerCertificate::from_forwarded(&cert.forwarded()).expect("a client certificate");
    assert_eq!(parsed.serial, SERIAL);

    let now = unix_now();
    let revoked_by = |fixture: &mut Fixture| {
        fixture.write_registry(&[Svc::new("a", A_URI, A_KEY)]);
        let registry = fixture.load();
        reason(&decide(
            &Req::cert(cert.forwarded()).key(A_KEY).build(),
            &registry,
            now,
        ))
    };
    for spelling in ["00:80:01", "0x008001", "8001"] {
        let mut fixture = Fixture::new(&[]);
        fixture.revocation.serials = vec![spelling.into()];
        assert_eq!(
            revoked_by(&mut fixture),
            Some(Reason::CertificateRevoked),
            "{spelling}"
        );
    }
    let mut fixture = Fixture::new(&[]);
    fixture.write_file("ca.crl", ca.crl_pem(&[SERIAL]));
    fixture.revocation.crl_files = vec!["ca.crl".into()];
    assert_eq!(
        revoked_by(&mut fixture),
        Some(Reason::CertificateRevoked),
        "by CRL"
    );
}

/// A certificate is pinned when it matches any of the service's pins, also
/// when one pin is listed twice (hex is case-insensitive, so `AB..` and
/// `ab..` are one pin); a certificate matching none is refused.
#[test]
fn a_certificate_matching_any_pin_is_pinned_even_when_listed_twice() {
    let ca = Ca::new("pins CA");
    let [first, second, stranger] =
        ["first", "second", "stranger"].map(|cn| ca.client(&ClientSpec::uri(A_URI).with_cn(cn)));
    let mut svc = Svc::new("a", A_URI, A_KEY);
    svc.pins = vec![
        first.sha256_hex(),
        second.sha256_hex().to_uppercase(),
        second.sha256_hex().to_lowercase(),
    ];
    let (_fixture, registry) = registry(&[svc]);
    let now = unix_now();
    let decided = |cert: &common::Issued| {
        reason(&decide(
            &Req::cert(cert.forwarded()).key(A_KEY).build(),
            &registry,
            now,
        ))
    };
    assert_eq!(decided(&first), None);
    assert_eq!(decided(&second), None);
    assert_eq!(decided(&stranger), Some(Reason::CertificatePinMismatch));
}

/// The registry holds only key hashes, so nothing stops a registered key
/// from being a value no header should carry. Such a key never matches: a
/// comma is two headers joined (CVE-2021-32777), and empty, over-long or
/// non-printable values are refused before hashing. A printable key of
/// exactly the maximum length is a key like any other.
#[test]
fn a_registered_key_that_is_no_well_formed_header_value_never_matches() {
    let longest = "k".repeat(MAX_API_KEY_LEN);
    let too_long = "k".repeat(MAX_API_KEY_LEN + 1);
    let refused = [
        "first,second",
        "with space",
        "tab\there",
        "",
        too_long.as_str(),
    ];
    let mut svc = Svc::new("a", A_URI, A_KEY);
    svc.keys = [longest.as_str()]
        .iter()
        .chain(&refused)
        .enumerate()
        .map(|(i, key)| (format!("k{i}"), key.to_string(), None))
        .collect();
    let (_fixture, registry) = registry(&[svc]);
    let cert = Ca::new("key shape CA")
        .client(&ClientSpec::uri(A_URI))
        .forwarded();
    let now = unix_now();
    let decided = |key: &str| {
        let req = Req::cert(cert.clone()).raw_header("x-api-key", key.as_bytes());
        reason(&decide(&req.build(), &registry, now))
    };
    assert_eq!(decided(&longest), None);
    for key in refused {
        assert_eq!(decided(key), Some(Reason::InvalidApiKey), "{key:?}");
    }
}

/// The token names the registered principal the certificate presented, not
/// the service's first one.
#[test]
fn the_grant_names_the_principal_the_certificate_presented() {
    const SECOND_URI: &str = "spiffe://mesh.test/ns/default/sa/a-canary";
    let mut svc = Svc::new("a", A_URI, A_KEY);
    svc.principals.push(SECOND_URI.into());
    let (_fixture, registry) = registry(&[svc]);
    let ca = Ca::new("principal CA");
    let now = unix_now();
    for uri in [A_URI, SECOND_URI] {
        let cert = ca.client(&ClientSpec::uri(uri)).forwarded();
        let d = decide(&Req::cert(cert).key(A_KEY).build(), &registry, now);
        let Decision::Allow(Grant::Issue(grant)) = &d else {
            panic!("{uri} should be allowed: {d:?}")
        };
        assert_eq!(grant.principal, uri);
    }
}
