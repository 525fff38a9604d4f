//! The registry snapshot: every service, key and rule a Check consults,
//! validated once and indexed for hash lookups.
//!
//! A `Registry` is immutable. It is built from the registry file (plus the
//! secret, CA and CRL files it names) in one go, and either the whole thing
//! is valid or nothing replaces the snapshot that is serving. Each error is
//! reported with the file and the YAML path it concerns.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use ::time::OffsetDateTime;
use ::time::format_description::well_known::Rfc3339;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{parse_x509_crl, parse_x509_pem};

use crate::config::{self, ConfigError, RegistryFile, ServiceEntry};
use crate::identity::{self, SanKind, TrustAnchor};
use crate::token::{SigningKey, TokenSettings};

/// Signing secrets shorter than this are refused (HS256 wants ≥ 256 bits).
pub const MIN_SECRET_BYTES: usize = 32;
/// Cap on secret, CA and CRL files, so a wrong path cannot load a huge file.
const MAX_AUX_FILE_BYTES: u64 = 1024 * 1024;

/// SHA-256 of the development signing secret shipped in `config/secrets/`.
/// The sidecar warns loudly when it signs with it.
const DEV_SECRET_SHA256: &str = "b5b9ab9ae7b02722077c83d4fdf0d33c65511860186536b858bdb3131bd44d1a";

/// SHA-256 of an API key: the only form in which keys are stored.
pub type KeyHash = [u8; 32];

/// Hashes an API key exactly as the registry stores it.
pub fn hash_api_key(key: &[u8]) -> KeyHash {
    Sha256::digest(key).into()
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
    pub principals: Vec<String>,
    pub ca: Option<TrustAnchor>,
    pub pins: Vec<[u8; 32]>,
    pub scopes: Vec<String>,
    /// The service's scopes joined with spaces: the token scope when the
    /// caller asks for none (kept ready so an allow does not join per request).
    pub all_scopes: String,
    pub api_keys: Vec<ApiKey>,
}

impl Service {
    pub fn allows_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
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

/// The outcome of one load attempt and the files it involved.
pub struct Loaded {
    pub result: Result<Registry, Vec<ConfigError>>,
    pub sources: Vec<PathBuf>,
}

/// The immutable, indexed registry a Check reads.
#[derive(Debug)]
pub struct Registry {
    pub token: TokenSettings,
    pub request: RequestSettings,
    services: Vec<Service>,
    by_id: HashMap<String, usize>,
    by_uri: HashMap<String, usize>,
    by_dns: HashMap<String, usize>,
    by_key_hash: HashMap<KeyHash, usize>,
    revoked_serials: HashSet<Vec<u8>>,
    /// True when tokens are signed with the bundled development secret.
    pub uses_dev_secret: bool,
    sources: Vec<PathBuf>,
    warnings: Vec<String>,
}

impl Registry {
    /// Reads and validates the registry file at `path`, returning every error found.
    pub fn load(path: &Path) -> Result<Registry, Vec<ConfigError>> {
        Registry::load_tracked(path).result
    }

    /// Like [`Registry::load`], and also says which files the attempt read
    /// (or tried to read), so a reloader knows what to watch even when the
    /// attempt failed because one of them was missing.
    pub fn load_tracked(path: &Path) -> Loaded {
        let mut builder = Builder {
            path,
            errors: Vec::new(),
            warnings: Vec::new(),
            sources: vec![path.to_path_buf()],
        };
        let result = match config::read_yaml::<RegistryFile>(path) {
            Ok(file) => builder.build(file),
            Err(e) => Err(vec![e]),
        };
        Loaded {
            result,
            sources: builder.sources,
        }
    }

    /// Every file this snapshot was built from: the registry file first,
    /// then secret, CA and CRL files.
    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }

    /// Problems that do not invalidate the registry but deserve an operator's
    /// attention (e.g. a CRL past its `nextUpdate`).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    pub fn service(&self, id: &str) -> Option<&Service> {
        self.by_id.get(id).map(|&i| &self.services[i])
    }

    /// The service that claims this SAN, if any.
    pub fn service_for_principal(&self, kind: SanKind, principal: &str) -> Option<usize> {
        match kind {
            SanKind::Uri => self.by_uri.get(principal).copied(),
            SanKind::Dns => self.by_dns.get(principal).copied(),
        }
    }

    pub fn service_at(&self, index: usize) -> &Service {
        &self.services[index]
    }

    /// The service that owns an API key with this hash, if any. Only used to
    /// tell an identity mismatch from an unknown key, after the constant-time
    /// comparison against the caller's own service has failed.
    pub fn key_owner(&self, hash: &KeyHash) -> Option<usize> {
        self.by_key_hash.get(hash).copied()
    }

    pub fn is_revoked(&self, normalized_serial: &[u8]) -> bool {
        self.revoked_serials.contains(normalized_serial)
    }
}

