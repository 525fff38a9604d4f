//! What the fuzz targets share: a small fixed registry on disk, a pool of
//! real certificates for it, and oracles that state — independently of the
//! code under test — when an Allow is justified.
//!
//! Everything is built once per process (`world()`), with a fixed clock
//! (`NOW`), so a crashing input replays the same way anywhere.

use std::path::PathBuf;
use std::sync::OnceLock;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use rcgen::{ExtendedKeyUsagePurpose, SanType};
use service_auth::check::{Decision, Grant};
use service_auth::config::{
    ApiKeyEntry, IdentitySection, KeyEntry, RegistryFile, RequestSection, RevocationSection, ServiceEntry,
    TokenSection,
};
use service_auth::registry::Registry;
use service_auth::response::{Answer, Responses};
use service_auth::testkit::pki::{Ca, ClientSpec};
use sha2::Digest;
use time::macros::datetime;

/// The fixed "current time" of every fuzz run (2027-01-15).
pub const NOW: i64 = 1_800_000_000;

pub const ISSUER: &str = "https://fuzz.test";
pub const AUDIENCE: &str = "orders";
pub const LEEWAY: i64 = 30;
/// kid `k1` signs; `k2` only verifies.
pub const SECRETS: [(&str, &str); 2] = [
    ("k1", "fuzz-signing-secret-k1-0123456789abcdef"),
    ("k2", "fuzz-verify-only-secret-k2-0123456789ab"),
];

/// Serial of the revoked certificate in the pool (registry lists `0bad`).
pub const REVOKED_SERIAL: [u8; 2] = [0x0b, 0xad];

/// One registered service, as the oracles know it.
pub struct Known {
    pub id: &'static str,
    /// URI principals (contain `://`) and DNS principals (lower case).
    pub principals: &'static [&'static str],
    /// (plaintext key, expired at NOW)
    pub keys: &'static [(&'static str, bool)],
}

pub const SERVICES: [Known; 3] = [
    Known {
        id: "a",
        principals: &["spiffe://fuzz.test/sa/a", "a.fuzz.test"],
        keys: &[("key-a-0123456789", false)],
    },
    Known {
        id: "b",
        principals: &["spiffe://fuzz.test/sa/b"],
        keys: &[("key-b-0123456789", false), ("key-b-expired-0123", true)],
    },
    Known {
        id: "c",
        principals: &["spiffe://fuzz.test/sa/c"],
        keys: &[("key-c-0123456789", false)],
    },
];

pub struct World {
    _dir: tempfile::TempDir,
    pub registry_path: PathBuf,
    pub registry: Registry,
    /// Forwarded (URL-encoded PEM) certificates of every shape the decision judges.
    pub certs: Vec<String>,
    /// Their DER encodings, same order.
    pub ders: Vec<Vec<u8>>,
}

pub fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(build_world)
}

