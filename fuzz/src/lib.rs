//! What the fuzz targets share: a small fixed registry on disk, a pool of
//! real certificates for it, and oracles that state — independently of the
//! code under test — when an Allow is justified.
//!
//! Everything is built once per process (`world()`), with a fixed clock
//! (`NOW`), so a crashing input replays the same way anywhere.

use std::path::PathBuf;
use std::sync::OnceLock;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType, SerialNumber,
};
use service_auth::check::{Decision, Mode};
use service_auth::registry::Registry;
use service_auth::server::to_response;
use sha2::Digest;

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
    let ca = new_ca("fuzz CA");
    let other_ca = new_ca("someone else's CA");
    std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
    for (kid, secret) in SECRETS {
        std::fs::write(dir.path().join(format!("secrets/{kid}.key")), secret).unwrap();
    }
    std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
    let registry_path = dir.path().join("registry.yaml");
    std::fs::write(&registry_path, registry_yaml()).unwrap();
    let registry = Registry::load(&registry_path).expect("fuzz registry is valid");

    let uri = |u: &str| SanType::URI(u.try_into().unwrap());
    let dns = |d: &str| SanType::DnsName(d.try_into().unwrap());
    let a = "spiffe://fuzz.test/sa/a";
    let specs: Vec<(&CertifiedIssuer<'static, KeyPair>, CertificateParams)> = vec![
        (&ca, leaf(vec![uri(a)])),
        (&ca, leaf(vec![dns("A.Fuzz.Test")])),
        (&ca, leaf(vec![uri("spiffe://fuzz.test/sa/b")])),
        (&ca, leaf(vec![uri("spiffe://fuzz.test/sa/c")])),
        (&other_ca, leaf(vec![uri("spiffe://fuzz.test/sa/c")])),
        (&ca, {
            let mut p = leaf(vec![uri(a)]);
            p.serial_number = Some(SerialNumber::from_slice(&REVOKED_SERIAL));
            p
        }),
        (&ca, {
            let mut p = leaf(vec![uri(a)]);
            p.not_before = time::macros::datetime!(2000-01-01 0:00 UTC);
            p.not_after = time::macros::datetime!(2001-01-01 0:00 UTC);
            p
        }),
        // CN only: the CN must never be an identity.
        (&ca, {
            let mut p = leaf(Vec::new());
            p.distinguished_name.push(DnType::CommonName, a);
            p
        }),
        (&ca, leaf(vec![uri(a), uri("spiffe://fuzz.test/sa/b")])),
        (&ca, {
            let mut p = leaf(vec![uri(a)]);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p
        }),
        (&ca, {
            let mut p = leaf(vec![uri(a)]);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            p
        }),
        // SAN type confusion: a DNS SAN spelling a URI principal.
        (&ca, leaf(vec![dns("spiffe://fuzz.test/sa/a")])),
    ];
    let mut certs = Vec::new();
    let mut ders = Vec::new();
    for (issuer, params) in specs {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        certs.push(forwarded(&cert.pem()));
        ders.push(cert.der().to_vec());
    }
    World {
        _dir: dir,
        registry_path,
        registry,
        certs,
        ders,
    }
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A client leaf valid at `NOW` (rcgen's default window is 1975..4096).
fn leaf(sans: Vec<SanType>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "fuzz client");
    p.subject_alt_names = sans;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p
}

/// URL-encodes PEM the way Envoy forwards `source.certificate`.
pub fn forwarded(pem: &str) -> String {
    let mut out = String::with_capacity(pem.len() * 3);
    for b in pem.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn registry_yaml() -> String {
    let mut y = format!(
        "token:\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  ttl: 5m\n  leeway: {LEEWAY}s\n  keys:\n    - kid: k1\n      secret_file: secrets/k1.key\n    - kid: k2\n      secret_file: secrets/k2.key\n      verify_only: true\nrevocation:\n  serials: [\"0bad\"]\nservices:\n"
    );
    for s in &SERVICES {
        y.push_str(&format!(
            "  - id: {}\n    scopes: [read, write]\n    principals: {:?}\n",
            s.id, s.principals
        ));
        if s.id == "c" {
            y.push_str("    ca_file: ca.crt\n");
        }
        y.push_str("    api_keys:\n");
        for (i, (key, expired)) in s.keys.iter().enumerate() {
            y.push_str(&format!(
                "      - id: k{i}\n        sha256: {}\n",
                hex::encode(sha2::Sha256::digest(key.as_bytes()))
            ));
            if *expired {
                y.push_str("        not_after: 2020-01-01T00:00:00Z\n");
            }
        }
    }
    y
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

/// Checks a decision against what must hold whatever the input, then
/// checks its translation into a `CheckResponse`.
pub fn assert_justified(req: &CheckRequest, decision: Decision<'_>) {
    if let Decision::Allow(allow) = &decision {
        match allow.mode {
            Mode::Issue => assert_issue_allow_justified(req, allow.service),
            Mode::Verify => {
                assert_eq!(allow.set_header.0, "x-service-id");
                assert!(!allow.set_header.1.is_empty());
            }
        }
    }
    let allowed = matches!(decision, Decision::Allow(_));
    let resp = to_response(decision);
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
