//! Building a [`Registry`] from the registry file: every rule of the file
//! format checked once, every error reported with its YAML path as data.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::time::OffsetDateTime;
use ::time::format_description::well_known::Rfc3339;
use sha2::{Digest, Sha256};

use super::exposure::{self, Readers};
use super::fragments::{self, Fragment};
use super::{
    ApiKey, KeyHash, Registry, RequestSettings, Service, ThrottleSettings, next_generation,
};
use crate::config::{
    self, ConfigError, KeyEntry, MAX_AUX_FILE_BYTES, RegistryFile, RegistryPaths,
    RevocationSection, ServiceEntry,
};
use crate::identity::{San, SanKind};
use crate::keys::{Algorithm, Key, KeyError, KeySource, MIN_SECRET_LEN};
use crate::token::{KeySetError, TokenKey, TokenSettings};
use crate::trust::{self, Bundle, BundleError, BundleWarning, Crl, Revocations};

/// SHA-256 of the development signing secret shipped in `config/secrets/`.
/// The sidecar warns loudly when it signs with it.
const DEV_SECRET_SHA256: &str = "b5b9ab9ae7b02722077c83d4fdf0d33c65511860186536b858bdb3131bd44d1a";

/// Why a registry was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The registry file itself could not be read or parsed.
    #[error(transparent)]
    File(#[from] ConfigError),
    /// A value in it is invalid.
    #[error("{}: {at}: {problem}", file.display())]
    Invalid {
        file: PathBuf,
        /// YAML path of the offending value, e.g. `services[2].api_keys[0].sha256`.
        at: String,
        problem: Problem,
    },
}

impl LoadError {
    /// The problem, for a value error.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            LoadError::Invalid { problem, .. } => Some(problem),
            LoadError::File(_) => None,
        }
    }

    /// The YAML path, for a value error.
    pub fn at(&self) -> Option<&str> {
        match self {
            LoadError::Invalid { at, .. } => Some(at),
            LoadError::File(_) => None,
        }
    }
}

/// What is wrong with one value of the registry.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("must not be empty")]
    Empty,
    #[error("must be above zero")]
    NotPositive,
    #[error("{0:?} is not a valid lower-case header name")]
    InvalidHeaderName(String),
    #[error("{0:?} is reserved: the sidecar must not set, remove or read credentials from it")]
    ReservedHeaderName(String),
    #[error("{name:?} is also {other}: each header must have one role")]
    HeaderCollision { name: String, other: &'static str },
    /// A file the registry names cannot be used (the inner error names it).
    #[error("{0}")]
    File(ConfigError),
    #[error("environment variable {0} is not set")]
    EnvNotSet(String),
    #[error("{}", key_source_rule(*.algorithm))]
    KeySource { algorithm: Algorithm },
    #[error("the secret is {len} bytes; at least {MIN_SECRET_LEN} are required")]
    SecretTooShort { len: usize },
    /// The key material is unusable or not of the entry's algorithm.
    #[error("{0}")]
    Key(KeyError),
    #[error(transparent)]
    KeySet(#[from] KeySetError),
    #[error("{0:?} is not a hex serial")]
    InvalidSerial(String),
    #[error("{}: {error}", path.display())]
    Crl { path: PathBuf, error: CrlError },
    #[error("must be non-empty printable ASCII")]
    InvalidId,
    #[error("must list at least one SAN")]
    NoPrincipals,
    #[error("{0:?} is not a URI or DNS name")]
    InvalidPrincipal(String),
    #[error("{}: {error}", path.display())]
    Bundle { path: PathBuf, error: BundleError },
    #[error(
        "{0:?} is not a valid SPIFFE trust domain name (lower-case letters, digits, '.', '-', '_')"
    )]
    InvalidTrustDomain(String),
    #[error("{0:?} is not 64 hex digits")]
    InvalidSha256(String),
    #[error("scope {0:?} must be printable ASCII without spaces or commas")]
    InvalidScope(String),
    #[error("key id {0:?} must be non-empty and unique within the service")]
    InvalidKeyId(String),
    #[error("{0:?} is not an RFC 3339 time")]
    InvalidTime(String),
    #[error("duplicate service id {id:?} (first at {first})")]
    DuplicateServiceId { id: String, first: Origin },
    #[error("principal {principal:?} is already claimed by service {owner:?} (at {first})")]
    PrincipalClaimed {
        principal: String,
        owner: String,
        first: Origin,
    },
    #[error("api key {key:?} has the same hash as a key of service {owner:?} (at {first})")]
    DuplicateKeyHash {
        key: String,
        owner: String,
        first: Origin,
    },
    #[error("a fragment must hold `services` and/or `revocation` (write `services: []` for none)")]
    EmptyFragment,
}

