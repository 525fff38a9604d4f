//! The listener's mTLS layer: building the rustls server configuration from
//! `listen.tls`, keeping it current as the files change, and the hop-client
//! allow-list (`allowed_sans`).
//!
//! The allow-list is checked inside the client-certificate verifier, so it
//! is part of the `ServerConfig` that a reload swaps: a handshake always
//! sees the certificate, CA and allow-list of one consistent load. A client
//! it refuses gets the TLS alert `access_denied` right after sending its
//! certificate (the end of its handshake, in TLS 1.3) and never reaches
//! HTTP/2.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use crate::config::{self, ConfigError, ListenTls, MAX_AUX_FILE_BYTES};
use crate::identity::{self, PeerCertificate, San, SanKind};
use crate::watch::FileWatch;

/// Why `listen.tls` cannot be served. Each names the key of `listen.tls`
/// (and the file) it is about.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read (the error names it), or is over the cap.
    #[error("listen.tls.{field}: {error}")]
    Read {
        field: &'static str,
        error: ConfigError,
    },
    #[error("listen.tls.{field}: {}: {problem}", path.display())]
    Content {
        field: &'static str,
        path: PathBuf,
        problem: PemProblem,
    },
    #[error(
        "listen.tls.key: {}: the private key does not belong to the certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// Anything else rustls refuses in the certificate and key.
    #[error("listen.tls.cert, listen.tls.key: {0}")]
    Rustls(rustls::Error),
    #[error("listen.tls.client_ca: {0}")]
    Verifier(rustls::server::VerifierBuilderError),
}

/// What is wrong inside a `listen.tls` file, in words (not the PEM
/// parser's byte dumps).
#[derive(Debug, thiserror::Error)]
pub enum PemProblem {
    #[error("no CERTIFICATE block in the file")]
    NoCertificate,
    #[error("no private key block in the file (PKCS#8, PKCS#1 or SEC1 PEM)")]
    NoKey,
    #[error("a PEM block has no END line: the file is truncated")]
    Truncated,
    #[error("a PEM BEGIN line is malformed")]
    BadBeginLine,
    #[error("a PEM block is not valid base64")]
    BadBase64,
    #[error("the PEM is malformed")]
    Malformed,
    #[error("certificate {index} is not a valid X.509 certificate")]
    BadCertificate { index: usize },
    #[error("certificate {index} cannot be a trust anchor: {error}")]
    BadAnchor { index: usize, error: rustls::Error },
}

impl From<rustls::pki_types::pem::Error> for PemProblem {
    fn from(error: rustls::pki_types::pem::Error) -> Self {
        use rustls::pki_types::pem::Error;
        match error {
            Error::MissingSectionEnd { .. } => PemProblem::Truncated,
            Error::IllegalSectionStart { .. } => PemProblem::BadBeginLine,
            Error::Base64Decode(_) => PemProblem::BadBase64,
            _ => PemProblem::Malformed,
        }
    }
}

/// The listener's current TLS configuration and the leaf's expiry.
pub struct TlsState {
    /// Certificate, key, client CA and allow-list of the latest good load.
    pub config: ArcSwap<ServerConfig>,
    /// `notAfter` of the serving certificate, Unix seconds.
    pub not_after: AtomicI64,
}

/// Reads one `listen.tls` file, size-capped like every file a config names.
fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    config::read_capped_bytes(path, MAX_AUX_FILE_BYTES)
        .map_err(|error| TlsError::Read { field, error })
}

/// Every CERTIFICATE block of a `listen.tls` file; at least one.
fn certificates(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let content = |problem| TlsError::Content {
        field,
        path: path.to_path_buf(),
        problem,
    };
    let pem = read(field, path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| content(PemProblem::from(e)))?;
    if certs.is_empty() {
        return Err(content(PemProblem::NoCertificate));
    }
    Ok(certs)
}

/// Every problem of one `listen.tls` load (each file is checked, so a
/// missing certificate does not hide a missing CA).
#[derive(Debug, thiserror::Error)]
#[error("{}", joined(.0))]
pub struct TlsErrors(pub Vec<TlsError>);