struct Builder<'p> {
    path: &'p Path,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
    sources: Vec<PathBuf>,
}

impl Builder<'_> {
    fn err(&mut self, message: impl Into<String>) {
        self.errors.push(ConfigError::invalid(self.path, message));
    }

    /// Resolves a path named by the registry and records it as a source.
    fn source(&mut self, relative: &Path) -> PathBuf {
        let full = config::resolve(self.path, relative);
        self.sources.push(full.clone());
        full
    }

    fn build(&mut self, file: RegistryFile) -> Result<Registry, Vec<ConfigError>> {
        let token = self.token(&file);
        let request = self.request(&file);

        let mut services = Vec::with_capacity(file.services.len());
        let mut by_id = HashMap::with_capacity(file.services.len());
        let mut by_uri = HashMap::new();
        let mut by_dns = HashMap::new();
        let mut by_key_hash = HashMap::new();
        for (i, entry) in file.services.iter().enumerate() {
            let at = format!("services[{i}] ({:?})", entry.id);
            let Some(service) = self.service(entry, &at) else {
                continue;
            };
            let index = services.len();
            if by_id.insert(service.id.clone(), index).is_some() {
                self.err(format!("{at}: duplicate service id {:?}", service.id));
            }
            for principal in &service.principals {
                let map = match identity::principal_kind(principal) {
                    SanKind::Uri => &mut by_uri,
                    SanKind::Dns => &mut by_dns,
                };
                if let Some(&other) = map.get(principal) {
                    let owner: &Service = if other == index {
                        &service
                    } else {
                        &services[other]
                    };
                    self.err(format!(
                        "{at}: principal {principal:?} is already claimed by service {:?}",
                        owner.id
                    ));
                } else {
                    map.insert(principal.clone(), index);
                }
            }
            for key in &service.api_keys {
                if let Some(&other) = by_key_hash.get(&key.sha256) {
                    let owner: &Service = if other == index {
                        &service
                    } else {
                        &services[other]
                    };
                    self.err(format!(
                        "{at}: api key {:?} has the same hash as a key of service {:?}",
                        key.id, owner.id
                    ));
                } else {
                    by_key_hash.insert(key.sha256, index);
                }
            }
            services.push(service);
        }
        let revoked_serials = self.revocations(&file, &services);

        match (token, request) {
            (Some((token, uses_dev_secret)), Some(request)) if self.errors.is_empty() => {
                Ok(Registry {
                    token,
                    request,
                    services,
                    by_id,
                    by_uri,
                    by_dns,
                    by_key_hash,
                    revoked_serials,
                    uses_dev_secret,
                    sources: self.sources.clone(),
                    warnings: std::mem::take(&mut self.warnings),
                })
            }
            _ => Err(std::mem::take(&mut self.errors)),
        }
    }

    fn token(&mut self, file: &RegistryFile) -> Option<(TokenSettings, bool)> {
        let t = &file.token;
        if t.issuer.is_empty() {
            self.err("token.issuer must not be empty");
        }
        if t.audience.is_empty() {
            self.err("token.audience must not be empty");
        }
        if t.ttl.is_zero() {
            self.err("token.ttl must be above zero");
        }
        let header = self.header_name("token.header", &t.header);
        let mut keys = Vec::with_capacity(t.keys.len());
        let mut uses_dev_secret = false;
        for (i, k) in t.keys.iter().enumerate() {
            let at = format!("token.keys[{i}] ({:?})", k.kid);
            if k.kid.is_empty() {
                self.err(format!("{at}: kid must not be empty"));
            }
            let secret = match (&k.secret_file, &k.secret_env) {
                (Some(file), None) => {
                    let full = self.source(file);
                    match config::read_capped_bytes(&full, MAX_AUX_FILE_BYTES) {
                        Ok(bytes) => Some(trim_trailing_newline(bytes)),
                        Err(e) => {
                            self.err(format!("{at}: secret_file: {e}"));
                            None
                        }
                    }
                }
                (None, Some(var)) => match std::env::var_os(var) {
                    Some(v) => Some(v.into_encoded_bytes()),
                    None => {
                        self.err(format!("{at}: secret_env {var} is not set"));
                        None
                    }
                },
                _ => {
                    self.err(format!(
                        "{at}: set exactly one of secret_file and secret_env"
                    ));
                    None
                }
            };
            let Some(secret) = secret else { continue };
            if secret.len() < MIN_SECRET_BYTES {
                self.err(format!(
                    "{at}: secret is {} bytes, at least {MIN_SECRET_BYTES} are required",
                    secret.len()
                ));
                continue;
            }
            if keys.is_empty() && !k.verify_only {
                uses_dev_secret = hex::encode(Sha256::digest(&secret)) == DEV_SECRET_SHA256;
            }
            keys.push(SigningKey::new(k.kid.clone(), &secret, k.verify_only));
        }
        if keys.len() != t.keys.len() {
            return None;
        }
        match TokenSettings::new(
            t.issuer.clone(),
            t.audience.clone(),
            t.ttl,
            t.leeway,
            header?,
            keys,
        ) {
            Ok(settings) => Some((settings, uses_dev_secret)),
            Err(e) => {
                self.err(e);
                None
            }
        }
    }

    fn request(&mut self, file: &RegistryFile) -> Option<RequestSettings> {
        let r = &file.request;
        let api_key_header = self.header_name("request.api_key_header", &r.api_key_header);
        let scope_header = match &r.scope_header {
            Some(h) => Some(self.header_name("request.scope_header", h)?),
            None => None,
        };
        Some(RequestSettings {
            api_key_header: api_key_header?,
            scope_header,
            forward_api_key: r.forward_api_key,
        })
    }

    fn header_name(&mut self, at: &str, name: &str) -> Option<String> {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            self.err(format!("{at}: {name:?} is not a valid header name"));
            return None;
        }
        Some(name.to_ascii_lowercase())
    }

    /// Revoked serials from the list and the CRL files. A CRL issued by one
    /// of the services' CAs must carry that CA's signature; a CRL past its
    /// `nextUpdate` still revokes (stale revocations are still revocations)
    /// but is reported.
    fn revocations(&mut self, file: &RegistryFile, services: &[Service]) -> HashSet<Vec<u8>> {
        let mut serials = HashSet::new();
        for (i, s) in file.revocation.serials.iter().enumerate() {
            match parse_serial(s) {
                Some(serial) => {
                    serials.insert(serial);
                }
                None => self.err(format!(
                    "revocation.serials[{i}]: {s:?} is not a hex serial"
                )),
            }
        }
        let anchors: Vec<&TrustAnchor> = services.iter().filter_map(|s| s.ca.as_ref()).collect();
        for (i, crl) in file.revocation.crl_files.iter().enumerate() {
            let full = self.source(crl);
            let at = format!("revocation.crl_files[{i}]: {}", full.display());
            match read_crl(&full, &anchors) {
                Ok(crl) => {
                    if crl
                        .next_update
                        .is_some_and(|t| t < OffsetDateTime::now_utc().unix_timestamp())
                    {
                        self.warnings
                            .push(format!("{at}: CRL is past its nextUpdate; refresh it"));
                    }
                    serials.extend(crl.serials);
                }
                Err(e) => self.err(format!("{at}: {e}")),
            }
        }
        serials
    }

    fn service(&mut self, entry: &ServiceEntry, at: &str) -> Option<Service> {
        let before = self.errors.len();
        if entry.id.is_empty() || !entry.id.bytes().all(|b| b.is_ascii_graphic()) {
            self.err(format!("{at}: id must be non-empty printable ASCII"));
        }
        if entry.principals.is_empty() {
            self.err(format!("{at}: principals must list at least one SAN"));
        }
        let mut principals = Vec::with_capacity(entry.principals.len());
        for p in &entry.principals {
            match normalize_principal(p) {
                Some(p) => principals.push(p),
                None => self.err(format!("{at}: principal {p:?} is not a URI or DNS name")),
            }
        }
        let ca = entry.ca_file.as_ref().and_then(|ca| {
            let full = self.source(ca);
            let loaded = config::read_capped_bytes(&full, MAX_AUX_FILE_BYTES)
                .map_err(|e| e.to_string())
                .and_then(|pem| TrustAnchor::from_pem(&pem));
            loaded
                .map_err(|e| self.err(format!("{at}: ca_file {}: {e}", full.display())))
                .ok()
        });
        let mut pins = Vec::with_capacity(entry.certificate_sha256.len());
        for pin in &entry.certificate_sha256 {
            match parse_sha256(pin) {
                Some(p) => pins.push(p),
                None => self.err(format!(
                    "{at}: certificate_sha256 {pin:?} is not 64 hex digits"
                )),
            }
        }
        let mut scopes: Vec<String> = Vec::with_capacity(entry.scopes.len());
        for s in &entry.scopes {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
                self.err(format!(
                    "{at}: scope {s:?} must be printable ASCII without spaces or commas"
                ));
            } else if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
        let mut api_keys: Vec<ApiKey> = Vec::with_capacity(entry.api_keys.len());
        for k in &entry.api_keys {
            let key_at = format!("{at}: api_keys {:?}", k.id);
            if k.id.is_empty() || api_keys.iter().any(|other| other.id == k.id) {
                self.err(format!(
                    "{key_at}: id must be non-empty and unique within the service"
                ));
            }
            let not_after = match &k.not_after {
                Some(s) => match OffsetDateTime::parse(s, &Rfc3339) {
                    Ok(t) => Some(t.unix_timestamp()),
                    Err(e) => {
                        self.err(format!("{key_at}: not_after {s:?} is not RFC 3339: {e}"));
                        None
                    }
                },
                None => None,
            };
            match parse_sha256(&k.sha256) {
                Some(sha256) => api_keys.push(ApiKey {
                    id: k.id.clone(),
                    sha256,
                    not_after,
                }),
                None => self.err(format!("{key_at}: sha256 is not 64 hex digits")),
            }
        }
        if self.errors.len() != before {
            return None;
        }
        Some(Service {
            id: entry.id.clone(),
            principals,
            ca,
            pins,
            all_scopes: scopes.join(" "),
            scopes,
            api_keys,
        })
    }
}