/// Where the first copy of a duplicated value is: its file (the main
/// registry or a fragment) and YAML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub at: String,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.at)
    }
}

/// Which files a key entry of `algorithm` must name.
fn key_source_rule(algorithm: Algorithm) -> String {
    match algorithm {
        Algorithm::Hs256 => "an HS256 key needs exactly one of secret_file and secret_env".into(),
        other => format!(
            "an {other} key needs exactly one of private_key_file and public_key_file, and no secret"
        ),
    }
}

/// Why a CRL file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    #[error("not a PEM or DER CRL")]
    NotCrl,
    #[error("the PEM block is not an X509 CRL")]
    WrongPemLabel,
    #[error("more than one PEM block: one CRL per file")]
    Multiple,
    #[error("the CRL signature does not verify against the CA that issued it")]
    BadSignature,
}

impl From<trust::CrlError> for CrlError {
    fn from(e: trust::CrlError) -> Self {
        match e {
            trust::CrlError::NotCrl => CrlError::WrongPemLabel,
            trust::CrlError::Multiple => CrlError::Multiple,
            trust::CrlError::Empty | trust::CrlError::Pem | trust::CrlError::Malformed => {
                CrlError::NotCrl
            }
        }
    }
}

/// Something an operator should fix that does not invalidate the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Warning {
    #[error("{at}: {}: the CRL is past its nextUpdate; refresh it", path.display())]
    StaleCrl { at: String, path: PathBuf },
    #[error(
        "{at} (kid {kid:?}) is the bundled DEVELOPMENT secret: anyone with this repository can forge tokens it accepts; generate your own with `service-auth gen-secret`"
    )]
    DevSecret { at: String, kid: String },
    /// A certificate of a CA bundle that vouches for nothing (now).
    #[error("{at}: {}: {warning}", path.display())]
    Bundle {
        at: String,
        path: PathBuf,
        warning: BundleWarning,
    },
    #[error(
        "{at}: service {service:?} has principals in several SPIFFE trust domains ({}); one workload identity normally lives in one",
        domains.join(", ")
    )]
    PrincipalsSpanDomains {
        at: String,
        service: String,
        domains: Vec<String>,
    },
    #[error(
        "{at}: principal {principal:?} is in trust domain {domain:?}, which trust_domains does not list: no certificate can authenticate it"
    )]
    UnlistedTrustDomain {
        at: String,
        principal: String,
        domain: String,
    },
    #[error(
        "{at}: principal {principal:?} uses the spiffe scheme but is not a valid SPIFFE ID: with trust_domains set, no certificate can authenticate it"
    )]
    NotSpiffeId { at: String, principal: String },
    /// A secret or private key file others can read (see `exposure`).
    #[error(
        "{at}: {}: mode {mode:04o} lets {readers} read this secret; make it readable by the sidecar alone (`chmod 600`)",
        path.display()
    )]
    ReadableSecret {
        at: String,
        path: PathBuf,
        mode: u32,
        readers: Readers,
    },
    #[error("{at} (kid {kid:?}) is past its not_after: it no longer verifies; remove it")]
    KeyRetired { at: String, kid: String },
    #[error(
        "token.keys: from {at} no key may sign and Checks will fail; add a key (with not_before) before then"
    )]
    SigningEnds {
        /// RFC 3339.
        at: String,
    },
}

/// Header names the registry may not give any role: the sidecar would
/// overwrite, strip or trust a header Envoy or the upstream relies on.
const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "authorization",
    "content-length",
    "content-type",
    "te",
    "connection",
    "transfer-encoding",
    super::SERVICE_ID_HEADER,
    "x-forwarded-client-cert",
];

/// The outcome of one load attempt and the files it involved.
pub struct Loaded {
    pub result: Result<Registry, Vec<LoadError>>,
    /// Every file (and fragment directory) the attempt read or tried to
    /// read, so a reloader knows what to watch even when the attempt failed
    /// because one was missing.
    pub sources: Vec<PathBuf>,
}

impl Registry {
    /// Reads and validates the registry file at `path`, returning every error found.
    pub fn load(path: &Path) -> Result<Registry, Vec<LoadError>> {
        Registry::load_tracked(&RegistryPaths::file(path)).result
    }

    /// Reads and validates a registry and its fragments as one snapshot.
    pub fn load_paths(paths: &RegistryPaths) -> Result<Registry, Vec<LoadError>> {
        Registry::load_tracked(paths).result
    }