fn joined(errors: &[TlsError]) -> String {
    let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

/// The certificate chain and its leaf's `notAfter`.
fn chain(tls: &ListenTls) -> Result<(Vec<CertificateDer<'static>>, i64), TlsError> {
    let certs = certificates("cert", &tls.cert)?;
    let content = |problem| TlsError::Content {
        field: "cert",
        path: tls.cert.clone(),
        problem,
    };
    let leaf = certs
        .first()
        .ok_or_else(|| content(PemProblem::NoCertificate))?;
    let not_after = x509_parser::parse_x509_certificate(leaf)
        .map_err(|_| content(PemProblem::BadCertificate { index: 1 }))?
        .1
        .validity()
        .not_after
        .timestamp();
    Ok((certs, not_after))
}

fn private_key(tls: &ListenTls) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("key", &tls.key)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Content {
        field: "key",
        path: tls.key.clone(),
        problem: match e {
            rustls::pki_types::pem::Error::NoItemsFound => PemProblem::NoKey,
            e => PemProblem::from(e),
        },
    })
}

fn client_roots(tls: &ListenTls) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, ca) in certificates("client_ca", &tls.client_ca)?
        .into_iter()
        .enumerate()
    {
        roots.add(ca).map_err(|error| TlsError::Content {
            field: "client_ca",
            path: tls.client_ca.clone(),
            problem: PemProblem::BadAnchor {
                index: i + 1,
                error,
            },
        })?;
    }
    Ok(roots)
}

/// Builds the server TLS configuration from the three files and the
/// allow-list. Client certificates are mandatory and must chain to
/// `client_ca` (and, with `allowed_sans`, carry one of those SANs).
pub fn load_tls(tls: &ListenTls) -> Result<(ServerConfig, i64), TlsErrors> {
    let ((certs, not_after), key, roots) = match (chain(tls), private_key(tls), client_roots(tls)) {
        (Ok(chain), Ok(key), Ok(roots)) => (chain, key, roots),
        (chain, key, roots) => {
            let errors = [chain.err(), key.err(), roots.err()];
            return Err(TlsErrors(errors.into_iter().flatten().collect()));
        }
    };
    let one = |e| TlsErrors(vec![e]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| one(TlsError::Verifier(e)))?;
    if let Some(allowed) = &tls.allowed_sans {
        verifier = Arc::new(AllowListVerifier {
            inner: verifier,
            allowed: AllowedSans::new(allowed),
        });
    }
    // with_single_cert also checks that the key belongs to the certificate.
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| one(TlsError::Rustls(e)))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| {
            one(match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    TlsError::KeyMismatch {
                        cert: tls.cert.clone(),
                        key: tls.key.clone(),
                    }
                }
                e => TlsError::Rustls(e),
            })
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, not_after))
}

/// Keeps `state` current with the TLS files; a broken set keeps the old one.
///
/// Also logs, once at start, the warning for a hop without `allowed_sans`
/// (`ListenTls::allow_list_warning`), so every sidecar that serves TLS
/// reports it whoever starts the listener.
pub async fn watch_tls(tls: ListenTls, state: Arc<TlsState>, poll_interval: Duration) {
    if let Some(warning) = tls.allow_list_warning() {
        tracing::warn!(event = "listener_tls_without_allowed_sans", "{warning}");
    }
    let files = vec![tls.cert.clone(), tls.key.clone(), tls.client_ca.clone()];
    let mut watch = FileWatch::new(files.clone(), poll_interval);
    loop {
        let before = watch.changed().await;
        let tls_files = tls.clone();
        let loaded = tokio::task::spawn_blocking(move || load_tls(&tls_files)).await;
        watch.acted(before, files.clone());
        match loaded {
            Ok(Ok((config, not_after))) => {
                state.config.store(Arc::new(config));
                state.not_after.store(not_after, Ordering::Relaxed);
                tracing::info!(event = "listener_tls_reload", result = "success", not_after);
            }
            Ok(Err(e)) => {
                tracing::error!(event = "listener_tls_reload", result = "failure", error = %e, "keeping the previous certificate");
            }
            Err(e) => {
                tracing::error!(event = "listener_tls_reload", result = "failure", error = %e, "keeping the previous certificate");
            }
        }
    }
}

/// `listen.tls.allowed_sans`, typed: a DNS SAN never matches a URI entry
/// with the same text, nor the reverse (CVE-2022-21656).
#[derive(Debug)]
struct AllowedSans(Vec<San>);

impl AllowedSans {
    fn new(entries: &[String]) -> Self {
        AllowedSans(
            entries
                .iter()
                .map(|entry| {
                    let kind = identity::principal_kind(entry);
                    let value = match kind {
                        SanKind::Uri => entry.clone(),
                        // identity lower-cases DNS SANs read from certificates.
                        SanKind::Dns => entry.to_ascii_lowercase(),
                    };
                    San { kind, value }
                })
                .collect(),
        )
    }

