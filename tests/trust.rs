//! Real mesh PKIs: chains through intermediates, SPIFFE trust domains,
//! issuer-scoped revocation and bundle rotation. Certificates are generated
//! per test; decisions go through `testkit::decide` (parse + evidence +
//! `check::decide`, as the server does), and end to end where the wiring is
//! what is under test (the memo, the file watcher, Envoy).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::load::AllowLoad;
use common::procs::{Echo, Envoy, poll};
use common::{Ca, ClientSpec, Fixture, InProcess, Issued, Req, Svc, tcp0, unix_now};
use envoy_types::ext_authz::v3::pb::HttpResponse;
use prost::Message;
use rcgen::ExtendedKeyUsagePurpose;
use service_auth::check::{self, Decision, Input, TokenCheck};
use service_auth::evidence::EvidenceCache;
use service_auth::registry::{CrlError, LoadError, Problem, Registry, Warning};
use service_auth::request::Attributes;
use service_auth::response::Answer;
use service_auth::telemetry::credentials::{Expiry, expiries};
use service_auth::testkit::decide;
use service_auth::trust::{BundleError, BundleWarning};
use service_auth::wire::CheckView;
use time::OffsetDateTime;

const A_URI: &str = "spiffe://a.test/ns/default/sa/a";
const A_KEY: &str = "key-of-service-a-0123456789";
const B_URI: &str = "spiffe://b.test/ns/default/sa/b";
const B_KEY: &str = "key-of-service-b-0123456789";
const DAY: i64 = 86_400;
const WAIT: Duration = Duration::from_secs(15);

/// One trust domain's PKI: a root and the intermediate that issues leaves.
struct Domain {
    root: Ca,
    inter: Ca,
}

impl Domain {
    fn new(name: &str) -> Domain {
        let root = Ca::new(&format!("{name} root"));
        let inter = root.intermediate(&format!("{name} intermediate"));
        Domain { root, inter }
    }

    /// The bundle operators ship: root and intermediate.
    fn bundle(&self) -> String {
        Ca::bundle_pem(&[&self.root, &self.inter])
    }

    fn leaf(&self, uri: &str) -> Issued {
        self.inter.client(&ClientSpec::uri(uri))
    }
}

/// "allow", or the denial reason.
fn outcome(d: &Decision<'_>) -> String {
    match d {
        Decision::Allow(_) => "allow".into(),
        Decision::Deny(denial) => denial.reason.as_str().into(),
    }
}

fn decided(registry: &Registry, cert: &Issued, key: &str, now: i64) -> String {
    outcome(&decide(
        &Req::cert(cert.forwarded()).key(key).build(),
        registry,
        now,
    ))
}

/// The decision through the server's memo instead of fresh evidence.
fn memo_decided(
    cache: &EvidenceCache,
    registry: &Registry,
    cert: &Issued,
    key: &str,
    now: i64,
) -> String {
    let bytes = Req::cert(cert.forwarded()).key(key).build().encode_to_vec();
    let view = CheckView::decode(&bytes).expect("a prost-encoded request decodes");
    let attributes = Attributes::from_view(&view);
    let evidence = cache.resolve(attributes.certificate, registry, now);
    let input = Input {
        attributes,
        certificate: Some(evidence.as_ref().map(Arc::as_ref).map_err(|e| *e)),
    };
    outcome(&check::decide(&input, registry, now))
}

/// A fixture whose registry lists `domains` (name -> bundle PEM) under
/// `trust_domains`, with services a (in a.test) and b (in b.test).
fn with_domains(domains: &[(&str, String)]) -> Fixture {
    let mut fixture = Fixture::new(&[]);
    for (name, pem) in domains {
        let file = format!("{name}-bundle.pem");
        fixture.write_file(&file, pem);
        fixture.trust_domains.insert((*name).into(), file.into());
    }
    fixture.write_registry(&[Svc::new("a", A_URI, A_KEY), Svc::new("b", B_URI, B_KEY)]);
    fixture
}

/// A fixture whose service a has `ca_file` = `pem`.
fn with_ca_file(pem: &str) -> Fixture {
    let fixture = Fixture::new(&[]);
    fixture.write_file("a-ca.pem", pem);
    let mut svc = Svc::new("a", A_URI, A_KEY);
    svc.ca_file = Some("a-ca.pem".into());
    fixture.write_registry(&[svc]);
    fixture
}