    /// Like [`Registry::load_paths`], and also says which files the attempt read.
    pub fn load_tracked(paths: &RegistryPaths) -> Loaded {
        let mut builder = Builder {
            file: paths.main.clone(),
            errors: Vec::new(),
            warnings: Vec::new(),
            sources: vec![paths.main.clone()],
            bundles: HashMap::new(),
            now: OffsetDateTime::now_utc().unix_timestamp(),
        };
        let (main, mut errors, fragments) = read_files(paths, &mut builder.sources);
        let result = match main {
            Some(file) => match builder.build(paths, file, fragments) {
                Ok(registry) if errors.is_empty() => Ok(registry),
                Ok(_) => Err(errors),
                Err(invalid) => {
                    errors.extend(invalid);
                    Err(errors)
                }
            },
            None => Err(errors),
        };
        Loaded {
            result,
            sources: builder.sources,
        }
    }
}

/// Reads and parses the main file and every fragment: the main file (what
/// could be read of it) and its errors, then the fragments.
fn read_files(
    paths: &RegistryPaths,
    sources: &mut Vec<PathBuf>,
) -> (Option<RegistryFile>, Vec<LoadError>, Vec<Fragment>) {
    // A file refused only for unknown or duplicate keys is still
    // validated without them, so every error shows in one load (the
    // registry is rejected all the same).
    let (main, mut errors) = match config::read_yaml_partial::<RegistryFile>(&paths.main) {
        Ok(file) => (Some(file), Vec::new()),
        Err(refused) => (
            refused.value.map(|file| *file),
            refused.errors.into_iter().map(LoadError::File).collect(),
        ),
    };
    let mut fragments = Vec::new();
    match fragments::files(&paths.fragments, sources) {
        Ok(files) => {
            fragments.extend(files.iter().filter_map(|p| fragments::read(p, &mut errors)));
        }
        Err(e) => errors.extend(e),
    }
    (main, errors, fragments)
}

/// One file, main or fragment: where it is and its revocations. Its
/// services are consumed one entry at a time (see [`Builder::build`]).
struct Document<'f> {
    path: &'f Path,
    revocation: Option<&'f RevocationSection>,
}

/// What the uniqueness checks remember of an entry once it is consumed:
/// where it was written and its id, for the message about a later copy.
struct Seen {
    document: usize,
    index: usize,
    id: Arc<str>,
}

struct Builder {
    /// The file whose values are being checked: errors name it, relative
    /// paths resolve against it.
    file: PathBuf,
    errors: Vec<LoadError>,
    warnings: Vec<Warning>,
    sources: Vec<PathBuf>,
    /// CA bundles loaded so far, by resolved path: a file several services
    /// (or a service and a trust domain) name is parsed and warned about once.
    bundles: HashMap<PathBuf, Arc<Bundle>>,
    /// When this load happens (Unix seconds): bundle and CRL warnings are
    /// judged at it.
    now: i64,
}

impl Builder {
    fn err(&mut self, at: impl Into<String>, problem: Problem) {
        self.errors.push(LoadError::Invalid {
            file: self.file.clone(),
            at: at.into(),
            problem,
        });
    }

    /// Resolves a path named by the registry and records it as a source.
    fn source(&mut self, relative: &Path) -> PathBuf {
        let full = config::resolve(&self.file, relative);
        self.sources.push(full.clone());
        full
    }

