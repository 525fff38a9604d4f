//! Helpers shared by the integration and end-to-end tests.
#![allow(dead_code)] // each test binary uses a different subset

pub mod dev_pki;
pub mod otlp;
pub mod pki;
pub mod procs;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use service_auth::registry::Registry;

/// The signing secret the fixtures use (tests only).
pub const SECRET: &str = "test-signing-secret-0123456789abcdef-0123456789";
pub const ISSUER: &str = "https://service-auth.test";
pub const AUDIENCE: &str = "orders";

pub fn sha256_hex(data: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data.as_bytes()))
}

/// One service in a generated registry.
#[derive(Clone, Default)]
pub struct Svc {
    pub id: String,
    pub principals: Vec<String>,
    pub scopes: Vec<String>,
    /// (key id, plaintext key, optional RFC 3339 not_after)
    pub keys: Vec<(String, String, Option<String>)>,
    pub ca_file: Option<String>,
    pub pins: Vec<String>,
}

impl Svc {
    pub fn new(id: &str, principal: &str, key: &str) -> Self {
        Svc {
            id: id.into(),
            principals: vec![principal.into()],
            scopes: vec!["read".into(), "write".into()],
            keys: vec![("k1".into(), key.into(), None)],
            ..Default::default()
        }
    }
}

/// A registry directory: `registry.yaml`, a secret file, and a static config.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub extra: String,
}

impl Fixture {
    pub fn new(services: &[Svc]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
        std::fs::write(dir.path().join("secrets/jwt.key"), SECRET).unwrap();
        let fixture = Fixture {
            dir,
            extra: String::new(),
        };
        fixture.write_registry(services);
        fixture
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn registry_path(&self) -> PathBuf {
        self.dir.path().join("registry.yaml")
    }

    pub fn write_registry(&self, services: &[Svc]) {
        std::fs::write(self.registry_path(), registry_yaml(services, &self.extra)).unwrap();
    }

    pub fn load(&self) -> Registry {
        Registry::load(&self.registry_path()).unwrap_or_else(|e| {
            panic!(
                "fixture registry invalid: {:?}",
                e.iter().map(|e| e.to_string()).collect::<Vec<_>>()
            )
        })
    }

    /// Writes `service-auth.yaml` listening on `grpc` and returns its path.
    pub fn write_config(&self, grpc: &str, extra: &str) -> PathBuf {
        let path = self.dir.path().join("service-auth.yaml");
        std::fs::write(
            &path,
            format!(
                "listen:\n  grpc: {grpc}\nregistry: registry.yaml\nreload:\n  poll_interval: 200ms\nlog:\n  format: json\n  level: info\n{extra}"
            ),
        )
        .unwrap();
        path
    }
}

/// Registry YAML for `services`; `revocation` is extra top-level YAML.
pub fn registry_yaml(services: &[Svc], extra: &str) -> String {
    let mut y = format!(
        "token:\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  ttl: 5m\n  leeway: 30s\n  header: x-service-jwt\n  keys:\n    - kid: test-1\n      secret_file: secrets/jwt.key\nrequest:\n  api_key_header: x-api-key\n  scope_header: x-auth-scope\n  forward_api_key: false\n{extra}services:\n"
    );
    if services.is_empty() {
        y.push_str("  []\n");
    }
    for s in services {
        y.push_str(&format!("  - id: {}\n    principals:\n", s.id));
        for p in &s.principals {
            y.push_str(&format!("      - {p:?}\n"));
        }
        if let Some(ca) = &s.ca_file {
            y.push_str(&format!("    ca_file: {ca}\n"));
        }
        if !s.pins.is_empty() {
            y.push_str(&format!("    certificate_sha256: {:?}\n", s.pins));
        }
        y.push_str(&format!("    scopes: {:?}\n    api_keys:\n", s.scopes));
        if s.keys.is_empty() {
            y.push_str("      []\n");
        }
        for (id, key, not_after) in &s.keys {
            y.push_str(&format!(
                "      - id: {id}\n        sha256: \"{}\"\n",
                sha256_hex(key)
            ));
            if let Some(t) = not_after {
                y.push_str(&format!("        not_after: {t}\n"));
            }
        }
    }
    y
}

/// Builds a CheckRequest as Envoy would send it.
#[derive(Default, Clone)]
pub struct Req {
    pub certificate: Option<String>,
    pub principal: Option<String>,
    pub headers: Vec<(String, String)>,
    /// Headers delivered in `header_map` (Envoy's `encode_raw_headers`).
    pub raw_headers: Vec<(String, Vec<u8>)>,
    pub ext: Vec<(String, String)>,
}

impl Req {
    pub fn cert(forwarded: String) -> Self {
        Req {
            certificate: Some(forwarded),
            ..Default::default()
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn raw_header(mut self, k: &str, v: &[u8]) -> Self {
        self.raw_headers.push((k.into(), v.to_vec()));
        self
    }

    pub fn key(self, key: &str) -> Self {
        self.header("x-api-key", key)
    }

    pub fn ext(mut self, k: &str, v: &str) -> Self {
        self.ext.push((k.into(), v.into()));
        self
    }

    pub fn build(&self) -> CheckRequest {
        let headers: HashMap<String, String> = self.headers.iter().cloned().collect();
        let header_map = (!self.raw_headers.is_empty()).then(|| HeaderMap {
            headers: self
                .raw_headers
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: k.clone(),
                    raw_value: v.clone(),
                    ..Default::default()
                })
                .collect(),
        });
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    certificate: self.certificate.clone().unwrap_or_default(),
                    principal: self.principal.clone().unwrap_or_default(),
                    ..Default::default()
                }),
                request: Some(Request {
                    http: Some(HttpRequest {
                        id: "req-1".into(),
                        method: "GET".into(),
                        path: "/".into(),
                        headers,
                        header_map,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: self.ext.iter().cloned().collect(),
                ..Default::default()
            }),
        }
    }
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