fn at_unix(t: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t).unwrap()
}

#[test]
fn leaf_of_an_intermediate_chains_through_a_root_plus_intermediate_bundle() {
    let a = Domain::new("a");
    let leaf = a.leaf(A_URI);
    let now = unix_now();
    let by_domain = with_domains(&[("a.test", a.bundle())]).load();
    assert_eq!(decided(&by_domain, &leaf, A_KEY, now), "allow");
    let by_ca_file = with_ca_file(&a.bundle()).load();
    assert_eq!(decided(&by_ca_file, &leaf, A_KEY, now), "allow");
    // The order of the bundle does not matter.
    let reversed = with_ca_file(&Ca::bundle_pem(&[&a.inter, &a.root])).load();
    assert_eq!(decided(&reversed, &leaf, A_KEY, now), "allow");
}

#[test]
fn the_same_leaf_against_a_root_only_bundle_is_untrusted() {
    let a = Domain::new("a");
    let leaf = a.leaf(A_URI);
    let now = unix_now();
    let by_domain = with_domains(&[("a.test", a.root.cert_pem())]).load();
    let d = decide(
        &Req::cert(leaf.forwarded()).key(A_KEY).build(),
        &by_domain,
        now,
    );
    assert_eq!(outcome(&d), "certificate_untrusted");
    assert_eq!(d.alert(), Some("certificate_untrusted"));
    let by_ca_file = with_ca_file(&a.root.cert_pem()).load();
    assert_eq!(
        decided(&by_ca_file, &leaf, A_KEY, now),
        "certificate_untrusted"
    );
    // An intermediate alone is no trust anchor either.
    let inter_only = with_ca_file(&a.inter.cert_pem()).load();
    assert_eq!(
        decided(&inter_only, &leaf, A_KEY, now),
        "certificate_untrusted"
    );
}

#[test]
fn an_expired_intermediate_vouches_for_nothing_and_is_a_load_warning() {
    let root = Ca::new("a root");
    let now = unix_now();
    let old = root
        .try_intermediate(
            "a old intermediate",
            at_unix(now - 100 * DAY),
            at_unix(now - DAY),
        )
        .unwrap();
    // The leaf itself is within its validity window.
    let leaf = old.client(&ClientSpec::uri(A_URI));
    let bundle = Ca::bundle_pem(&[&root, &old]);
    let fixture = with_domains(&[("a.test", bundle)]);
    fixture.write_registry(&[Svc::new("a", A_URI, A_KEY)]);
    let registry = fixture.load();
    assert_eq!(
        decided(&registry, &leaf, A_KEY, now),
        "certificate_untrusted"
    );
    assert_eq!(
        registry.warnings(),
        [Warning::Bundle {
            at: "trust_domains[\"a.test\"]".into(),
            path: fixture.path().join("a.test-bundle.pem"),
            warning: BundleWarning::Expired {
                subject: "CN=a old intermediate".into(),
                not_after: now - DAY,
            },
        }]
    );
}

#[test]
fn a_certificate_from_domain_bs_ca_claiming_domain_a_is_untrusted() {
    let (a, b) = (Domain::new("a"), Domain::new("b"));
    let registry = with_domains(&[("a.test", a.bundle()), ("b.test", b.bundle())]).load();
    let now = unix_now();
    // B's CA is trusted for B's names...
    assert_eq!(decided(&registry, &b.leaf(B_URI), B_KEY, now), "allow");
    // ...and only for them: Envoy, trusting both roots, would let this in.
    let impostor = b.leaf(A_URI);
    let d = decide(
        &Req::cert(impostor.forwarded()).key(A_KEY).build(),
        &registry,
        now,
    );
    assert_eq!(outcome(&d), "certificate_untrusted");
    assert_eq!(d.alert(), Some("certificate_untrusted"));
    // A CA named like A's but with another key does not pass either.
    let lookalike = Ca::new("a root").intermediate("a intermediate");
    assert_eq!(
        decided(
            &registry,
            &lookalike.client(&ClientSpec::uri(A_URI)),
            A_KEY,
            now
        ),
        "certificate_untrusted"
    );
}

