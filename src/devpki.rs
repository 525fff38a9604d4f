//! The development PKI behind `service-auth dev-pki DIR`. **Development only.**
//!
//! This module owns generating, into one directory, everything the
//! docker-compose demo (and the test that proves the demo works) needs: a CA,
//! Envoy's server certificate, a client certificate and an API key for each
//! demo service, a signing secret, and a registry and static config naming
//! them. Nothing here is fit for production — keys are generated on the
//! developer's machine, the CA key sits next to the certificates, and the
//! layout is chosen for a demo — but it is real PKI, so the demo runs every
//! check the sidecar makes in production (SAN, CA, EKU, API key, scopes).
//!
//! Layout, relative to DIR (Envoy's working directory gets `certs/` only):
//!
//! ```text
//! certs/ca.crt, certs/envoy.crt, certs/envoy.key   what envoy/envoy.yaml reads
//! certs/hop-ca.crt                                 the hop CA: signs only the two below
//! certs/envoy-client.{crt,key}                     Envoy's client certificate for the
//!                                                  mTLS hop (envoy/envoy-mtls-hop.yaml)
//! sidecar/sidecar.{crt,key}                        the sidecar's `listen.tls` certificate
//! ca/ca.key, ca/hop-ca.key                         to sign more certificates; mount them nowhere
//! clients/<service>.crt, clients/<service>.key     for curl, one pair per demo service
//! secrets/jwt-signing.key                          HS256 secret named by the registry
//! registry.yaml, service-auth.yaml                 the sidecar's two files
//! ```
//!
//! Private keys and the secret are created with mode 0600. Nothing is
//! overwritten unless asked: a second run would otherwise silently invalidate
//! the keys and certificates already handed out.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::registry::{hash_api_key, random_secret};

/// Prefix of the demo services' SPIFFE IDs; the service id follows.
pub const SPIFFE_PREFIX: &str = "spiffe://mesh.local/ns/default/sa/";

/// Where the demo's sidecar sends OTLP metrics: the collector in docker-compose.
pub const DEMO_OTLP_ENDPOINT: &str = "http://otel-collector:4317";

/// Names Envoy's server certificate answers to: the host (curl to
/// localhost), the compose service name, and the loopback address.
pub const ENVOY_SERVER_NAMES: [&str; 3] = ["localhost", "envoy", "127.0.0.1"];
/// Names the sidecar's `listen.tls` certificate answers to (envoy/envoy-mtls-hop.yaml checks `service-auth`).
pub const SIDECAR_SERVER_NAMES: [&str; 2] = ["service-auth", "localhost"];

/// A demo service: its registry id and the scopes it is allowed.
pub struct DemoService {
    pub id: &'static str,
    pub scopes: &'static [&'static str],
}

