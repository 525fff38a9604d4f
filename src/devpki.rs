//! The development PKI behind `service-auth dev-pki DIR`. **Development only.**
//!
//! This module owns generating, into one directory, everything the demos
//! (and the tests that prove the demos work) need: a root CA and the
//! intermediate CA that issues every workload certificate, for each of two
//! SPIFFE trust domains (a federated mesh), Envoy's server certificate, a
//! client certificate and an API key for each demo service,
//! the hop CA and its two certificates, token keys, and a registry and
//! static config naming them. Every certificate comes from
//! [`pki`](crate::pki), the one PKI builder the tests share too;
//! this module chooses what to issue and where it goes. Nothing here is fit
//! for production (keys are generated on the developer's machine and the CA
//! keys sit next to the certificates), but it is a real PKI, so the demo
//! runs every check the sidecar makes in production: SAN, the chain through
//! the intermediate to the trust domain's root, EKU, API key, scopes.
//!
//! Layout, relative to DIR (Envoy's working directory gets `certs/` only):
//!
//! ```text
//! certs/ca.crt                      both domains' roots (mesh.local first): Envoy's
//!                                   trusted_ca, curl's --cacert
//! certs/mesh-bundle.pem             root + intermediate: the registry's bundle for
//!                                   trust domain mesh.local
//! certs/partner-bundle.pem          the same for trust domain partner.local
//! certs/envoy.crt, certs/envoy.key  Envoy's server certificate, then the intermediate
//! certs/hop-ca.crt                  the hop CA: signs only the two below
//! certs/envoy-client.{crt,key}      Envoy's client certificate for the mTLS hop
//!                                   (envoy/envoy-mtls-hop.yaml)
//! sidecar/sidecar.{crt,key}         the sidecar's `listen.tls` certificate
//! ca/*.key                          the CA keys (ca, intermediate, partner-ca,
//!                                   partner-intermediate, hop-ca), to sign more
//!                                   certificates; mount them nowhere
//! clients/<service>.{crt,key}       for curl, one pair per demo service (the
//!                                   certificate, then its domain's intermediate)
//! secrets/jwt-signing.key           the HS256 secret that signs tokens
//! keys/ed25519.pem, keys/ed25519.pub  an Ed25519 pair, published (verify-only)
//! registry.yaml, service-auth.yaml  the sidecar's two files
//! ```
//!
//! Private keys and the secret are created with mode 0600. Nothing is
//! overwritten unless asked: a second run would otherwise silently invalidate
//! the keys and certificates already handed out.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use time::{Duration, OffsetDateTime};

use crate::keys::{self, Algorithm, KeyError};
use crate::pki::{Ca, ClientSpec, Issued, PkiError, ca_params};
use crate::registry::{hash_api_key, random_secret};

/// The main demo services' SPIFFE trust domain: the registry's
/// `trust_domains` maps it to `certs/mesh-bundle.pem`.
pub const TRUST_DOMAIN: &str = "mesh.local";

/// A second, federated trust domain with its own CAs
/// (`certs/partner-bundle.pem`): Envoy trusts both roots, and only the
/// sidecar knows which CA may speak for which name.
pub const PARTNER_TRUST_DOMAIN: &str = "partner.local";

/// Where the demo's sidecar sends OTLP metrics: the collector in docker-compose.
pub const DEMO_OTLP_ENDPOINT: &str = "http://otel-collector:4317";

/// The generated config's admin listener (JWKS, probes): loopback only.
pub const DEMO_ADMIN_ADDR: &str = "127.0.0.1:9192";

/// Names Envoy's server certificate answers to: the compose service name
/// (its CN), the host (curl to localhost), and the loopback address.
pub const ENVOY_SERVER_NAMES: [&str; 3] = ["envoy", "localhost", "127.0.0.1"];
/// Names the sidecar's `listen.tls` certificate answers to (envoy/envoy-mtls-hop.yaml checks `service-auth`).
pub const SIDECAR_SERVER_NAMES: [&str; 2] = ["service-auth", "localhost"];