#[test]
fn an_svid_must_carry_exactly_one_uri_san() {
    let a = Domain::new("a");
    let registry = with_domains(&[("a.test", a.bundle())]).load();
    let now = unix_now();
    for (what, spec) in [
        (
            "two SPIFFE IDs",
            ClientSpec::uri(A_URI).with_uri("spiffe://a.test/ns/default/sa/other"),
        ),
        (
            "a SPIFFE ID and an https URI",
            ClientSpec::uri(A_URI).with_uri("https://a.test/a"),
        ),
        (
            "an https URI first",
            ClientSpec::uri("https://a.test/a").with_uri(A_URI),
        ),
    ] {
        assert_eq!(
            decided(&registry, &a.inter.client(&spec), A_KEY, now),
            "certificate_untrusted",
            "{what}"
        );
    }
    // A DNS SAN beside the one URI SAN is allowed (X509-SVID).
    let mut with_dns = ClientSpec::dns("a.a.test");
    with_dns = with_dns.with_uri(A_URI);
    assert_eq!(
        decided(&registry, &a.inter.client(&with_dns), A_KEY, now),
        "allow"
    );
    // A SPIFFE ID that is not valid (upper-case trust domain) is refused,
    // not read as a non-SPIFFE URI.
    let upper = a
        .inter
        .client(&ClientSpec::uri("spiffe://A.test/ns/default/sa/a"));
    assert_eq!(
        decided(&registry, &upper, A_KEY, now),
        "certificate_untrusted"
    );
    // Without trust_domains the same two-ID certificate is judged by the
    // service lookup, as before.
    let plain = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]).load();
    let two = a
        .inter
        .client(&ClientSpec::uri(A_URI).with_uri("spiffe://a.test/x"));
    assert_eq!(decided(&plain, &two, A_KEY, now), "allow");
}

#[test]
fn a_trust_domain_that_is_not_listed_is_untrusted() {
    let (a, c) = (Domain::new("a"), Domain::new("c"));
    const C_URI: &str = "spiffe://c.test/ns/default/sa/c";
    let mut fixture = Fixture::new(&[]);
    fixture.write_file("a.pem", a.bundle());
    // c's own CA is even the service's ca_file: the domain rule still holds.
    fixture.write_file("c.pem", c.bundle());
    fixture
        .trust_domains
        .insert("a.test".into(), "a.pem".into());
    let mut svc = Svc::new("c", C_URI, "key-of-service-c-0123456789");
    svc.ca_file = Some("c.pem".into());
    // A mis-cased scheme is no SPIFFE ID: no certificate can match it.
    let upper = Svc::new("upper", "SPIFFE://a.test/x", "key-of-upper-0123456789");
    fixture.write_registry(&[Svc::new("a", A_URI, A_KEY), svc, upper]);
    let registry = fixture.load();
    assert_eq!(
        decided(
            &registry,
            &c.leaf(C_URI),
            "key-of-service-c-0123456789",
            unix_now()
        ),
        "certificate_untrusted"
    );
    assert_eq!(
        registry.warnings(),
        [
            Warning::UnlistedTrustDomain {
                at: "services[1].principals[0]".into(),
                principal: C_URI.into(),
                domain: "c.test".into(),
            },
            Warning::NotSpiffeId {
                at: "services[2].principals[0]".into(),
                principal: "SPIFFE://a.test/x".into(),
            }
        ]
    );
}

#[test]
fn a_bare_spiffe_principal_cannot_be_vouched_for_by_its_domain() {
    let a = Domain::new("a");
    let fixture = with_domains(&[("a.test", a.bundle())]);
    let mut file = fixture.registry_file(&[Svc::new("a", A_URI, A_KEY)]);
    file.identity.require_certificate = false;
    fixture.write(&file);
    let registry = fixture.load();
    let d = decide(
        &Req::principal(A_URI).key(A_KEY).build(),
        &registry,
        unix_now(),
    );
    assert_eq!(outcome(&d), "certificate_untrusted");
    // A DNS principal is outside the SPIFFE rule.
    let mut file = fixture.registry_file(&[Svc::new("d", "d.mesh.test", A_KEY)]);
    file.identity.require_certificate = false;
    fixture.write(&file);
    let registry = fixture.load();
    let d = decide(
        &Req::principal("d.mesh.test").key(A_KEY).build(),
        &registry,
        unix_now(),
    );
    assert_eq!(outcome(&d), "allow");
}