fn build_world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("fuzz CA");
    let other_ca = Ca::new("someone else's CA");
    for (kid, secret) in SECRETS {
        write(&dir.path().join(format!("secrets/{kid}.key")), secret.as_bytes());
    }
    write(&dir.path().join("ca.crt"), ca.cert_pem().as_bytes());
    let registry_path = dir.path().join("registry.yaml");
    let text = serde_yaml::to_string(&registry_file()).expect("serialize the fuzz registry");
    write(&registry_path, text.as_bytes());
    let registry = Registry::load(&registry_path).expect("fuzz registry is valid");

    let a = "spiffe://fuzz.test/sa/a";
    // Valid at NOW unless a case says otherwise.
    let leaf = |spec: ClientSpec| {
        spec.with_cn("fuzz client")
            .valid(datetime!(2000-01-01 0:00 UTC), datetime!(2100-01-01 0:00 UTC))
    };
    let dns = |d: &str| {
        let mut spec = ClientSpec::empty();
        spec.sans = vec![SanType::DnsName(d.try_into().expect("ia5"))];
        spec
    };
    let specs: Vec<(&Ca, ClientSpec)> = vec![
        (&ca, leaf(ClientSpec::uri(a))),
        (&ca, leaf(dns("A.Fuzz.Test"))),
        (&ca, leaf(ClientSpec::uri("spiffe://fuzz.test/sa/b"))),
        (&ca, leaf(ClientSpec::uri("spiffe://fuzz.test/sa/c"))),
        (&other_ca, leaf(ClientSpec::uri("spiffe://fuzz.test/sa/c"))),
        (&ca, leaf(ClientSpec::uri(a)).serial(&REVOKED_SERIAL)),
        (
            &ca,
            ClientSpec::uri(a).valid(
                datetime!(2000-01-01 0:00 UTC),
                datetime!(2001-01-01 0:00 UTC),
            ),
        ),
        // CN only: the CN must never be an identity.
        (&ca, leaf(ClientSpec::empty()).with_cn(a)),
        (&ca, leaf(ClientSpec::uri(a).with_uri("spiffe://fuzz.test/sa/b"))),
        (&ca, leaf(ClientSpec::uri(a)).ca()),
        (
            &ca,
            leaf(ClientSpec::uri(a)).eku(vec![ExtendedKeyUsagePurpose::ServerAuth]),
        ),
        // SAN type confusion: a DNS SAN spelling a URI principal.
        (&ca, leaf(dns("spiffe://fuzz.test/sa/a"))),
    ];
    let mut certs = Vec::new();
    let mut ders = Vec::new();
    for (issuer, spec) in specs {
        let cert = issuer.client(&spec);
        certs.push(cert.forwarded());
        ders.push(cert.der);
    }
    World {
        _dir: dir,
        registry_path,
        registry,
        certs,
        ders,
    }
}

fn write(path: &std::path::Path, contents: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create the fuzz directory");
    }
    std::fs::write(path, contents).expect("write a fuzz fixture file");
}