/// Validates a configured principal and puts it in the form SANs are
/// compared in (DNS lower-cased). Wildcards are not supported: a principal
/// names exactly one identity.
fn normalize_principal(p: &str) -> Option<String> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    match identity::principal_kind(p) {
        SanKind::Uri => Some(p.to_owned()),
        SanKind::Dns => {
            let ok = p.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
            ok.then(|| p.to_ascii_lowercase())
        }
    }
}

fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Accepts `4f1a`, `4F:1A`, `0x4f1a`; returns the normalized big-endian bytes.
fn parse_serial(s: &str) -> Option<Vec<u8>> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    let mut digits: String = s.chars().filter(|&c| c != ':').collect();
    if digits.is_empty() {
        return None;
    }
    if digits.len() % 2 == 1 {
        digits.insert(0, '0');
    }
    let bytes = hex::decode(digits).ok()?;
    Some(identity::normalize_serial(&bytes).to_vec())
}

struct Crl {
    serials: Vec<Vec<u8>>,
    next_update: Option<i64>,
}

/// Reads a PEM or DER CRL, checking its signature when one of `anchors`
/// issued it.
fn read_crl(path: &Path, anchors: &[&TrustAnchor]) -> Result<Crl, String> {
    let raw = config::read_capped_bytes(path, MAX_AUX_FILE_BYTES).map_err(|e| e.to_string())?;
    let der = if raw.starts_with(b"-----BEGIN") {
        let (_, pem) = parse_x509_pem(&raw).map_err(|e| format!("bad PEM: {e}"))?;
        if pem.label != "X509 CRL" {
            return Err(format!("PEM block is {:?}, not X509 CRL", pem.label));
        }
        pem.contents
    } else {
        raw
    };
    let (_, crl) = parse_x509_crl(&der).map_err(|e| format!("not a CRL: {e}"))?;
    for anchor in anchors {
        if anchor.verifies_crl(&crl) == Some(false) {
            return Err("CRL signature does not verify against the CA that issued it".into());
        }
    }
    Ok(Crl {
        serials: crl
            .iter_revoked_certificates()
            .map(|r| identity::normalize_serial(r.raw_serial()).to_vec())
            .collect(),
        next_update: crl.next_update().map(|t| t.timestamp()),
    })
}