#[test]
fn services_may_add_a_ca_file_and_pins_on_top_of_the_domain() {
    let a = Domain::new("a");
    // A second intermediate of the same domain: the domain vouches for its
    // leaves, the service's ca_file (the first intermediate's path) does not.
    let other = a.root.intermediate("a other intermediate");
    let mut fixture = Fixture::new(&[]);
    fixture.write_file("a.pem", Ca::bundle_pem(&[&a.root, &a.inter, &other]));
    fixture.write_file("a-service.pem", a.bundle());
    fixture
        .trust_domains
        .insert("a.test".into(), "a.pem".into());
    let mut svc = Svc::new("a", A_URI, A_KEY);
    svc.ca_file = Some("a-service.pem".into());
    fixture.write_registry(&[svc]);
    let registry = fixture.load();
    let now = unix_now();
    assert_eq!(decided(&registry, &a.leaf(A_URI), A_KEY, now), "allow");
    assert_eq!(
        decided(
            &registry,
            &other.client(&ClientSpec::uri(A_URI)),
            A_KEY,
            now
        ),
        "certificate_untrusted"
    );
    let pinned = a.leaf(A_URI);
    let mut svc = Svc::new("a", A_URI, A_KEY);
    svc.pins = vec![pinned.sha256_hex()];
    fixture.write_registry(&[svc]);
    let registry = fixture.load();
    assert_eq!(decided(&registry, &pinned, A_KEY, now), "allow");
    assert_eq!(
        decided(&registry, &a.leaf(A_URI), A_KEY, now),
        "certificate_pin_mismatch"
    );
}

#[test]
fn a_crl_of_the_intermediate_revokes_its_leaf_not_the_same_serial_of_another_ca() {
    const SERIAL: &[u8] = &[0x4f, 0x1a];
    let (a, b) = (Domain::new("a"), Domain::new("b"));
    let mine = a.inter.client(&ClientSpec::uri(A_URI).serial(SERIAL));
    let theirs = b.inter.client(&ClientSpec::uri(B_URI).serial(SERIAL));
    let now = unix_now();

    // With bundles: the CRL's signature is checked against the bundle
    // holding its issuer.
    let mut fixture = with_domains(&[("a.test", a.bundle()), ("b.test", b.bundle())]);
    fixture.write_file("a.crl", a.inter.crl_pem(&[SERIAL]));
    fixture.revocation.crl_files = vec!["a.crl".into()];
    fixture.write_registry(&[Svc::new("a", A_URI, A_KEY), Svc::new("b", B_URI, B_KEY)]);
    let registry = fixture.load();
    let d = decide(
        &Req::cert(mine.forwarded()).key(A_KEY).build(),
        &registry,
        now,
    );
    assert_eq!(outcome(&d), "certificate_revoked");
    assert_eq!(d.alert(), Some("certificate_revoked"));
    assert_eq!(decided(&registry, &theirs, B_KEY, now), "allow");

    // Without any bundle the CRL is matched by its issuer's name.
    let mut plain = Fixture::new(&[]);
    plain.write_file("a.crl", a.inter.crl_pem(&[SERIAL]));
    plain.revocation.crl_files = vec!["a.crl".into()];
    plain.write_registry(&[Svc::new("a", A_URI, A_KEY), Svc::new("b", B_URI, B_KEY)]);
    let registry = plain.load();
    assert_eq!(decided(&registry, &mine, A_KEY, now), "certificate_revoked");
    assert_eq!(decided(&registry, &theirs, B_KEY, now), "allow");

    // A CRL in A's intermediate's name signed by another key is rejected.
    let forger = Ca::new("evil root").intermediate("a intermediate");
    let forged = fixture.write_file("forged.crl", forger.crl_pem(&[SERIAL]));
    fixture.revocation.crl_files = vec!["forged.crl".into()];
    fixture.write_registry(&[Svc::new("a", A_URI, A_KEY)]);
    let errors = Registry::load(&fixture.registry_path()).err().unwrap();
    assert!(
        matches!(
            errors.as_slice(),
            [e @ LoadError::Invalid { .. }]
                if e.at() == Some("revocation.crl_files[0]")
                    && matches!(e.problem(), Some(Problem::Crl { path, error: CrlError::BadSignature }) if *path == forged)
        ),
        "{errors:#?}"
    );
}