/// Validity of every leaf certificate, from a day ago.
const LEAF_DAYS: i64 = 90;
/// Validity of the intermediate CA, from a day ago: longer than its leaves.
const INTERMEDIATE_DAYS: i64 = 180;

/// A demo service: its registry id, the scopes it is allowed and the trust
/// domain its certificate comes from.
pub struct DemoService {
    pub id: &'static str,
    pub scopes: &'static [&'static str],
    pub trust_domain: &'static str,
}

/// Services with different scopes, so the demo can show an allowed call and
/// a forbidden one (billing may read but not write), and one from the
/// federated domain.
pub const DEMO_SERVICES: [DemoService; 3] = [
    DemoService {
        id: "api_service",
        scopes: &["read", "write"],
        trust_domain: TRUST_DOMAIN,
    },
    DemoService {
        id: "billing",
        scopes: &["read"],
        trust_domain: TRUST_DOMAIN,
    },
    DemoService {
        id: "reports",
        scopes: &["read"],
        trust_domain: PARTNER_TRUST_DOMAIN,
    },
];

/// What `generate` produced that is not in a file: the API keys, which exist
/// in plaintext only here (the registry holds their hashes).
pub struct Generated {
    pub services: Vec<GeneratedService>,
}

pub struct GeneratedService {
    pub id: String,
    pub principal: String,
    pub api_key: String,
    /// Client certificate chain and key, relative to DIR.
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DevPkiError {
    #[error("refusing to overwrite existing files (use --force): {}", list(.0))]
    Exists(Vec<PathBuf>),
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot generate a certificate: {0}")]
    Certificate(PkiError),
    #[error("cannot generate the Ed25519 token key: {0}")]
    TokenKey(KeyError),
}

// By hand: `#[from]` would also make the error its source, and a caller
// printing the chain would print it twice.
impl From<PkiError> for DevPkiError {
    fn from(error: PkiError) -> Self {
        DevPkiError::Certificate(error)
    }
}

impl From<KeyError> for DevPkiError {
    fn from(error: KeyError) -> Self {
        DevPkiError::TokenKey(error)
    }
}

fn list(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

/// One file to write: path relative to DIR, contents, whether it is secret.
struct Output {
    path: PathBuf,
    contents: Vec<u8>,
    secret: bool,
}

/// The files to write, collected before anything touches the disk.
#[derive(Default)]
struct Outputs(Vec<Output>);

impl Outputs {
    fn public(&mut self, path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) {
        self.0.push(Output {
            path: path.into(),
            contents: contents.into(),
            secret: false,
        });
    }

    fn secret(&mut self, path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) {
        self.0.push(Output {
            path: path.into(),
            contents: contents.into(),
            secret: true,
        });
    }

    /// `<stem>.crt` (the certificate, then `chain`) and `<stem>.key`.
    fn pair(&mut self, stem: &str, issued: &Issued, chain: &[&Ca]) {
        self.public(format!("{stem}.crt"), issued.chain_pem(chain));
        self.secret(format!("{stem}.key"), issued.key_pem.as_str());
    }
}

/// Generates the whole development PKI into `dir`. With `force: false`, fails
/// before writing anything if any of the files already exists.
pub fn generate(dir: &Path, force: bool) -> Result<Generated, DevPkiError> {
    let now = OffsetDateTime::now_utc();
    let mut out = Outputs::default();

    // Each trust domain's CA, shaped as production meshes run it: a root
    // that signs only the intermediate, which issues every workload
    // certificate. Envoy trusts the roots alone, so each peer presents its
    // chain; the sidecar sees only the leaf Envoy forwards, so each domain's
    // bundle holds both CAs.
    let (root, intermediate) = domain_ca("", now)?;
    let (partner_root, partner_intermediate) = domain_ca("partner ", now)?;
    out.secret("ca/ca.key", root.key_pem());
    out.secret("ca/intermediate.key", intermediate.key_pem());
    out.secret("ca/partner-ca.key", partner_root.key_pem());
    out.secret(
        "ca/partner-intermediate.key",
        partner_intermediate.key_pem(),
    );
    out.public("certs/ca.crt", Ca::bundle_pem(&[&root, &partner_root]));
    out.public(
        "certs/mesh-bundle.pem",
        Ca::bundle_pem(&[&root, &intermediate]),
    );
    out.public(
        "certs/partner-bundle.pem",
        Ca::bundle_pem(&[&partner_root, &partner_intermediate]),
    );
    let envoy = intermediate.try_server(&ENVOY_SERVER_NAMES, LEAF_DAYS)?;
    out.pair("certs/envoy", &envoy, &[&intermediate]);

    // The Envoy -> sidecar hop, for `listen.tls` and envoy/envoy-mtls-hop.yaml,
    // has a CA of its own: the mesh CA signs every workload, and any of them
    // could otherwise open the hop (client_ca) or pose as the sidecar.
    let hop_ca = Ca::try_root("service-auth DEVELOPMENT hop CA", Some(0))?;
    out.secret("ca/hop-ca.key", hop_ca.key_pem());
    out.public("certs/hop-ca.crt", hop_ca.cert_pem());
    let sidecar = hop_ca.try_server(&SIDECAR_SERVER_NAMES, LEAF_DAYS)?;
    out.pair("sidecar/sidecar", &sidecar, &[]);
    // The sidecar's `client_ca` check is what Envoy's client certificate
    // proves, so it carries no service identity.
    let hop_client = hop_ca.try_client(&leaf("envoy ext_authz client", now))?;
    out.pair("certs/envoy-client", &hop_client, &[]);

    let mut services = Vec::new();
    for service in &DEMO_SERVICES {
        let domain = service.trust_domain;
        let principal = format!("spiffe://{domain}/ns/default/sa/{}", service.id);
        // Its identity is the URI SAN; the CN repeats the id for humans only.
        let spec = leaf(service.id, now).try_with_uri(&principal)?;
        let stem = format!("clients/{}", service.id);
        let issuer = if domain == TRUST_DOMAIN {
            &intermediate
        } else {
            &partner_intermediate
        };
        out.pair(&stem, &issuer.try_client(&spec)?, &[issuer]);
        services.push(GeneratedService {
            id: service.id.to_owned(),
            principal,
            api_key: random_secret(),
            cert: PathBuf::from(format!("{stem}.crt")),
            key: PathBuf::from(format!("{stem}.key")),
        });
    }

    out.secret("secrets/jwt-signing.key", format!("{}\n", random_secret()));
    let (ed_private, ed_public) = keys::generate_pair(Algorithm::EdDsa)?;
    out.secret("keys/ed25519.pem", ed_private.as_bytes());
    out.public("keys/ed25519.pub", ed_public);
    out.public("registry.yaml", registry_yaml(&services, now));
    out.public("service-auth.yaml", static_config_yaml());

    write_all(dir, &out.0, force)?;
    Ok(Generated { services })
}

/// A trust domain's root (path length 1) and the intermediate it signs
/// (path length 0), named with `prefix`.
fn domain_ca(prefix: &str, now: OffsetDateTime) -> Result<(Ca, Ca), PkiError> {
    let root = Ca::try_root(
        &format!("service-auth DEVELOPMENT {prefix}root CA"),
        Some(1),
    )?;
    let intermediate = root.intermediate_from(ca_params(
        &format!("service-auth DEVELOPMENT {prefix}intermediate CA"),
        Some(0),
        now - Duration::days(1),
        now + Duration::days(INTERMEDIATE_DAYS),
    ))?;
    Ok((root, intermediate))
}

/// A client certificate (EKU clientAuth) named `cn`, valid for [`LEAF_DAYS`].
fn leaf(cn: &str, now: OffsetDateTime) -> ClientSpec {
    ClientSpec::empty()
        .with_cn(cn)
        .valid(now - Duration::days(1), now + Duration::days(LEAF_DAYS))
}

fn registry_yaml(services: &[GeneratedService], now: OffsetDateTime) -> String {
    let date = now.date();
    let mut yaml = format!(
        "# Generated by `service-auth dev-pki` on {date}. DEVELOPMENT ONLY: the keys were\n\
         # made on this machine and the CA keys (ca/) lie beside them.\n\
         # API keys are stored as SHA-256 hashes; the keys were printed once, when generated.\n\
         token:\n  issuer: https://service-auth.mesh.local\n  audience: orders\n  ttl: 5m\n  leeway: 30s\n  header: x-service-jwt\n\
         \x20 keys:                             # the first key that may sign now signs; every key verifies\n\
         \x20   - kid: dev-{date}\n\
         \x20     secret_file: secrets/jwt-signing.key   # HS256: a DEVELOPMENT secret dev-pki generated\n\
         \x20   # An Ed25519 pair (keys/ed25519.pem, mode 0600; keys/ed25519.pub): verify-only, so it\n\
         \x20   # signs nothing but is published at the admin listener's /.well-known/jwks.json.\n\
         \x20   # To sign with it: replace its last two lines by `private_key_file: keys/ed25519.pem`\n\
         \x20   # and give the key above `verify_only: true` (its tokens verify until they expire).\n\
         \x20   - kid: dev-ed25519-{date}\n\
         \x20     algorithm: EdDSA\n\
         \x20     public_key_file: keys/ed25519.pub\n\
         \x20     verify_only: true\n\
         trust_domains:                      # a spiffe:// SAN must chain to its own domain's bundle\n\
         \x20 {TRUST_DOMAIN}: certs/mesh-bundle.pem # the development root and intermediate CA\n\
         \x20 {PARTNER_TRUST_DOMAIN}: certs/partner-bundle.pem # a federated domain with CAs of its own\n\
         request:\n  api_key_header: x-api-key\n  scope_header: x-auth-scope\n  forward_api_key: false\n\
         revocation:\n  serials: []\n  crl_files: []\n\
         services:\n"
    );
    for (service, demo) in services.iter().zip(&DEMO_SERVICES) {
        yaml.push_str(&format!(
            "  - id: {}\n    principals:\n      - {}\n    scopes: [{}]\n    api_keys:\n      - id: dev-{date}\n        sha256: \"{}\"\n",
            service.id,
            service.principal,
            demo.scopes.join(", "),
            hex::encode(hash_api_key(service.api_key.as_bytes())),
        ));
    }
    yaml
}

fn static_config_yaml() -> String {
    format!(
        "# Generated by `service-auth dev-pki`. DEVELOPMENT ONLY.\n\
         listen:\n  grpc: 127.0.0.1:9191              # Envoy reaches it over the shared loopback\n\
         \x20 # With envoy/envoy-mtls-hop.yaml, uncomment: only Envoy's certificate from the hop CA gets in.\n\
         \x20 # tls:\n\
         \x20 #   cert: sidecar/sidecar.crt\n\
         \x20 #   key: sidecar/sidecar.key\n\
         \x20 #   client_ca: certs/hop-ca.crt\n\
         admin:                              # plain HTTP, loopback only: GET /.well-known/jwks.json,\n\
         \x20 listen: {DEMO_ADMIN_ADDR}            # /healthz, /readyz\n\
         registry: registry.yaml\n\
         reload:\n  poll_interval: 2s\n\
         telemetry:\n  service_name: service-auth\n  otlp:\n    endpoint: {DEMO_OTLP_ENDPOINT}   # the collector in docker-compose.yml\n    protocol: grpc\n    interval: 10s\n\
         log:\n  format: json\n  level: info\n"
    )
}

fn write_all(dir: &Path, outputs: &[Output], force: bool) -> Result<(), DevPkiError> {
    let existing: Vec<PathBuf> = outputs
        .iter()
        .map(|o| dir.join(&o.path))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    if !force && !existing.is_empty() {
        return Err(DevPkiError::Exists(existing));
    }
    for output in outputs {
        let path = dir.join(&output.path);
        let io_err = |error| DevPkiError::Io {
            path: path.clone(),
            error,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        // Remove, then create_new: an overwritten key must not inherit the
        // old file's (possibly looser) mode, and a non-forced run must not
        // follow a file that appeared after the check above.
        if force && existing.contains(&path) {
            std::fs::remove_file(&path).map_err(io_err)?;
        }
        let mode = if output.secret { 0o600 } else { 0o644 };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(io_err)?;
        file.write_all(&output.contents).map_err(io_err)?;
    }
    Ok(())
}
