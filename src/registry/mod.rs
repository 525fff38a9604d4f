//! The registry snapshot: every service, key and rule a Check consults,
//! validated once and indexed for hash lookups, and the handle through which
//! Checks find the current one.
//!
//! A [`Registry`] is immutable. It is built from the registry file, its
//! fragments (`fragments`: more services and revocations, one file per team)
//! and the secret, CA bundle and CRL files they name, in one go by
//! [`Registry::load_paths`], and either the whole set is valid or nothing
//! replaces the snapshot that is serving. Each error carries the file and the
//! YAML path it concerns as
//! data ([`LoadError`], [`Problem`]). A [`Snapshot`] is the one shared
//! handle: Checks load from it, the reloader stores into it.

mod build;
mod exposure;
mod fragments;

use std::collections::{BTreeMap, HashMap};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use crate::config::Enforcement;
use crate::identity::{PeerCertificate, SanKind};
use crate::token::TokenSettings;
use crate::trust::{self, Bundle, Revocations};

pub use build::{CrlError, LoadError, Loaded, Origin, Problem, Warning};
pub use exposure::Readers;

/// The header verify mode sets to the verified token's subject; no registry
/// header may take its name.
pub const SERVICE_ID_HEADER: &str = "x-service-id";

/// SHA-256 of an API key: the only form in which keys are stored.
pub type KeyHash = [u8; 32];

/// API keys longer than this are refused without hashing. Generated keys
/// are 43 characters.
pub const MAX_API_KEY_LEN: usize = 512;

/// Why a Check refuses an API key before hashing it (`invalid_api_key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedApiKey {
    #[error("the key is empty")]
    Empty,
    #[error("the key is longer than {MAX_API_KEY_LEN} bytes")]
    TooLong,
    /// Byte `position` (from 0) is not printable ASCII, or is a comma.
    #[error(
        "byte {} of the key is {}: a key is printable ASCII without spaces or commas",
        position + 1,
        describe_byte(*byte)
    )]
    BadByte { position: usize, byte: u8 },
}

/// Names a refused byte without echoing the secret around it.
fn describe_byte(byte: u8) -> &'static str {
    match byte {
        b' ' => "a space",
        b',' => "a comma",
        0x80.. => "not ASCII",
        _ => "a control character",
    }
}

/// The shape every API key a Check accepts has: 1 to 512 bytes of printable
/// ASCII without a comma (Envoy joins a repeated header with commas,
/// CVE-2021-32777). The Check and `hash-key` both apply it.
pub fn check_api_key_shape(key: &[u8]) -> Result<(), MalformedApiKey> {
    if key.is_empty() {
        return Err(MalformedApiKey::Empty);
    }
    if key.len() > MAX_API_KEY_LEN {
        return Err(MalformedApiKey::TooLong);
    }
    match key.iter().position(|&b| !b.is_ascii_graphic() || b == b',') {
        Some(position) => Err(MalformedApiKey::BadByte {
            position,
            byte: key[position],
        }),
        None => Ok(()),
    }
}

/// Hashes an API key exactly as the registry stores it. On every issue-mode
/// Check, so ring's assembly SHA-256 (see `keys`' HS256 signer for why).
pub fn hash_api_key(key: &[u8]) -> KeyHash {
    let mut hash = [0; 32];
    hash.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, key).as_ref());
    hash
}

/// A new random credential: 256 bits, base64url without padding. Used for API
/// keys and signing secrets; base64url has no `,`, which would read as a
/// repeated header.
pub fn random_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// One registered service.
#[derive(Debug)]
pub struct Service {
    pub id: String,
    /// Overrides the registry-wide enforcement for this caller's Checks.
    pub enforcement: Option<Enforcement>,
    /// Normalised (see `identity::San::new`): what SANs are compared with.
    pub principals: Vec<String>,
    /// `ca_file`: the bundle its certificates must chain to, on top of any
    /// trust-domain rule. Shared with every service naming the same file.
    pub ca: Option<Arc<Bundle>>,
    pub pins: Vec<[u8; 32]>,
    pub scopes: Vec<String>,
    /// The service's scopes joined with spaces: the token scope when the
    /// caller asks for none (kept ready so an allow does not join per request).
    pub all_scopes: String,
    pub api_keys: Vec<ApiKey>,
}

impl Service {
    /// The registry's own copy of an allowed scope, if `scope` is one.
    pub fn scope(&self, scope: &str) -> Option<&str> {
        self.scopes.iter().find(|s| *s == scope).map(String::as_str)
    }

    pub fn allows_scope(&self, scope: &str) -> bool {
        self.scope(scope).is_some()
    }

    /// The SPIFFE trust domains of this service's principals, each once, in
    /// principal order (DNS names and other URIs have none).
    pub fn trust_domains(&self) -> Vec<&str> {
        let mut domains = Vec::new();
        for td in self
            .principals
            .iter()
            .filter_map(|p| trust::trust_domain(p))
        {
            if !domains.contains(&td) {
                domains.push(td);
            }
        }
        domains
    }
}