#[test]
fn any_extended_key_usage_is_a_client_certificate_server_auth_alone_is_not() {
    use ExtendedKeyUsagePurpose::{Any, ServerAuth};
    let a = Domain::new("a");
    let now = unix_now();
    let any = a.inter.client(&ClientSpec::uri(A_URI).eku(vec![Any]));
    let server = a
        .inter
        .client(&ClientSpec::uri(A_URI).eku(vec![ServerAuth]));
    for registry in [
        with_domains(&[("a.test", a.bundle())]).load(),
        with_ca_file(&a.bundle()).load(),
        Fixture::new(&[Svc::new("a", A_URI, A_KEY)]).load(),
    ] {
        assert_eq!(decided(&registry, &any, A_KEY, now), "allow");
        assert_eq!(
            decided(&registry, &server, A_KEY, now),
            "certificate_untrusted"
        );
    }
}

#[test]
fn a_configured_serial_matches_a_der_serial_with_a_leading_zero() {
    let a = Domain::new("a");
    let cert = a
        .inter
        .client(&ClientSpec::uri(A_URI).serial(&[0x80, 0x01]));
    // DER keeps the serial positive: INTEGER, 3 bytes, 00 80 01.
    assert!(
        cert.der
            .windows(5)
            .any(|w| w == [0x02, 0x03, 0x00, 0x80, 0x01]),
        "the certificate's serial is not encoded as 00 80 01"
    );
    let mut fixture = with_domains(&[("a.test", a.bundle())]);
    fixture.revocation.serials = vec!["80:01".into()];
    fixture.write_registry(&[Svc::new("a", A_URI, A_KEY)]);
    assert_eq!(
        decided(&fixture.load(), &cert, A_KEY, unix_now()),
        "certificate_revoked"
    );
}

#[test]
fn the_memo_answers_like_a_fresh_decision_across_verdict_windows() {
    let root = Ca::new("a root");
    let now = unix_now();
    // The intermediate expires in ten days; the leaf lives for thirty.
    let inter_end = now + 10 * DAY;
    let inter = root
        .try_intermediate("a intermediate", at_unix(now - DAY), at_unix(inter_end))
        .unwrap();
    let leaf = inter.client(&ClientSpec::uri(A_URI));
    let fixture = with_domains(&[("a.test", Ca::bundle_pem(&[&root, &inter]))]);
    let registry = fixture.load();
    let cache = EvidenceCache::new(16);
    let expired = inter_end + 1;
    let mut seen = Vec::new();
    // Starting after the boundary: a memo that served a verdict outside its
    // window would turn the allow at `now` into a (fail-closed) denial.
    for t in [expired, now, expired - 1, expired, expired + DAY, now] {
        let memo = memo_decided(&cache, &registry, &leaf, A_KEY, t);
        assert_eq!(memo, decided(&registry, &leaf, A_KEY, t), "at {t}");
        seen.push(memo);
    }
    assert_eq!(
        seen,
        [
            "certificate_untrusted",
            "allow",
            "allow",
            "certificate_untrusted",
            "certificate_untrusted",
            "allow"
        ]
    );

    // Inside one window the memo serves the same evidence; outside it, new.
    let bytes = Req::cert(leaf.forwarded())
        .key(A_KEY)
        .build()
        .encode_to_vec();
    let view = CheckView::decode(&bytes).expect("a prost-encoded request decodes");
    let cert = Attributes::from_view(&view).certificate;
    let first = cache.resolve(cert, &registry, now).unwrap();
    let again = cache.resolve(cert, &registry, expired - 1).unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    let later = cache.resolve(cert, &registry, expired).unwrap();
    assert!(!Arc::ptr_eq(&again, &later));

    // A new snapshot (the intermediate dropped from the bundle) is judged
    // afresh, by the memo as by a fresh decision.
    fixture.write_file("a.test-bundle.pem", root.cert_pem());
    let rotated = fixture.load();
    let memo = memo_decided(&cache, &rotated, &leaf, A_KEY, now);
    assert_eq!(memo, "certificate_untrusted");
    assert_eq!(memo, decided(&rotated, &leaf, A_KEY, now));
    assert_eq!(memo_decided(&cache, &registry, &leaf, A_KEY, now), "allow");
}