    fn build(
        &mut self,
        paths: &RegistryPaths,
        mut file: RegistryFile,
        mut fragments: Vec<Fragment>,
    ) -> Result<Registry, Vec<LoadError>> {
        let token = self.token(&file);
        let request = self.request(&file);
        let throttle = self.throttle(&file);
        let trust_domains = self.trust_domains(&file);

        // The parsed entries are taken out of their files and dropped one
        // by one as they become services, so a reload holds the parsed
        // file and the new registry together only for the entry at hand
        // (memory: docs/performance.md, "Reload memory").
        let batches: Vec<Vec<ServiceEntry>> = std::iter::once(std::mem::take(&mut file.services))
            .chain(
                fragments
                    .iter_mut()
                    .map(|f| f.file.services.take().unwrap_or_default()),
            )
            .collect();
        let documents: Vec<Document<'_>> = std::iter::once(Document {
            path: &paths.main,
            revocation: Some(&file.revocation),
        })
        .chain(fragments.iter().map(|f| Document {
            path: &f.path,
            revocation: f.file.revocation.as_ref(),
        }))
        .collect();
        let total = batches.iter().map(Vec::len).sum();

        let mut services = Vec::with_capacity(total);
        let mut by_id = HashMap::with_capacity(total);
        // Principal and key hash -> (entry, position in it), the position
        // for the message about a later copy; reduced to the entry below.
        let mut by_uri: HashMap<String, (usize, usize)> = HashMap::with_capacity(total);
        let mut by_dns: HashMap<String, (usize, usize)> = HashMap::new();
        let mut by_key_hash: HashMap<KeyHash, (usize, usize)> = HashMap::with_capacity(total);
        // Uniqueness is checked over every entry as written, valid or not and
        // across every file, so a duplicate is reported even when one of its
        // copies has other errors. `seen[g]` is entry `g` of the merged list.
        let mut seen: Vec<Seen> = Vec::with_capacity(total);
        let mut seen_ids: HashMap<Arc<str>, usize> = HashMap::with_capacity(total);
        let origin = |seen: &[Seen], g: usize, rest: &str| {
            let first = &seen[g];
            Origin {
                file: documents[first.document].path.to_path_buf(),
                at: format!("services[{}]{rest}", first.index),
            }
        };
        for (d, batch) in batches.into_iter().enumerate() {
            self.file = documents[d].path.to_path_buf();
            for (i, entry) in batch.into_iter().enumerate() {
                let g = seen.len();
                let at = format!("services[{i}]");
                let id: Arc<str> = Arc::from(entry.id.as_str());
                match seen_ids.get(&id) {
                    Some(&other) => self.err(
                        format!("{at}.id"),
                        Problem::DuplicateServiceId {
                            id: entry.id.clone(),
                            first: origin(&seen, other, ".id"),
                        },
                    ),
                    None => {
                        seen_ids.insert(id.clone(), g);
                    }
                }
                seen.push(Seen {
                    document: d,
                    index: i,
                    id,
                });
                for (j, principal) in entry.principals.iter().enumerate() {
                    let Some(san) = normalize_principal(principal) else {
                        continue;
                    };
                    let map = match san.kind {
                        SanKind::Uri => &mut by_uri,
                        SanKind::Dns => &mut by_dns,
                    };
                    match map.get(&san.value) {
                        Some(&(other, k)) => {
                            let first = origin(&seen, other, &format!(".principals[{k}]"));
                            self.err(
                                format!("{at}.principals[{j}]"),
                                Problem::PrincipalClaimed {
                                    principal: san.value,
                                    owner: seen[other].id.to_string(),
                                    first,
                                },
                            );
                        }
                        None => {
                            map.insert(san.value, (g, j));
                        }
                    }
                }
                for (j, key) in entry.api_keys.iter().enumerate() {
                    let Some(hash) = parse_sha256(&key.sha256) else {
                        continue;
                    };
                    match by_key_hash.get(&hash) {
                        Some(&(other, k)) => {
                            let first = origin(&seen, other, &format!(".api_keys[{k}].sha256"));
                            self.err(
                                format!("{at}.api_keys[{j}].sha256"),
                                Problem::DuplicateKeyHash {
                                    key: key.id.clone(),
                                    owner: seen[other].id.to_string(),
                                    first,
                                },
                            );
                        }
                        None => {
                            by_key_hash.insert(hash, (g, j));
                        }
                    }
                }
                if let Some(service) = self.service(&entry, &at) {
                    by_id.entry(service.id.clone()).or_insert(g);
                    services.push(service);
                }
            }
        }
        drop((seen, seen_ids));
        let entry_of = |(g, _): (usize, usize)| g;
        let by_uri: HashMap<String, usize> =
            by_uri.into_iter().map(|(k, v)| (k, entry_of(v))).collect();
        let by_dns: HashMap<String, usize> =
            by_dns.into_iter().map(|(k, v)| (k, entry_of(v))).collect();
        let by_key_hash: HashMap<KeyHash, usize> = by_key_hash
            .into_iter()
            .map(|(k, v)| (k, entry_of(v)))
            .collect();
        let revocations = self.revocations(&documents);
        self.file = paths.main.clone();
        self.header_roles(&file);
        self.principal_domains(&services, &trust_domains);

        match (token, request) {
            (Some((token, uses_dev_secret)), Some(request)) if self.errors.is_empty() => {
                // With no errors every entry became a service, so the entry
                // indexes above are service indexes.
                Ok(Registry {
                    token,
                    request,
                    require_certificate: file.identity.require_certificate,
                    enforcement: file.enforcement,
                    throttle,
                    generation: next_generation(),
                    services,
                    by_id,
                    by_uri,
                    by_dns,
                    by_key_hash,
                    trust_domains,
                    revocations,
                    uses_dev_secret,
                    sources: self.sources.clone(),
                    warnings: std::mem::take(&mut self.warnings),
                })
            }
            _ => Err(std::mem::take(&mut self.errors)),
        }
    }

    /// `throttle`, when set: every number must be positive.
    fn throttle(&mut self, file: &RegistryFile) -> Option<ThrottleSettings> {
        let t = file.throttle.as_ref()?;
        let failures = std::num::NonZeroU32::new(t.failures);
        let max_tracked = std::num::NonZeroUsize::new(t.max_tracked);
        if failures.is_none() {
            self.err("throttle.failures", Problem::NotPositive);
        }
        if t.window.is_zero() {
            self.err("throttle.window", Problem::NotPositive);
        }
        if max_tracked.is_none() {
            self.err("throttle.max_tracked", Problem::NotPositive);
        }
        Some(ThrottleSettings {
            failures: failures?,
            window: t.window,
            max_tracked: max_tracked?,
        })
    }

    fn token(&mut self, file: &RegistryFile) -> Option<(TokenSettings, bool)> {
        let t = &file.token;
        if t.issuer.is_empty() {
            self.err("token.issuer", Problem::Empty);
        }
        if t.audience.is_empty() {
            self.err("token.audience", Problem::Empty);
        }
        if t.ttl.is_zero() {
            self.err("token.ttl", Problem::NotPositive);
        }
        let header = self.header_name("token.header", &t.header);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let before = self.errors.len();
        let mut keys = Vec::with_capacity(t.keys.len());
        let mut uses_dev_secret = false;
        for (i, k) in t.keys.iter().enumerate() {
            let at = format!("token.keys[{i}]");
            if k.kid.is_empty() {
                self.err(format!("{at}.kid"), Problem::Empty);
            }
            let not_before = self.time(format!("{at}.not_before"), k.not_before.as_deref());
            let not_after = self.time(format!("{at}.not_after"), k.not_after.as_deref());
            let Some((key, dev_secret)) = self.token_key(k, &at) else {
                continue;
            };
            // Any key, signing or verify-only: a verify-only dev secret still
            // lets anyone forge tokens this sidecar accepts.
            if dev_secret {
                uses_dev_secret = true;
                // The bundled secret is public anyway: who can read its file
                // adds nothing to the warning that it is the public one.
                let file_at = format!("{at}.secret_file");
                self.warnings.retain(
                    |w| !matches!(w, Warning::ReadableSecret { at: a, .. } if *a == file_at),
                );
                self.warnings.push(Warning::DevSecret {
                    at: at.clone(),
                    kid: k.kid.clone(),
                });
            }
            if not_after.is_some_and(|t| t <= now) {
                self.warnings.push(Warning::KeyRetired {
                    at,
                    kid: k.kid.clone(),
                });
            }
            keys.push(TokenKey {
                key,
                verify_only: k.verify_only,
                not_before,
                not_after,
            });
        }
        if self.errors.len() != before {
            return None;
        }
        let settings = match TokenSettings::new(
            t.issuer.clone(),
            t.audience.clone(),
            t.ttl,
            t.leeway,
            header?,
            keys,
        ) {
            Ok(settings) => settings,
            Err(e) => {
                self.err("token.keys", Problem::KeySet(e));
                return None;
            }
        };
        match settings.signing_gap(now) {
            Some(gap) if gap <= now => {
                self.err("token.keys", Problem::KeySet(KeySetError::NoSigningKeyNow));
                return None;
            }
            Some(gap) => self
                .warnings
                .push(Warning::SigningEnds { at: rfc3339(gap) }),
            None => {}
        }
        Some((settings, uses_dev_secret))
    }

    /// One key's material, read from the files (or variable) its entry
    /// names and checked against its algorithm; and whether it is the
    /// bundled development secret.
    fn token_key(&mut self, k: &KeyEntry, at: &str) -> Option<(Key, bool)> {
        let has_secret = k.secret_file.is_some() || k.secret_env.is_some();
        let has_pem = k.private_key_file.is_some() || k.public_key_file.is_some();
        let source_error = Problem::KeySource {
            algorithm: k.algorithm,
        };
        if k.algorithm == Algorithm::Hs256 {
            let (secret, field) = match (&k.secret_file, &k.secret_env) {
                _ if has_pem => {
                    self.err(at, source_error);
                    return None;
                }
                (Some(file), None) => (
                    self.key_file(&format!("{at}.secret_file"), file, true)
                        .map(trim_trailing_newline)?,
                    "secret_file",
                ),
                (None, Some(var)) => match std::env::var_os(var) {
                    Some(v) => (v.into_encoded_bytes(), "secret_env"),
                    None => {
                        self.err(format!("{at}.secret_env"), Problem::EnvNotSet(var.clone()));
                        return None;
                    }
                },
                _ => {
                    self.err(at, source_error);
                    return None;
                }
            };
            let dev_secret = hex::encode(Sha256::digest(&secret)) == DEV_SECRET_SHA256;
            return match Key::load(&k.kid, Algorithm::Hs256, KeySource::Secret(&secret)) {
                Ok(key) => Some((key, dev_secret)),
                Err(KeyError::SecretTooShort { len }) => {
                    self.err(at, Problem::SecretTooShort { len });
                    None
                }
                Err(e) => {
                    self.err(format!("{at}.{field}"), Problem::Key(e));
                    None
                }
            };
        }
        let (path, field, private) = match (&k.private_key_file, &k.public_key_file) {
            _ if has_secret => {
                self.err(at, source_error);
                return None;
            }
            (Some(path), None) => (path, "private_key_file", true),
            (None, Some(path)) => (path, "public_key_file", false),
            _ => {
                self.err(at, source_error);
                return None;
            }
        };
        let field_at = format!("{at}.{field}");
        if !private && !k.verify_only {
            self.err(
                field_at,
                Problem::KeySet(KeySetError::CannotSign(k.kid.clone())),
            );
            return None;
        }
        let pem = self.key_file(&field_at, path, private)?;
        let source = if private {
            KeySource::PrivateKeyPem(&pem)
        } else {
            KeySource::PublicKeyPem(&pem)
        };
        match Key::load(&k.kid, k.algorithm, source) {
            Ok(key) => Some((key, false)),
            Err(e) => {
                self.err(field_at, Problem::Key(e));
                None
            }
        }
    }

    /// Reads a secret or key file the registry names (size-capped); a
    /// `secret` one that others can read is a warning.
    fn key_file(&mut self, at: &str, relative: &Path, secret: bool) -> Option<Vec<u8>> {
        let full = self.source(relative);
        let bytes = config::read_capped_bytes(&full, MAX_AUX_FILE_BYTES)
            .map_err(|e| self.err(at, Problem::File(e)))
            .ok()?;
        if let Some((mode, readers)) = secret.then(|| exposure::other_readers(&full)).flatten() {
            self.warnings.push(Warning::ReadableSecret {
                at: at.to_owned(),
                path: full,
                mode,
                readers,
            });
        }
        Some(bytes)
    }

    /// An optional RFC 3339 time as Unix seconds; an error is recorded.
    fn time(&mut self, at: String, value: Option<&str>) -> Option<i64> {
        let value = value?;
        match OffsetDateTime::parse(value, &Rfc3339) {
            Ok(t) => Some(t.unix_timestamp()),
            Err(_) => {
                self.err(at, Problem::InvalidTime(value.to_owned()));
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

    /// A header name as Envoy delivers it: an RFC 9110 token in lower case,
    /// and not one the sidecar must leave alone.
    fn header_name(&mut self, at: &str, name: &str) -> Option<String> {
        if name.starts_with(':') || RESERVED_HEADERS.contains(&name) {
            self.err(at, Problem::ReservedHeaderName(name.to_owned()));
            return None;
        }
        let token_char =
            |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token_char) {
            self.err(at, Problem::InvalidHeaderName(name.to_owned()));
            return None;
        }
        Some(name.to_owned())
    }

    /// The token, API key and scope headers must be three different headers:
    /// a token header that is also the API key header would be set and
    /// removed by the same response.
    fn header_roles(&mut self, file: &RegistryFile) {
        let mut roles: Vec<(&str, &'static str)> = vec![
            (&file.token.header, "token.header"),
            (&file.request.api_key_header, "request.api_key_header"),
        ];
        if let Some(scope) = &file.request.scope_header {
            roles.push((scope, "request.scope_header"));
        }
        for (i, (name, at)) in roles.iter().enumerate() {
            if let Some((_, other)) = roles[..i].iter().find(|(n, _)| n == name) {
                self.err(
                    *at,
                    Problem::HeaderCollision {
                        name: (*name).to_owned(),
                        other,
                    },
                );
            }
        }
    }

    /// `trust_domains`: each name must be a valid SPIFFE trust domain and
    /// each file a CA bundle.
    fn trust_domains(&mut self, file: &RegistryFile) -> BTreeMap<String, Arc<Bundle>> {
        let mut domains = BTreeMap::new();
        for (name, path) in &file.trust_domains {
            let at = format!("trust_domains[{name:?}]");
            if !trust::is_valid_trust_domain(name) {
                self.err(at, Problem::InvalidTrustDomain(name.clone()));
                continue;
            }
            if let Some(bundle) = self.bundle(at, path) {
                domains.insert(name.clone(), bundle);
            }
        }
        domains
    }

    /// Loads the CA bundle `relative` names (for the value at `at`). Its
    /// certificates that vouch for nothing at load time become warnings.
    fn bundle(&mut self, at: String, relative: &Path) -> Option<Arc<Bundle>> {
        // Looked up before it is recorded as a source: with `ca_file` on
        // 50,000 services, `sources` (kept by the registry, and statted by
        // every poll) would otherwise hold the same path 50,000 times.
        let full = config::resolve(&self.file, relative);
        if let Some(bundle) = self.bundles.get(&full) {
            return Some(bundle.clone());
        }
        self.sources.push(full.clone());
        let pem = match config::read_capped_bytes(&full, MAX_AUX_FILE_BYTES) {
            Ok(pem) => pem,
            Err(e) => {
                self.err(at, Problem::File(e));
                return None;
            }
        };
        match Bundle::from_pem(&pem) {
            Ok(bundle) => {
                for warning in bundle.warnings(self.now) {
                    self.warnings.push(Warning::Bundle {
                        at: at.clone(),
                        path: full.clone(),
                        warning,
                    });
                }
                let bundle = Arc::new(bundle);
                self.bundles.insert(full, bundle.clone());
                Some(bundle)
            }
            Err(error) => {
                self.err(at, Problem::Bundle { path: full, error });
                None
            }
        }
    }

    /// Revocations from the serial lists (any issuer) and the CRL files (the
    /// CA that signed each) of every file, main and fragments. A CRL whose
    /// issuer is in a loaded bundle must carry the signature of a CA of that
    /// name there; a CRL no bundle vouches for is matched by issuer name
    /// alone. A CRL past its `nextUpdate` still revokes (stale revocations
    /// are still revocations) but is reported.
    fn revocations(&mut self, documents: &[Document<'_>]) -> Revocations {
        let mut revocations = Revocations::new();
        for document in documents {
            if let Some(revocation) = document.revocation {
                self.file = document.path.to_path_buf();
                self.revocation(revocation, &mut revocations);
            }
        }
        revocations
    }

    /// One file's `revocation` section, into `revocations`.
    fn revocation(&mut self, revocation: &RevocationSection, revocations: &mut Revocations) {
        for (i, s) in revocation.serials.iter().enumerate() {
            match trust::parse_serial(s) {
                Some(serial) => revocations.revoke_serial(&serial),
                None => self.err(
                    format!("revocation.serials[{i}]"),
                    Problem::InvalidSerial(s.clone()),
                ),
            }
        }
        for (i, crl) in revocation.crl_files.iter().enumerate() {
            let full = self.source(crl);
            let at = format!("revocation.crl_files[{i}]");
            let raw = match config::read_capped_bytes(&full, MAX_AUX_FILE_BYTES) {
                Ok(raw) => raw,
                Err(e) => {
                    self.err(at, Problem::File(e));
                    continue;
                }
            };
            let crl = match Crl::parse(&raw) {
                Ok(crl) => crl,
                Err(e) => {
                    let error = CrlError::from(e);
                    self.err(at, Problem::Crl { path: full, error });
                    continue;
                }
            };
            // Several trust domains may hold CAs of the same name (SPIRE's
            // default subject is `C=US, O=SPIFFE`): one of them signing the
            // CRL is enough; none of them doing so means it is forged.
            let checks: Vec<bool> = self
                .bundles
                .values()
                .filter_map(|bundle| crl.verify_with(bundle))
                .collect();
            if !checks.is_empty() && !checks.contains(&true) {
                let error = CrlError::BadSignature;
                self.err(at, Problem::Crl { path: full, error });
                continue;
            }
            if crl.next_update().is_some_and(|t| t < self.now) {
                self.warnings.push(Warning::StaleCrl { at, path: full });
            }
            revocations.add_crl(&crl);
        }
    }

    /// Warnings about SPIFFE principals (`check-config` shows them): a
    /// service whose principals span trust domains, and, with
    /// `trust_domains`, principals no certificate can ever authenticate.
    fn principal_domains(&mut self, services: &[Service], domains: &BTreeMap<String, Arc<Bundle>>) {
        for (i, service) in services.iter().enumerate() {
            let spanned = service.trust_domains();
            if spanned.len() > 1 {
                self.warnings.push(Warning::PrincipalsSpanDomains {
                    at: format!("services[{i}].principals"),
                    service: service.id.clone(),
                    domains: spanned.iter().map(|d| (*d).to_owned()).collect(),
                });
            }
            if domains.is_empty() {
                continue;
            }
            for (j, principal) in service.principals.iter().enumerate() {
                let at = format!("services[{i}].principals[{j}]");
                match trust::trust_domain(principal) {
                    Some(domain) if !domains.contains_key(domain) => {
                        self.warnings.push(Warning::UnlistedTrustDomain {
                            at,
                            principal: principal.clone(),
                            domain: domain.to_owned(),
                        });
                    }
                    None if trust::has_spiffe_scheme(principal) => {
                        self.warnings.push(Warning::NotSpiffeId {
                            at,
                            principal: principal.clone(),
                        });
                    }
                    _ => {}
                }
            }
        }
    }

    fn service(&mut self, entry: &ServiceEntry, at: &str) -> Option<Service> {
        let before = self.errors.len();
        if entry.id.is_empty() || !entry.id.bytes().all(|b| b.is_ascii_graphic()) {
            self.err(format!("{at}.id"), Problem::InvalidId);
        }
        if entry.principals.is_empty() {
            self.err(format!("{at}.principals"), Problem::NoPrincipals);
        }
        let mut principals = Vec::with_capacity(entry.principals.len());
        for (j, p) in entry.principals.iter().enumerate() {
            match normalize_principal(p) {
                Some(san) => principals.push(san.value),
                None => self.err(
                    format!("{at}.principals[{j}]"),
                    Problem::InvalidPrincipal(p.clone()),
                ),
            }
        }
        let ca = entry
            .ca_file
            .as_ref()
            .and_then(|ca| self.bundle(format!("{at}.ca_file"), ca));
        let mut pins = Vec::with_capacity(entry.certificate_sha256.len());
        for (j, pin) in entry.certificate_sha256.iter().enumerate() {
            match parse_sha256(pin) {
                Some(p) => pins.push(p),
                None => self.err(
                    format!("{at}.certificate_sha256[{j}]"),
                    Problem::InvalidSha256(pin.clone()),
                ),
            }
        }
        let mut scopes: Vec<String> = Vec::with_capacity(entry.scopes.len());
        for (j, s) in entry.scopes.iter().enumerate() {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
                self.err(
                    format!("{at}.scopes[{j}]"),
                    Problem::InvalidScope(s.clone()),
                );
            } else if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
        let mut api_keys: Vec<ApiKey> = Vec::with_capacity(entry.api_keys.len());
        for (j, k) in entry.api_keys.iter().enumerate() {
            let key_at = format!("{at}.api_keys[{j}]");
            if k.id.is_empty() || entry.api_keys[..j].iter().any(|other| other.id == k.id) {
                self.err(format!("{key_at}.id"), Problem::InvalidKeyId(k.id.clone()));
            }
            let not_after = self.time(format!("{key_at}.not_after"), k.not_after.as_deref());
            match parse_sha256(&k.sha256) {
                Some(sha256) => api_keys.push(ApiKey {
                    id: k.id.clone(),
                    sha256,
                    not_after,
                }),
                None => self.err(
                    format!("{key_at}.sha256"),
                    Problem::InvalidSha256(k.sha256.clone()),
                ),
            }
        }
        if self.errors.len() != before {
            return None;
        }
        Some(Service {
            id: entry.id.clone(),
            enforcement: entry.enforcement,
            principals,
            ca,
            pins,
            all_scopes: scopes.join(" "),
            scopes,
            api_keys,
        })
    }
}

/// Where merged entry `g` is: its file and `services[i]` followed by `rest`.
/// Validates a configured principal and puts it in the form SANs are
/// compared in. Wildcards are not supported: a principal names exactly one
/// identity.
fn normalize_principal(p: &str) -> Option<San> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let san = San::from_principal(p);
    let valid = match san.kind {
        SanKind::Uri => true,
        SanKind::Dns => san.value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        }),
    };
    valid.then_some(san)
}

fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Unix seconds as RFC 3339, for messages.
fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
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
    fn principals_are_validated() {
        assert_eq!(
            normalize_principal("API.Mesh.local").map(|s| s.value),
            Some("api.mesh.local".to_owned())
        );
        assert_eq!(
            normalize_principal("spiffe://mesh/ns/a").map(|s| s.value),
            Some("spiffe://mesh/ns/a".to_owned())
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