#[derive(Debug)]
pub struct ApiKey {
    pub id: String,
    pub sha256: KeyHash,
    /// Unix seconds after which the key no longer authenticates.
    pub not_after: Option<i64>,
}

/// Request-shape settings: which headers carry what.
#[derive(Debug)]
pub struct RequestSettings {
    pub api_key_header: String,
    pub scope_header: Option<String>,
    pub forward_api_key: bool,
}

/// Failed-authentication throttling, validated (`throttle` in the registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// Failed Checks within `window` after which a caller is refused.
    pub failures: NonZeroU32,
    pub window: Duration,
    /// Callers remembered at once; the least recently seen is forgotten first.
    pub max_tracked: NonZeroUsize,
}

/// The immutable, indexed registry a Check reads.
#[derive(Debug)]
pub struct Registry {
    pub token: TokenSettings,
    pub request: RequestSettings,
    /// Without a forwarded certificate, a Check fails (`missing_identity`)
    /// instead of trusting Envoy's `source.principal`.
    pub require_certificate: bool,
    /// Whether denials are refused or only reported, unless a service or
    /// route says otherwise (see `enforcement`).
    pub enforcement: Enforcement,
    /// Failed-authentication throttling; `None`: off.
    pub throttle: Option<ThrottleSettings>,
    /// Distinct for every snapshot built by this process, so memos keyed by
    /// snapshot (certificate trust verdicts) never outlive the policy they
    /// were computed under.
    pub generation: u64,
    services: Vec<Service>,
    by_id: HashMap<String, usize>,
    by_uri: HashMap<String, usize>,
    by_dns: HashMap<String, usize>,
    by_key_hash: HashMap<KeyHash, usize>,
    /// `trust_domains`: SPIFFE trust domain -> its CA bundle.
    trust_domains: BTreeMap<String, Arc<Bundle>>,
    revocations: Revocations,
    /// True when any key (signing or verify-only) is the bundled development
    /// secret: anyone with this repository can forge tokens it accepts.
    pub uses_dev_secret: bool,
    sources: Vec<PathBuf>,
    warnings: Vec<Warning>,
}

fn next_generation() -> u64 {
    static GENERATION: AtomicU64 = AtomicU64::new(1);
    GENERATION.fetch_add(1, Ordering::Relaxed)
}

impl Registry {
    /// Every file this snapshot was built from: the registry file first,
    /// then the fragment directories and files, then secret, CA bundle and
    /// CRL files.
    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }

    /// Problems that do not invalidate the registry but deserve an operator's
    /// attention (e.g. a CRL past its `nextUpdate`).
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    pub fn service(&self, id: &str) -> Option<&Service> {
        self.by_id.get(id).map(|&i| &self.services[i])
    }

    /// The service that claims this (normalised) SAN, if any.
    pub fn service_for_principal(&self, kind: SanKind, principal: &str) -> Option<&Service> {
        let index = match kind {
            SanKind::Uri => self.by_uri.get(principal),
            SanKind::Dns => self.by_dns.get(principal),
        };
        index.map(|&i| &self.services[i])
    }

    /// The service that owns an API key with this hash, if any. Only used to
    /// tell an identity mismatch from an unknown key, after the constant-time
    /// comparison against the caller's own service has failed.
    pub fn key_owner(&self, hash: &KeyHash) -> Option<&Service> {
        self.by_key_hash.get(hash).map(|&i| &self.services[i])
    }

    /// Whether `trust_domains` is configured: SPIFFE IDs must then chain to
    /// their own domain's bundle.
    pub fn has_trust_domains(&self) -> bool {
        !self.trust_domains.is_empty()
    }

    /// The CA bundle of a listed SPIFFE trust domain.
    pub fn trust_domain(&self, name: &str) -> Option<&Bundle> {
        self.trust_domains.get(name).map(Arc::as_ref)
    }

    /// Every listed trust domain and its bundle, by name.
    pub fn trust_domains(&self) -> impl Iterator<Item = (&str, &Bundle)> {
        self.trust_domains
            .iter()
            .map(|(name, bundle)| (name.as_str(), bundle.as_ref()))
    }

    /// Whether `certificate` is revoked: by a configured serial (any
    /// issuer), or by a CRL of the CA named as its issuer.
    pub fn is_revoked(&self, certificate: &PeerCertificate) -> bool {
        self.revocations
            .is_revoked(&certificate.issuer, &certificate.serial)
    }
}

/// The one shared handle to the serving registry: empty until the first one
/// is loaded (a Check meanwhile fails closed), then replaced whole by each
/// good reload. In-flight Checks keep the snapshot they loaded.
#[derive(Clone, Default)]
pub struct Snapshot(Arc<ArcSwapOption<Registry>>);

impl Snapshot {
    /// The serving registry, if one is installed.
    pub fn load(&self) -> Option<Arc<Registry>> {
        self.0.load_full()
    }

    /// Installs `registry`, returning the one it replaces.
    pub fn store(&self, registry: Arc<Registry>) -> Option<Arc<Registry>> {
        self.0.swap(Some(registry))
    }

    pub fn is_loaded(&self) -> bool {
        self.0.load().is_some()
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.0.load().as_ref().map(|r| r.generation))
            .finish()
    }
}