#[test]
fn a_bound_token_stops_verifying_when_its_domain_no_longer_vouches() {
    let a = Domain::new("a");
    let leaf = a.leaf(A_URI);
    let fixture = with_domains(&[("a.test", a.bundle())]);
    let registry = fixture.load();
    let now = unix_now();
    let answer = Answer::sign(
        decide(
            &Req::cert(leaf.forwarded()).key(A_KEY).build(),
            &registry,
            now,
        ),
        &registry,
        now,
    );
    let token = answer.issued.expect("a signed token").token;
    let verify = Req::cert(leaf.forwarded())
        .header("x-service-jwt", &token)
        .ext("mode", "verify")
        .build();
    assert_eq!(outcome(&decide(&verify, &registry, now)), "allow");
    // The domain's intermediate is rotated out.
    fixture.write_file("a.test-bundle.pem", a.root.cert_pem());
    let rotated = fixture.load();
    let d = decide(&verify, &rotated, now);
    assert_eq!(outcome(&d), "certificate_untrusted");
    assert_eq!(d.token_check(), Some(TokenCheck::Unbound));
}

#[test]
fn trust_domain_names_and_bundles_are_validated_at_load() {
    let a = Domain::new("a");
    let mut fixture = Fixture::new(&[]);
    fixture.write_file("a.pem", a.bundle());
    let leaf = fixture.write_file("leaf.pem", a.leaf(A_URI).cert_pem);
    fixture.trust_domains = BTreeMap::from([
        ("A.test".into(), "a.pem".into()),
        ("a.test".into(), "missing.pem".into()),
        ("b.test".into(), "leaf.pem".into()),
    ]);
    fixture.write_registry(&[]);
    let errors = Registry::load(&fixture.registry_path()).err().unwrap();
    let found: Vec<_> = errors.iter().map(|e| (e.at(), e.problem())).collect();
    assert!(
        matches!(
            found.as_slice(),
            [
                (
                    Some("trust_domains[\"A.test\"]"),
                    Some(Problem::InvalidTrustDomain(name))
                ),
                (Some("trust_domains[\"a.test\"]"), Some(Problem::File(_))),
                (
                    Some("trust_domains[\"b.test\"]"),
                    Some(Problem::Bundle {
                        path,
                        error: BundleError::NotCa { index: 1, .. }
                    })
                ),
            ] if name == "A.test" && *path == leaf
        ),
        "{errors:#?}"
    );
}

#[test]
fn every_ca_in_use_reports_its_expiry() {
    let a = Domain::new("a");
    let fixture = with_domains(&[("a.test", a.bundle())]);
    fixture.write_file("a-ca.pem", a.bundle());
    let mut svc = Svc::new("a", A_URI, A_KEY);
    svc.ca_file = Some("a-ca.pem".into());
    fixture.write_registry(&[svc]);
    let registry = fixture.load();
    let bundle = service_auth::trust::Bundle::from_pem(a.bundle().as_bytes()).unwrap();
    let ends: Vec<i64> = bundle.certificates().iter().map(|c| c.not_after).collect();
    let ca = |service: &str, id: &str, not_after: i64| Expiry {
        kind: "ca",
        service: service.into(),
        id: id.into(),
        not_after,
    };
    assert_eq!(
        expiries(&registry),
        [
            ca("trust_domain:a.test", "CN=a root", ends[0]),
            ca("trust_domain:a.test", "CN=a intermediate", ends[1]),
            ca("a", "CN=a root", ends[0]),
            ca("a", "CN=a intermediate", ends[1]),
        ]
    );
}