    fn admits(&self, presented: &[San]) -> bool {
        presented.iter().any(|san| self.0.contains(san))
    }
}

/// At most this many presented SANs, each cut to `LOGGED_SAN_CHARS`, go in
/// the log line of a refused client: the certificate is the client's to
/// choose, the log line is not.
const LOGGED_SANS: usize = 8;
const LOGGED_SAN_CHARS: usize = 128;

/// The presented SANs for a log line: bounded, and escaped (identity already
/// refuses control characters; escaping keeps that true of the log anyway).
struct Presented<'a>(&'a [San]);

impl fmt::Display for Presented<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, san) in self.0.iter().take(LOGGED_SANS).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            let kind = match san.kind {
                SanKind::Uri => "URI",
                SanKind::Dns => "DNS",
            };
            write!(f, "{kind}:\"")?;
            for c in san.value.chars().take(LOGGED_SAN_CHARS) {
                write!(f, "{}", c.escape_debug())?;
            }
            if san.value.chars().count() > LOGGED_SAN_CHARS {
                f.write_str("...")?;
            }
            f.write_str("\"")?;
        }
        if self.0.len() > LOGGED_SANS {
            write!(f, ", ... {} more", self.0.len() - LOGGED_SANS)?;
        }
        f.write_str("]")
    }
}

/// `WebPkiClientVerifier` plus the allow-list, checked once the chain is.
#[derive(Debug)]
struct AllowListVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: AllowedSans,
}

/// rustls answers this with the `access_denied` alert: the certificate is
/// valid, the client is just not let in.
fn access_denied() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

impl ClientCertVerifier for AllowListVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match PeerCertificate::from_der(end_entity.to_vec()) {
            Ok(cert) if self.allowed.admits(&cert.sans) => Ok(verified),
            Ok(cert) => {
                tracing::warn!(
                    event = "hop_client_refused",
                    reason = "san_not_allowed",
                    sans = %Presented(&cert.sans),
                    "a client certificate from client_ca without an allowed SAN (listen.tls.allowed_sans)"
                );
                Err(access_denied())
            }
            Err(e) => {
                tracing::warn!(
                    event = "hop_client_refused",
                    reason = "unreadable_certificate",
                    error = %e,
                );
                Err(access_denied())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn san(kind: SanKind, value: &str) -> San {
        San {
            kind,
            value: value.into(),
        }
    }

    #[test]
    fn allow_list_matches_by_kind_and_dns_case_insensitively() {
        let allowed = AllowedSans::new(&[
            "spiffe://mesh.local/ns/mesh/sa/envoy".into(),
            "Envoy.Mesh.Local".into(),
        ]);
        assert!(allowed.admits(&[san(SanKind::Uri, "spiffe://mesh.local/ns/mesh/sa/envoy")]));
        assert!(allowed.admits(&[
            san(SanKind::Uri, "spiffe://mesh.local/ns/billing/sa/billing"),
            san(SanKind::Dns, "envoy.mesh.local"),
        ]));
        assert!(!allowed.admits(&[san(SanKind::Uri, "spiffe://mesh.local/ns/mesh/sa/Envoy")]));
        // Same text, other kind.
        assert!(!allowed.admits(&[san(SanKind::Uri, "envoy.mesh.local")]));
        let dns_as_uri = AllowedSans::new(&["spiffe://x/y".into()]);
        assert!(!dns_as_uri.admits(&[san(SanKind::Dns, "spiffe://x/y")]));
        assert!(!allowed.admits(&[]));
    }

    #[test]
    fn presented_sans_are_bounded_and_escaped() {
        let mut sans: Vec<San> = (0..20)
            .map(|i| san(SanKind::Dns, &format!("n{i}.example")))
            .collect();
        sans[0] = san(SanKind::Uri, &format!("x://\"\n{}", "a".repeat(500)));
        let text = Presented(&sans).to_string();
        assert!(text.starts_with("[URI:\"x://\\\"\\n"), "{text}");
        assert!(!text.contains('\n'));
        assert!(text.contains("..."));
        assert!(text.contains("n7.example"));
        assert!(!text.contains("n8.example"));
        assert!(text.ends_with(", ... 12 more]"), "{text}");
        assert!(text.len() < LOGGED_SANS * (LOGGED_SAN_CHARS + 16) + 32);
    }
}