/// Two services with different scopes, so the demo can show an allowed call
/// and a forbidden one (billing may read but not write).
pub const DEMO_SERVICES: [DemoService; 2] = [
    DemoService {
        id: "api_service",
        scopes: &["read", "write"],
    },
    DemoService {
        id: "billing",
        scopes: &["read"],
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
    /// Client certificate and key, relative to DIR.
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
    Certificate(rcgen::Error),
}

// By hand: `#[from]` would also make the error its source, and a caller
// printing the chain would print it twice.
impl From<rcgen::Error> for DevPkiError {
    fn from(error: rcgen::Error) -> Self {
        DevPkiError::Certificate(error)
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

impl Output {
    fn public(path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> Self {
        Output {
            path: path.into(),
            contents: contents.into(),
            secret: false,
        }
    }

    fn secret(path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> Self {
        Output {
            secret: true,
            ..Output::public(path, contents)
        }
    }
}

/// Generates the whole development PKI into `dir`. With `force: false`, fails
/// before writing anything if any of the files already exists.
pub fn generate(dir: &Path, force: bool) -> Result<Generated, DevPkiError> {
    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate()?;
    let mut outputs = vec![Output::secret("ca/ca.key", ca_key.serialize_pem())];
    let ca = CertifiedIssuer::self_signed(ca_params("service-auth DEVELOPMENT CA", now), ca_key)?;
    outputs.push(Output::public("certs/ca.crt", ca.pem()));

    let (cert, key) = sign(server_params("envoy", &ENVOY_SERVER_NAMES, now)?, &ca)?;
    outputs.push(Output::public("certs/envoy.crt", cert));
    outputs.push(Output::secret("certs/envoy.key", key));

    // The Envoy -> sidecar hop, for `listen.tls` and envoy/envoy-mtls-hop.yaml,
    // has a CA of its own: the mesh CA signs every workload, and any of them
    // could otherwise open the hop (client_ca) or pose as the sidecar.
    let hop_ca_key = KeyPair::generate()?;
    outputs.push(Output::secret("ca/hop-ca.key", hop_ca_key.serialize_pem()));
    let hop_ca = CertifiedIssuer::self_signed(
        ca_params("service-auth DEVELOPMENT hop CA", now),
        hop_ca_key,
    )?;
    outputs.push(Output::public("certs/hop-ca.crt", hop_ca.pem()));
    let (cert, key) = sign(
        server_params("service-auth", &SIDECAR_SERVER_NAMES, now)?,
        &hop_ca,
    )?;
    outputs.push(Output::public("sidecar/sidecar.crt", cert));
    outputs.push(Output::secret("sidecar/sidecar.key", key));
    let (cert, key) = sign(hop_client_params(now), &hop_ca)?;
    outputs.push(Output::public("certs/envoy-client.crt", cert));
    outputs.push(Output::secret("certs/envoy-client.key", key));

    let mut services = Vec::new();
    for service in &DEMO_SERVICES {
        let principal = format!("{SPIFFE_PREFIX}{}", service.id);
        let (cert, key) = sign(client_params(service.id, &principal, now)?, &ca)?;
        let generated = GeneratedService {
            id: service.id.to_owned(),
            principal,
            api_key: random_secret(),
            cert: PathBuf::from(format!("clients/{}.crt", service.id)),
            key: PathBuf::from(format!("clients/{}.key", service.id)),
        };
        outputs.push(Output::public(&generated.cert, cert));
        outputs.push(Output::secret(&generated.key, key));
        services.push(generated);
    }

    outputs.push(Output::secret(
        "secrets/jwt-signing.key",
        format!("{}\n", random_secret()),
    ));
    outputs.push(Output::public(
        "registry.yaml",
        registry_yaml(&services, now),
    ));
    outputs.push(Output::public("service-auth.yaml", static_config_yaml()));

    write_all(dir, &outputs, force)?;
    Ok(Generated { services })
}

fn ca_params(name: &str, now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(365);
    params
}

fn server_params(
    cn: &str,
    names: &[&str],
    now: OffsetDateTime,
) -> Result<CertificateParams, rcgen::Error> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(90);
    Ok(params)
}

/// Envoy's client certificate for the hop to the sidecar: the sidecar's
/// `client_ca` check is what it proves, so it carries no service identity.
fn hop_client_params(now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "envoy ext_authz client");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(90);
    params
}

/// A client certificate whose identity is its URI SAN. The CN repeats the
/// service id for humans only: the sidecar never reads it.
fn client_params(
    id: &str,
    principal: &str,
    now: OffsetDateTime,
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, id);
    params.subject_alt_names = vec![SanType::URI(principal.try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(90);
    Ok(params)
}

/// Signs `params` with a fresh key; returns (certificate PEM, key PEM).
fn sign(
    params: CertificateParams,
    ca: &CertifiedIssuer<'_, KeyPair>,
) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn registry_yaml(services: &[GeneratedService], now: OffsetDateTime) -> String {
    let date = now.date();
    let mut yaml = format!(
        "# Generated by `service-auth dev-pki` on {date}. DEVELOPMENT ONLY.\n\
         # API keys are stored as SHA-256 hashes; the keys were printed once, when generated.\n\
         token:\n  issuer: https://service-auth.mesh.local\n  audience: orders\n  ttl: 5m\n  leeway: 30s\n  header: x-service-jwt\n  keys:\n    - kid: dev-{date}\n      secret_file: secrets/jwt-signing.key\n\
         request:\n  api_key_header: x-api-key\n  scope_header: x-auth-scope\n  forward_api_key: false\n\
         revocation:\n  serials: []\n  crl_files: []\n\
         services:\n"
    );
    for (service, demo) in services.iter().zip(&DEMO_SERVICES) {
        yaml.push_str(&format!(
            "  - id: {}\n    principals:\n      - {}\n    ca_file: certs/ca.crt\n    scopes: [{}]\n    api_keys:\n      - id: dev-{date}\n        sha256: \"{}\"\n",
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