#[test]
fn check_config_names_each_services_trust_domain_and_warns_when_they_span() {
    let (a, b) = (Domain::new("a"), Domain::new("b"));
    let fixture = with_domains(&[("a.test", a.bundle()), ("b.test", b.bundle())]);
    let mut both = Svc::new("both", A_URI, A_KEY);
    both.principals.push(B_URI.into());
    fixture.write_registry(&[both, Svc::new("dns", "dns.mesh.test", B_KEY)]);
    let config = fixture.write_config(&fixture.static_config(tcp0()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_service-auth"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("ok:"), "{stdout}");
    let warning = Warning::PrincipalsSpanDomains {
        at: "services[0].principals".into(),
        service: "both".into(),
        domains: vec!["a.test".into(), "b.test".into()],
    };
    assert_eq!(fixture.load().warnings(), std::slice::from_ref(&warning));
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!("warning: {warning}").as_str(),
            "service both: trust domains a.test, b.test",
            "service dns: no SPIFFE trust domain",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_rotation_under_load_fails_no_check_of_the_new_intermediate() {
    let root = Ca::new("a root");
    let old = root.intermediate("a intermediate 1");
    let new = root.intermediate("a intermediate 2");
    let fixture = with_domains(&[("a.test", Ca::bundle_pem(&[&root, &old]))]);
    let bundle_file = "a.test-bundle.pem";
    let sidecar = InProcess::for_fixture(&fixture).await;
    let client = sidecar.client().await;
    let check_client = client.clone();
    let old_req = Req::cert(old.client(&ClientSpec::uri(A_URI)).forwarded()).key(A_KEY);
    let new_req = Req::cert(new.client(&ClientSpec::uri(A_URI)).forwarded()).key(A_KEY);
    let check = move |req: Req| {
        let mut client = check_client.clone();
        async move {
            let resp = client.check(req.build()).await.expect("Check").into_inner();
            matches!(resp.http_response, Some(HttpResponse::OkResponse(_)))
        }
    };
    assert!(check(old_req.clone()).await);
    assert!(!check(new_req.clone()).await);

    // 1. The new intermediate joins the bundle (only the bundle file changes).
    fixture.write_file(bundle_file, Ca::bundle_pem(&[&root, &old, &new]));
    poll("the new intermediate", WAIT, || {
        let check = check(new_req.clone());
        async move { check.await.then_some(()) }
    })
    .await;

    // 2. Under load with the new intermediate's certificate, the old one
    //    leaves the bundle.
    let load = AllowLoad::start(vec![client.clone(); 4], new_req.build());
    load.wait_for(50, WAIT).await;
    let generation = sidecar.sidecar.snapshot().load().unwrap().generation;
    fixture.write_file(bundle_file, Ca::bundle_pem(&[&root, &new]));
    poll("the old intermediate to be rotated out", WAIT, || {
        let check = check(old_req.clone());
        async move { (!check.await).then_some(()) }
    })
    .await;
    load.wait_for(50, WAIT).await;
    let (sent, failed) = load.stop().await;
    assert_ne!(
        sidecar.sidecar.snapshot().load().unwrap().generation,
        generation,
        "the rotation was applied by a reload"
    );
    assert!(failed.is_empty(), "of {sent} Checks: {failed:?}");
    sidecar.sidecar.shutdown().await.unwrap();
}

#[tokio::test]
async fn through_envoy_a_federated_peer_cannot_speak_for_another_domain() {
    let (a, b) = (Domain::new("a"), Domain::new("b"));
    let fixture = with_domains(&[("a.test", a.bundle()), ("b.test", b.bundle())]);
    let sidecar = InProcess::for_fixture(&fixture).await;
    let echo = Echo::start().await;
    // Envoy trusts the union of both domains' roots, as federated meshes do.
    common::write_envoy_certs(&a.root, fixture.path());
    fixture.write_file("certs/ca.crt", Ca::bundle_pem(&[&a.root, &b.root]));
    let envoy = Envoy::shipped(fixture.path(), sidecar.addr, echo.addr).await;

    // Clients send their chain (leaf + intermediate); Envoy forwards the
    // leaf alone, and the sidecar builds the path from the bundle.
    let with_chain = |leaf: Issued, inter: &Ca| Issued {
        cert_pem: format!("{}{}", leaf.cert_pem, inter.cert_pem()),
        ..leaf
    };
    let get = |cert: Issued, key: &str| {
        common::https_client(&a.root, &cert)
            .get(format!("{}/orders", envoy.base_url()))
            .header("x-api-key", key)
            .send()
    };
    let ok = get(with_chain(a.leaf(A_URI), &a.inter), A_KEY)
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(echo.hits(), 1);
    let impostor = get(with_chain(b.leaf(A_URI), &b.inter), A_KEY)
        .await
        .unwrap();
    assert_eq!(impostor.status(), 401);
    assert_eq!(echo.hits(), 1, "the impostor reached the upstream");
    sidecar.sidecar.shutdown().await.unwrap();
}