/// The fixed registry, from the typed config structs.
pub fn registry_file() -> RegistryFile {
    RegistryFile {
        token: TokenSection {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            ttl: std::time::Duration::from_secs(300),
            leeway: std::time::Duration::from_secs(LEEWAY as u64),
            header: "x-service-jwt".into(),
            keys: vec![
                KeyEntry {
                    kid: "k1".into(),
                    secret_file: Some("secrets/k1.key".into()),
                    ..Default::default()
                },
                KeyEntry {
                    kid: "k2".into(),
                    secret_file: Some("secrets/k2.key".into()),
                    verify_only: true,
                    ..Default::default()
                },
            ],
        },
        // Principals are accepted, so the fuzzer also reaches that path.
        identity: IdentitySection {
            require_certificate: false,
        },
        trust_domains: Default::default(),
        request: RequestSection::default(),
        revocation: RevocationSection {
            serials: vec!["0bad".into()],
            crl_files: Vec::new(),
        },
        enforcement: Default::default(),
        throttle: None,
        services: SERVICES
            .iter()
            .map(|s| ServiceEntry {
                id: s.id.into(),
                principals: s.principals.iter().map(|p| (*p).into()).collect(),
                ca_file: (s.id == "c").then(|| PathBuf::from("ca.crt")),
                scopes: vec!["read".into(), "write".into()],
                api_keys: s
                    .keys
                    .iter()
                    .enumerate()
                    .map(|(i, (key, expired))| ApiKeyEntry {
                        id: format!("k{i}"),
                        sha256: hex::encode(sha2::Sha256::digest(key.as_bytes())),
                        not_after: expired.then(|| "2020-01-01T00:00:00Z".into()),
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
    }
}

/// Every occurrence of a header, read the way Envoy may deliver it:
/// `headers` (lower-case key, exact) and `header_map` (any case; raw bytes
/// when present).
pub fn occurrences(req: &CheckRequest, name: &str) -> Vec<Vec<u8>> {
    let Some(http) = req
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
    else {
        return Vec::new();
    };
    let mut found: Vec<Vec<u8>> = http
        .headers
        .get(name)
        .map(|v| v.as_bytes().to_vec())
        .into_iter()
        .collect();
    for h in http.header_map.iter().flat_map(|m| &m.headers) {
        if h.key.eq_ignore_ascii_case(name) {
            found.push(if h.raw_value.is_empty() {
                h.value.as_bytes().to_vec()
            } else {
                h.raw_value.clone()
            });
        }
    }
    found
}

/// The decision on `req` with the fixed registry at `NOW`, as the server
/// reaches it (without its memo).
pub fn decide(req: &CheckRequest) -> Decision<'static> {
    service_auth::testkit::decide(req, &world().registry, NOW)
}

/// Checks a decision against what must hold whatever the input, then
/// checks the answer the server builds from it.
pub fn assert_justified(req: &CheckRequest, decision: Decision<'static>) {
    match &decision {
        Decision::Allow(Grant::Issue(grant)) => {
            assert_issue_allow_justified(req, Some(grant.service.id.as_str()))
        }
        Decision::Allow(Grant::Verify(grant)) => assert!(!grant.subject.is_empty()),
        Decision::Deny(_) => {}
    }
    let allowed = matches!(decision, Decision::Allow(_));
    let registry = &world().registry;
    let resp = Responses::default()
        .encode(Answer::sign(decision, registry, NOW), registry)
        .decode()
        .expect("the answer decodes");
    let code = resp.status.as_ref().map_or(-1, |s| s.code);
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    match (allowed, &resp.http_response) {
        (true, Some(HttpResponse::OkResponse(_))) => assert_eq!(code, 0),
        (false, Some(HttpResponse::DeniedResponse(d))) => {
            assert!([7, 14, 16].contains(&code), "denial with gRPC code {code}");
            let http = d.status.as_ref().map_or(0, |s| s.code);
            assert!([401, 403, 503].contains(&http), "denial with HTTP {http}");
        }
        other => panic!("response does not match the decision: {other:?}"),
    }
}

/// An issued token is justified only if the caller's identity names a
/// registered service, the API key occurs exactly once, and it is one of
/// that same service's unexpired keys.
fn assert_issue_allow_justified(req: &CheckRequest, service: Option<&str>) {
    let service = service.expect("an issue-mode allow names its service");
    let known = SERVICES
        .iter()
        .find(|s| s.id == service)
        .expect("allowed service is registered");
    let keys = occurrences(req, "x-api-key");
    assert_eq!(keys.len(), 1, "allowed with {} API key headers", keys.len());
    assert!(
        known
            .keys
            .iter()
            .any(|(k, expired)| !expired && k.as_bytes() == keys[0].as_slice()),
        "allowed as {service} with a key that is not one of its live keys: {:?}",
        String::from_utf8_lossy(&keys[0])
    );
    let source = req.attributes.as_ref().and_then(|a| a.source.as_ref());
    let certificate = source.map_or("", |s| s.certificate.as_str());
    if certificate.is_empty() {
        let principal = source.map_or("", |s| s.principal.as_str());
        assert!(
            known
                .principals
                .iter()
                .any(|p| *p == principal
                    || (!p.contains("://") && p.eq_ignore_ascii_case(principal))),
            "allowed as {service} by principal {principal:?}"
        );
        assert!(service != "c", "c needs a certificate from its CA");
    } else {
        // The forwarded certificate must be one of the pool's valid leaves for
        // this service, possibly re-encoded: compare the DER.
        let der = service_auth::identity::PeerCertificate::from_forwarded(certificate)
            .expect("allowed with a certificate that does not parse")
            .der()
            .to_vec();
        let w = world();
        let index = w.ders.iter().position(|d| *d == der);
        let valid_for = |i: usize| match i {
            0 | 1 => "a",
            2 => "b",
            3 => "c",
            _ => "",
        };
        match index {
            Some(i) => assert_eq!(valid_for(i), service, "pool certificate {i} allowed"),
            // A certificate the fuzzer made up can only be accepted for a
            // service without a CA: Envoy's TLS handshake, not the sidecar,
            // vouches for such certificates.
            None => assert!(service != "c", "a forged certificate passed c's CA check"),
        }
    }
}