fn trim_trailing_newline(mut bytes: Vec<u8>) -> Vec<u8> {
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_parse_in_common_spellings() {
        assert_eq!(parse_serial("4f1a"), Some(vec![0x4f, 0x1a]));
        assert_eq!(parse_serial("00:4F:1A"), Some(vec![0x4f, 0x1a]));
        assert_eq!(parse_serial("0x4f1a"), Some(vec![0x4f, 0x1a]));
        assert_eq!(parse_serial("f1a"), Some(vec![0x0f, 0x1a]));
        assert_eq!(parse_serial("zz"), None);
        assert_eq!(parse_serial(""), None);
    }

    #[test]
    fn principals_are_validated() {
        assert_eq!(
            normalize_principal("API.Mesh.local").as_deref(),
            Some("api.mesh.local")
        );
        assert_eq!(
            normalize_principal("spiffe://mesh/ns/a").as_deref(),
            Some("spiffe://mesh/ns/a")
        );
        for bad in [
            "",
            "*.mesh.local",
            "a..b",
            "has space",
            "CN=foo,O=bar",
            "nul\0",
        ] {
            assert_eq!(normalize_principal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hashes_must_be_exact() {
        assert!(parse_sha256(&"ab".repeat(32)).is_some());
        assert!(parse_sha256(&"ab".repeat(31)).is_none());
        assert!(parse_sha256(&"zz".repeat(32)).is_none());
    }
}
