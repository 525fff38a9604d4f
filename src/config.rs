//! The two configuration files exactly as operators write them.
//!
//! This module owns parsing only: typed structs with `deny_unknown_fields` (a
//! typo must not silently switch a check off), duration strings, file-size
//! caps and locating YAML errors. The structs also derive `Serialize`, so
//! tests and `dev-pki` write files from the same types the sidecar reads.
//! Turning a parsed registry into something a Check can use is `registry`'s
//! job.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::keys::Algorithm;

mod located;

/// Default location of the static config, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "config/service-auth.yaml";

/// Largest YAML file we parse. A 10,000-service registry is about 3 MiB; the
/// cap keeps a runaway file (or alias bomb) from eating the sidecar's memory.
pub const MAX_YAML_BYTES: u64 = 16 * 1024 * 1024;

/// Largest secret, key, CA bundle or CRL file: such files are kilobytes,
/// and a wrong path must not make the sidecar read a disk image.
pub const MAX_AUX_FILE_BYTES: u64 = 1024 * 1024;

/// An error in one configuration file, located as precisely as we can.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {} is above the {limit}-byte limit", path.display(), describe_size(*size, *limit))]
    TooLarge {
        path: PathBuf,
        /// The file's size when known, else `limit + 1` (it grew past the
        /// limit while being read).
        size: u64,
        /// The cap of this kind of file ([`MAX_YAML_BYTES`], [`MAX_AUX_FILE_BYTES`]).
        limit: u64,
    },
    #[error("{}: the file is not valid UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Yaml {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: {at}: {problem}", path.display())]
    Invalid {
        path: PathBuf,
        /// YAML path of the offending value, e.g. `limits.max_connections`.
        at: String,
        problem: Invalid,
    },
}

fn describe_size(size: u64, limit: u64) -> String {
    if size > limit + 1 {
        format!("{size} bytes")
    } else {
        "the file".to_owned()
    }
}

/// What is wrong with a value of the static config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("must be above zero")]
    NotPositive,
    #[error("listen.tls needs a TCP address: a Unix socket is protected by its file permissions")]
    TlsOnUnixSocket,
    #[error("must be at most {0}")]
    AboveMaximum(usize),
    #[error("is empty and would refuse every client: list Envoy's SAN(s) or remove the key")]
    EmptyAllowList,
    #[error("{0:?} is not a URI or DNS name (printable ASCII, no spaces, no wildcards)")]
    NotASan(String),
    #[error("is the same address as listen.grpc: one of the two listeners could not bind")]
    SameAddress,
}

impl ConfigError {
    pub fn invalid(path: &Path, at: impl Into<String>, problem: Invalid) -> Self {
        ConfigError::Invalid {
            path: path.to_path_buf(),
            at: at.into(),
            problem,
        }
    }

    /// The file this error is about.
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Read { path, .. }
            | ConfigError::TooLarge { path, .. }
            | ConfigError::NotUtf8 { path }
            | ConfigError::Yaml { path, .. }
            | ConfigError::Invalid { path, .. } => path,
        }
    }
}

/// Several errors of one static config, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", lines(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn lines(errors: &[ConfigError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// A file that was refused: every error found, and what could still be
/// read of it (unknown and duplicate keys left out) so that validation can
/// report its own errors too. `value` is `None` when the file could not be
/// read that far.
#[derive(Debug)]
pub struct Partial<T> {
    pub errors: Vec<ConfigError>,
    /// Boxed: a whole static config would make every `Err` large.
    pub value: Option<Box<T>>,
}

/// Reads a YAML file (size-capped) and deserializes it into `T`; the first
/// error serde_yaml finds (see [`read_yaml_partial`] for all of them).
pub fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = read_capped(path, MAX_YAML_BYTES)?;
    parse_yaml(path, &text)
}

/// Deserializes YAML text, attributing errors to `path` with line and
/// column; the first error serde_yaml finds (see [`parse_yaml_partial`] for
/// all of them).
pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    let text = without_bom(text);
    if let Some(value) = streamed(text) {
        return Ok(value);
    }
    serde_yaml::from_str(text).map_err(|e| yaml_error(path, &e))
}

/// `text` without a leading byte order mark, which some editors write and
/// serde_yaml would read as part of the first key.
fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// A serde_yaml error, located; serde_yaml's own trailing copy of the
/// location is dropped (it leads the line already).
fn yaml_error(path: &Path, error: &serde_yaml::Error) -> ConfigError {
    let (line, column) = error.location().map_or((0, 0), |l| (l.line(), l.column()));
    let message = error.to_string();
    let suffix = format!(" at line {line} column {column}");
    ConfigError::Yaml {
        path: path.to_path_buf(),
        line,
        column,
        message: message.strip_suffix(&suffix).unwrap_or(&message).to_owned(),
    }
}

/// [`read_yaml`], with every error.
pub fn read_yaml_partial<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Partial<T>> {
    let text = read_capped(path, MAX_YAML_BYTES).map_err(|e| Partial {
        errors: vec![e],
        value: None,
    })?;
    parse_yaml_partial(path, &text)
}

/// [`parse_yaml`], with every error: serde_yaml reads the file; when it
/// refuses it, `located` re-reads it for every error it can place, in file
/// order (see there for what is reported when).
pub fn parse_yaml_partial<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, Partial<T>> {
    let text = without_bom(text);
    if let Some(value) = streamed(text) {
        return Ok(value);
    }
    let refused = match serde_yaml::from_str(text) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    match located::diagnose::<T>(text) {
        Some(diagnosis) if !diagnosis.errors.is_empty() => Err(Partial {
            errors: diagnosis
                .errors
                .into_iter()
                .map(|e| ConfigError::Yaml {
                    path: path.to_path_buf(),
                    line: e.line,
                    column: e.column,
                    message: e.message,
                })
                .collect(),
            value: diagnosis.value.map(Box::new),
        }),
        _ => Err(Partial {
            errors: vec![yaml_error(path, &refused)],
            value: None,
        }),
    }
}

/// Reads `text` as a `T` with serde-saphyr, which streams the parser's
/// events into the type: serde_yaml 0.9 first collects every event of the
/// document (about 100 bytes each, 25 to 30 per registry service), and that
/// buffer was most of a reload's memory peak. `None` when serde-saphyr
/// refuses the file; serde_yaml then reads it and explains what is wrong,
/// so every message and location stays serde_yaml's. Set to refuse what
/// serde_yaml 0.9 reads differently (duplicate and merge keys, YAML 1.1
/// booleans, tags it does not know, loose indentation), so that a file both
/// accept means the same to both (tested below and fuzzed by
/// `registry_yaml`). It still accepts a few files serde_yaml refuses: a
/// quoted or `_`-separated number or boolean, and tabs where libyaml's
/// scanner allows none.
fn streamed<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
    let mut budget = serde_saphyr::Budget::default();
    // Sized for ordinary configs; the file-size cap already bounds these,
    // and a 50,000-service registry has more than a million events.
    budget.max_events = usize::MAX;
    budget.max_nodes = usize::MAX;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.strict_booleans = true;
    options.merge_keys = serde_saphyr::MergeKeyPolicy::Error;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    options.reject_unsupported_tags = true;
    options.strict_indentation = true;
    options.with_snippet = false;
    serde_saphyr::from_str_with_options(text, options).ok()
}

/// Reads a whole UTF-8 file, refusing anything larger than `limit` bytes.
pub fn read_capped(path: &Path, limit: u64) -> Result<String, ConfigError> {
    let bytes = read_capped_bytes(path, limit)?;
    String::from_utf8(bytes).map_err(|_| ConfigError::NotUtf8 {
        path: path.to_path_buf(),
    })
}

/// Reads a whole file, refusing anything larger than `limit` bytes.
pub fn read_capped_bytes(path: &Path, limit: u64) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let read_err = |error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    // Read one byte past the limit so an oversized file is detected without
    // trusting metadata (a file may grow while we read it).
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limit {
        let size = std::fs::metadata(path).map_or(limit + 1, |m| m.len().max(limit + 1));
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    Ok(bytes)
}

/// Resolves `relative` against the directory of the file that named it.
pub fn resolve(base_file: &Path, relative: &Path) -> PathBuf {
    if relative.is_absolute() {
        return relative.to_path_buf();
    }
    base_file
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(relative)
}

// ---------------------------------------------------------------------------
// Static config: config/service-auth.yaml
// ---------------------------------------------------------------------------

/// The static config, read once at start.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    pub listen: Listen,
    pub registry: RegistryPaths,
    #[serde(default)]
    pub reload: Reload,
    #[serde(default)]
    pub telemetry: Telemetry,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub limits: Limits,
    /// The optional plain-HTTP admin listener (JWKS, liveness, readiness).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
}

impl StaticConfig {
    /// Loads the static config, resolves the paths it names relative to it
    /// and validates it; every error.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        StaticConfig::load_partial(path).map_err(|p| ConfigErrors(p.errors))
    }

    /// [`StaticConfig::load`], keeping what could be read of a refused
    /// file, so `check-config` can go on to the registry it names.
    pub fn load_partial(path: &Path) -> Result<Self, Partial<Self>> {
        let (mut config, mut errors) = match read_yaml_partial::<StaticConfig>(path) {
            Ok(config) => (config, Vec::new()),
            Err(Partial {
                errors,
                value: Some(config),
            }) => (*config, errors),
            Err(refused) => return Err(refused),
        };
        config.resolve_paths(path);
        errors.extend(config.validate(path));
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(Partial {
                errors,
                value: Some(Box::new(config)),
            })
        }
    }

    /// Makes every path relative to `path` (the file this config came from).
    pub fn resolve_paths(&mut self, path: &Path) {
        self.registry.main = resolve(path, &self.registry.main);
        for fragment in &mut self.registry.fragments {
            *fragment = resolve(path, fragment);
        }
        if let Some(tls) = &mut self.listen.tls {
            tls.cert = resolve(path, &tls.cert);
            tls.key = resolve(path, &tls.key);
            tls.client_ca = resolve(path, &tls.client_ca);
        }
        if let ListenAddr::Unix(socket) = &mut self.listen.grpc {
            *socket = resolve(path, socket);
        }
        if let Some(ListenAddr::Unix(socket)) = self.admin.as_mut().map(|a| &mut a.listen) {
            *socket = resolve(path, socket);
        }
    }

    /// Every rule of the static config that a value alone decides.
    fn validate(&self, path: &Path) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut invalid =
            |at: String, problem| errors.push(ConfigError::invalid(path, at, problem));
        if self.reload.poll_interval.is_zero() {
            invalid("reload.poll_interval".into(), Invalid::NotPositive);
        }
        if self.listen.tls.is_some() && matches!(self.listen.grpc, ListenAddr::Unix(_)) {
            invalid("listen.tls".into(), Invalid::TlsOnUnixSocket);
        }
        if let Some(Err(problem)) = self.listen.tls.as_ref().map(ListenTls::validate) {
            invalid("listen.tls.allowed_sans".into(), problem);
        }
        for name in self.limits.zeros() {
            invalid(format!("limits.{name}"), Invalid::NotPositive);
        }
        // The listener counts slots with a semaphore, which has a ceiling.
        if self.limits.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
            invalid(
                "limits.max_connections".into(),
                Invalid::AboveMaximum(tokio::sync::Semaphore::MAX_PERMITS),
            );
        }
        if let Some(admin) = &self.admin {
            if admin.max_connections == 0 {
                invalid("admin.max_connections".into(), Invalid::NotPositive);
            }
            if admin.header_timeout.is_zero() {
                invalid("admin.header_timeout".into(), Invalid::NotPositive);
            }
            if admin.listen.clashes_with(&self.listen.grpc) {
                invalid("admin.listen".into(), Invalid::SameAddress);
            }
        }
        let otlp = self.telemetry.otlp.as_ref();
        if otlp.and_then(|o| o.interval).is_some_and(|i| i.is_zero()) {
            invalid("telemetry.otlp.interval".into(), Invalid::NotPositive);
        }
        errors
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub grpc: ListenAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenTls>,
}

/// Where the gRPC listener binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ListenAddr {
    /// Whether two listeners on these addresses could not both bind: the
    /// same Unix path, or the same fixed TCP port on the same (or a
    /// wildcard) address.
    fn clashes_with(&self, other: &ListenAddr) -> bool {
        match (self, other) {
            (ListenAddr::Unix(a), ListenAddr::Unix(b)) => a == b,
            // A wildcard address takes the port on every address.
            (ListenAddr::Tcp(a), ListenAddr::Tcp(b)) => {
                a.port() == b.port()
                    && a.port() != 0
                    && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
            }
            _ => false,
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A `listen.grpc` value that is neither `IP:PORT` nor `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither IP:PORT nor unix:PATH")]
pub struct BadListenAddr(pub String);

impl std::str::FromStr for ListenAddr {
    type Err = BadListenAddr;
    fn from_str(s: &str) -> Result<Self, BadListenAddr> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(BadListenAddr(s.to_owned()));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse()
            .map(ListenAddr::Tcp)
            .map_err(|_| BadListenAddr(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `listen.tls`: mTLS for the Envoy -> sidecar hop.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    /// When set, only hop clients whose certificate carries one of these
    /// SANs get in: a URI (it has a scheme, `spiffe://...`) matches URI SANs
    /// only, anything else is a DNS name and matches DNS SANs only
    /// (case-insensitively). `client_ca` is often the mesh CA that signs
    /// every workload, so without this list any workload can call the
    /// sidecar directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_sans: Option<Vec<String>>,
}

/// Warned at start when `listen.tls` has no `allowed_sans`.
pub const NO_ALLOWED_SANS_WARNING: &str = "listen.tls admits every client certificate from client_ca: \
     when that CA also signs workloads, any of them can call the sidecar directly and ask for tokens; \
     set listen.tls.allowed_sans to Envoy's own SAN(s)";

impl ListenTls {
    /// The start-up warning for a hop that trusts a whole CA, if it does.
    /// The caller decides where it is printed.
    pub fn allow_list_warning(&self) -> Option<&'static str> {
        self.allowed_sans
            .is_none()
            .then_some(NO_ALLOWED_SANS_WARNING)
    }

    fn validate(&self) -> Result<(), Invalid> {
        let Some(sans) = &self.allowed_sans else {
            return Ok(());
        };
        if sans.is_empty() {
            return Err(Invalid::EmptyAllowList);
        }
        // SANs are printable ASCII (identity refuses anything else in a
        // certificate); `*` would suggest wildcard matching, which there is
        // none of.
        let not_a_san = |san: &&String| {
            san.is_empty() || !san.bytes().all(|b| b.is_ascii_graphic()) || san.contains('*')
        };
        match sans.iter().find(not_a_san) {
            Some(san) => Err(Invalid::NotASan(san.escape_debug().to_string())),
            None => Ok(()),
        }
    }
}

/// `registry`: one file, or a list whose first entry is the main registry
/// file and whose further entries are fragment files or directories of
/// fragments (`registry: [registry.yaml, registry.d/]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryPaths {
    /// The file holding everything (token, request, identity, ...).
    pub main: PathBuf,
    /// Fragment files and directories, in the order listed; each holds only
    /// `services` and/or `revocation`.
    pub fragments: Vec<PathBuf>,
}

impl RegistryPaths {
    /// A registry that is one file.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        RegistryPaths {
            main: path.into(),
            fragments: Vec::new(),
        }
    }
}

impl From<PathBuf> for RegistryPaths {
    fn from(path: PathBuf) -> Self {
        RegistryPaths::file(path)
    }
}

impl From<&Path> for RegistryPaths {
    fn from(path: &Path) -> Self {
        RegistryPaths::file(path)
    }
}

impl From<&str> for RegistryPaths {
    fn from(path: &str) -> Self {
        RegistryPaths::file(path)
    }
}

impl fmt::Display for RegistryPaths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.main.display())?;
        for fragment in &self.fragments {
            write!(f, ", {}", fragment.display())?;
        }
        Ok(())
    }
}

impl Serialize for RegistryPaths {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        if self.fragments.is_empty() {
            return self.main.serialize(s);
        }
        let mut seq = s.serialize_seq(Some(1 + self.fragments.len()))?;
        seq.serialize_element(&self.main)?;
        for fragment in &self.fragments {
            seq.serialize_element(fragment)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for RegistryPaths {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Paths;
        impl<'de> serde::de::Visitor<'de> for Paths {
            type Value = RegistryPaths;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path, or a non-empty list of paths")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RegistryPaths, E> {
                Ok(RegistryPaths::file(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RegistryPaths, A::Error> {
                let main: PathBuf = seq.next_element()?.ok_or_else(|| {
                    serde::de::Error::custom("the list is empty: name the main registry file first")
                })?;
                let mut fragments = Vec::new();
                while let Some(path) = seq.next_element()? {
                    fragments.push(path);
                }
                Ok(RegistryPaths { main, fragments })
            }
        }
        d.deserialize_any(Paths)
    }
}

/// Resource limits of the gRPC listener. Defaults suit one Envoy per pod;
/// every one can be set in `limits:`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest decoded gRPC message. Envoy's CheckRequest carries the
    /// request headers (at most 60 KiB by default) and the peer certificate.
    pub max_message_bytes: usize,
    /// Largest HTTP/2 header block of the gRPC call itself.
    pub max_header_list_bytes: u32,
    /// Concurrent Checks per connection (HTTP/2 streams). Envoy keeps one
    /// connection per worker, so this is a per-worker limit.
    pub max_concurrent_streams: u32,
    /// Connections being served. A connection takes a slot only once its
    /// handshake is done; while all are taken it waits, still pending.
    pub max_connections: usize,
    /// Connections still in their handshake (TLS, then the HTTP/2 preface
    /// and first SETTINGS) or waiting for a slot. When full, the oldest is
    /// dropped to admit the new one, so silent sockets cannot starve a client.
    pub max_pending_handshakes: usize,
    /// A connection must finish its handshake (TLS when on, then the HTTP/2
    /// preface and first SETTINGS) and get a slot within this time of being
    /// accepted, or it is closed. Unix sockets too.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// Upper bound on one Check, after which gRPC answers DEADLINE_EXCEEDED.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// HTTP/2 PING interval, and how long a PING may go unanswered before the
    /// connection is closed: dead peers do not hold connections.
    #[serde(with = "duration")]
    pub keepalive_interval: Duration,
    #[serde(with = "duration")]
    pub keepalive_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1024 * 1024,
            max_header_list_bytes: 16 * 1024,
            max_concurrent_streams: 1024,
            max_connections: 1024,
            max_pending_handshakes: 64,
            handshake_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// Every limit that is zero (every limit must be positive).
    fn zeros(&self) -> Vec<&'static str> {
        let values = [
            ("max_message_bytes", self.max_message_bytes == 0),
            ("max_header_list_bytes", self.max_header_list_bytes == 0),
            ("max_concurrent_streams", self.max_concurrent_streams == 0),
            ("max_connections", self.max_connections == 0),
            ("max_pending_handshakes", self.max_pending_handshakes == 0),
            ("handshake_timeout", self.handshake_timeout.is_zero()),
            ("request_timeout", self.request_timeout.is_zero()),
            ("keepalive_interval", self.keepalive_interval.is_zero()),
            ("keepalive_timeout", self.keepalive_timeout.is_zero()),
        ];
        values
            .iter()
            .filter(|(_, zero)| *zero)
            .map(|(name, _)| *name)
            .collect()
    }
}

/// `admin:`: plain HTTP for the JWKS and probes. Loopback by default: it
/// serves nothing secret, but nothing outside the pod needs it either
/// unless upstreams fetch the JWKS from it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    pub listen: ListenAddr,
    /// Open connections; further clients wait in the kernel's backlog.
    pub max_connections: usize,
    /// A connection must send its first byte, and then a request's whole
    /// header, within this time each, or it is closed.
    #[serde(with = "duration")]
    pub header_timeout: Duration,
}

impl Default for Admin {
    /// `127.0.0.1:9192`, 64 connections, 5 s.
    fn default() -> Self {
        Admin {
            listen: ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 9192))),
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reload {
    /// Safety net beside file events and SIGHUP.
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    /// A changed file is applied only once it has been unchanged this long,
    /// so a registry written in place in several steps is never read half
    /// written.
    #[serde(with = "duration")]
    pub settle: Duration,
}

impl Default for Reload {
    fn default() -> Self {
        Reload {
            poll_interval: Duration::from_secs(2),
            settle: Duration::from_millis(500),
        }
    }
}

/// `telemetry`: every field is optional so that the standard `OTEL_*`
/// environment variables can fill what the file leaves out (the file wins
/// where it speaks; see `telemetry::export`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<Otlp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Otlp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<OtlpProtocol>,
    #[serde(
        default,
        with = "optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum OtlpProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    #[serde(default)]
    pub format: LogFormat,
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

// ---------------------------------------------------------------------------
// Registry file: config/registry.yaml
// ---------------------------------------------------------------------------

/// The registry file as written; validated into a `registry::Registry`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    pub token: TokenSection,
    #[serde(default)]
    pub identity: IdentitySection,
    /// SPIFFE trust domain -> CA bundle file (PEM roots and intermediates).
    /// When set, a certificate with a `spiffe://` SAN must chain to its own
    /// domain's bundle.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "unique_keys::deserialize"
    )]
    pub trust_domains: BTreeMap<String, PathBuf>,
    #[serde(default)]
    pub request: RequestSection,
    #[serde(default)]
    pub revocation: RevocationSection,
    /// Registry-wide: whether a denied Check is refused or only reported.
    /// Services and routes may override it.
    #[serde(default, skip_serializing_if = "Enforcement::is_enforce")]
    pub enforcement: Enforcement,
    /// Failed-authentication throttling; absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<ThrottleSection>,
    /// Required (`services: []` for none): a truncated file must not read
    /// as an empty registry.
    #[serde(deserialize_with = "exact::vec")]
    pub services: Vec<ServiceEntry>,
}

/// A registry fragment: a file after the first in a `registry` list, or in
/// a listed directory. It holds only services and revocations; everything
/// else lives in the main file. At least one of the two keys is required
/// (`services: []` for none), so an emptied or truncated fragment is an
/// error, not a team's services silently gone.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFragment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation: Option<RevocationSection>,
}

/// Whether a denied Check is refused (`enforce`) or answered OK and only
/// reported as `would_deny` (`report`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    #[default]
    Enforce,
    Report,
}

impl Enforcement {
    pub fn is_enforce(&self) -> bool {
        *self == Enforcement::Enforce
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Enforce => "enforce",
            Enforcement::Report => "report",
        }
    }
}

/// `throttle`: a caller with `failures` failed Checks within `window` is
/// refused until the window passes; at most `max_tracked` callers are
/// remembered at once.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleSection {
    pub failures: u32,
    #[serde(with = "duration")]
    pub window: Duration,
    #[serde(default = "default_max_tracked")]
    pub max_tracked: usize,
}

fn default_max_tracked() -> usize {
    100_000
}

/// How the caller's identity may be established.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySection {
    /// Without a forwarded certificate a Check is `missing_identity`; when
    /// false, Envoy's `source.principal` is accepted instead.
    pub require_certificate: bool,
}

impl Default for IdentitySection {
    fn default() -> Self {
        IdentitySection {
            require_certificate: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    pub issuer: String,
    pub audience: String,
    #[serde(default = "default_ttl", with = "duration")]
    pub ttl: Duration,
    #[serde(default = "default_leeway", with = "duration")]
    pub leeway: Duration,
    #[serde(default = "default_token_header")]
    pub header: String,
    pub keys: Vec<KeyEntry>,
}

fn default_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_token_header() -> String {
    "x-service-jwt".into()
}

/// One `token.keys` entry. HS256 keys name a secret (`secret_file` or
/// `secret_env`); EdDSA and ES256 keys a PEM file (`private_key_file`, or
/// `public_key_file` for a verify-only key).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub kid: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub algorithm: Algorithm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify_only: bool,
    /// RFC 3339: the key may sign only from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// RFC 3339: the key stops verifying (and is no longer published) then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSection {
    #[serde(default = "default_api_key_header")]
    pub api_key_header: String,
    #[serde(default = "default_scope_header")]
    pub scope_header: Option<String>,
    #[serde(default)]
    pub forward_api_key: bool,
}

impl Default for RequestSection {
    fn default() -> Self {
        RequestSection {
            api_key_header: default_api_key_header(),
            scope_header: default_scope_header(),
            forward_api_key: false,
        }
    }
}

fn default_api_key_header() -> String {
    "x-api-key".into()
}
fn default_scope_header() -> Option<String> {
    Some("x-auth-scope".into())
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationSection {
    #[serde(default)]
    pub serials: Vec<String>,
    #[serde(default)]
    pub crl_files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    pub id: String,
    #[serde(deserialize_with = "exact::vec")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "exact::vec"
    )]
    pub certificate_sha256: Vec<String>,
    #[serde(default, deserialize_with = "exact::vec")]
    pub scopes: Vec<String>,
    #[serde(default, deserialize_with = "exact::vec")]
    pub api_keys: Vec<ApiKeyEntry>,
    /// Overrides the registry-wide `enforcement` for this caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<Enforcement>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    pub id: String,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

/// Lists kept at their length. serde grows a `Vec` by doubling when the
/// format does not say how long a list is (a streaming YAML reader never
/// does), and a large registry holds a few lists per service while a reload
/// builds the next snapshot beside the serving one: with one API key per
/// service, the spare capacity was a third of the parsed file's memory.
mod exact {
    use serde::{Deserialize, Deserializer};

    pub fn vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        let mut items = Vec::<T>::deserialize(d)?;
        items.shrink_to_fit();
        Ok(items)
    }
}

/// `300ms`, `30s`, `5m`, `1h` (anything `humantime` accepts) both ways.
mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}

/// A map whose keys must be unique: serde's maps keep the last duplicate
/// silently, and a registry must not pick one of two values for a key.
mod unique_keys {
    use std::collections::BTreeMap;
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{Deserialize, Deserializer, Error, MapAccess, Visitor};

    pub fn deserialize<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
    where
        D: Deserializer<'de>,
        V: Deserialize<'de>,
    {
        struct Unique<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Unique<V> {
            type Value = BTreeMap<String, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((key, value)) = map.next_entry::<String, V>()? {
                    if out.contains_key(&key) {
                        return Err(A::Error::custom(format!("duplicate key {key:?}")));
                    }
                    out.insert(key, value);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Unique(PhantomData))
    }
}

mod optional_duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        duration::deserialize(d).map(Some)
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every text the streaming reader accepts, serde_yaml accepts too, with
    /// the same value: the fast path never changes what a file means.
    /// Texts it refuses go to serde_yaml, as before.
    fn same_as_serde_yaml<T>(text: &str) -> Option<T>
    where
        T: serde::de::DeserializeOwned + Serialize,
    {
        let streamed: Option<T> = streamed(text);
        if let Some(value) = &streamed {
            let reference: T = serde_yaml::from_str(text).unwrap_or_else(|e| {
                panic!("serde_yaml refuses what streamed accepts: {text:?}: {e}")
            });
            assert_eq!(
                serde_json::to_value(value).unwrap(),
                serde_json::to_value(&reference).unwrap(),
                "{text:?}"
            );
        }
        streamed
    }

    #[test]
    fn the_streaming_reader_accepts_nothing_serde_yaml_reads_otherwise() {
        let token = "token: {issuer: i, audience: a, keys: []}\n";
        let service = "- {id: a, principals: [spiffe://d/a], api_keys: [{id: k, sha256: x}]}";
        let accepted = [
            format!("{token}services: []\n"),
            format!("{token}services:\n{service}\n"),
            format!("{token}services:\n- &s {{id: a, principals: [p]}}\n- *s\n"),
            format!("{token}services:\n- id: '007'\n  principals: [!!str 12]\n"),
            format!("{token}services:\n- id: 0x10\n  principals: [true, ~x, 1e3]\n"),
            format!("---\n{token}services: []\n...\n"),
        ];
        for text in &accepted {
            assert!(
                same_as_serde_yaml::<RegistryFile>(text).is_some(),
                "{text:?}"
            );
        }
        // Each of these means something else (or nothing) to serde_yaml:
        // the streaming reader leaves it to serde_yaml.
        let left_to_serde_yaml = [
            format!("{token}services: []\nservices: []\n"),
            format!("{token}services:\n- {{id: a, id: b, principals: [p]}}\n"),
            format!("{token}services:\n- &s {{id: a, principals: [p]}}\n- {{<<: *s, id: b}}\n"),
            format!("{token}identity: {{require_certificate: yes}}\nservices: []\n"),
            format!("{token}identity: {{require_certificate: on}}\nservices: []\n"),
            format!("{token}services:\n- {{id: !custom a, principals: [p]}}\n"),
            format!("{token}services:\n"),
            format!("{token}services: ~\n"),
            format!("{token}services: []\n---\n{token}services: []\n"),
            token.to_string(),
            String::new(),
        ];
        for text in &left_to_serde_yaml {
            let _ = same_as_serde_yaml::<RegistryFile>(text);
        }
        let listen = "listen: {grpc: 127.0.0.1:1}\nregistry: r.yaml\n";
        let limits = |value: &str| format!("{listen}limits: {{max_message_bytes: {value}}}\n");
        for value in [
            "1000",
            "0o17",
            "0x10",
            "+5",
            "017",
            "1e3",
            "-1",
            "~",
            "''",
            "9999999999999999999999",
        ] {
            let _ = same_as_serde_yaml::<StaticConfig>(&limits(value));
        }
        let identity = |value: &str| {
            format!("{token}identity: {{require_certificate: {value}}}\nservices: []\n")
        };
        for value in ["true", "TRUE", "False", "y", "1", "~"] {
            let _ = same_as_serde_yaml::<RegistryFile>(&identity(value));
        }
        // Where the two part: a number or boolean written quoted, or a
        // number with `_` separators, is read by the streaming reader for
        // what it says; serde_yaml refuses it as a string. The meaning is
        // never in doubt, so the difference is kept (docs/configuration.md).
        for (value, number) in [("'1000'", 1000), ("1_000", 1000), ("\"0x10\"", 16)] {
            let text = limits(value);
            let read: StaticConfig = streamed(&text).unwrap();
            assert_eq!(read.limits.max_message_bytes, number, "{text}");
            assert!(serde_yaml::from_str::<StaticConfig>(&text).is_err());
        }
        for (value, flag) in [("'true'", true), ("\"false\"", false)] {
            let text = identity(value);
            let read: RegistryFile = streamed(&text).unwrap();
            assert_eq!(read.identity.require_certificate, flag, "{text}");
            assert!(serde_yaml::from_str::<RegistryFile>(&text).is_err());
        }
        // Found by fuzzing: tabs after a lone CR inside a plain scalar,
        // which libyaml's scanner refuses and saphyr's folds away.
        let tabs = "token:\n  issuer: i\n  audience: \t\tf\t\r\t\t\n  keys: []\nservices: []\n";
        let read: RegistryFile = streamed(tabs).unwrap();
        assert_eq!(read.token.audience, "f");
        assert!(serde_yaml::from_str::<RegistryFile>(tabs).is_err());
        for text in ["services:\n", "services: ~\n", "revocation:\n  serials:\n"] {
            let _ = same_as_serde_yaml::<RegistryFragment>(text);
        }
    }

    /// The same property over damaged copies of the shipped files: bytes
    /// deleted, repeated or replaced by YAML's own punctuation, the way a
    /// half-written or hand-mangled file looks.
    #[test]
    fn damaged_files_read_the_same_both_ways_or_not_at_all() {
        use rand::{Rng, SeedableRng};
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let registry = std::fs::read_to_string(root.join("registry.yaml")).unwrap();
        let config = std::fs::read_to_string(root.join("service-auth.yaml")).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(19);
        let punctuation = b" \n-:#'\"[]{},&*!|>~0yn_";
        let damage = |text: &str, rng: &mut rand::rngs::StdRng| {
            let mut bytes = text.as_bytes().to_vec();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..bytes.len());
                match rng.random_range(0..3) {
                    0 => {
                        let end = (at + rng.random_range(1..8)).min(bytes.len());
                        bytes.drain(at..end);
                    }
                    1 => {
                        let end = (at + rng.random_range(1..40)).min(bytes.len());
                        let copy = bytes[at..end].to_vec();
                        bytes.splice(at..at, copy);
                    }
                    _ => bytes[at] = punctuation[rng.random_range(0..punctuation.len())],
                }
            }
            String::from_utf8(bytes).ok()
        };
        let (mut read, mut refused) = (0, 0);
        for _ in 0..1500 {
            if let Some(text) = damage(&registry, &mut rng) {
                match same_as_serde_yaml::<RegistryFile>(&text) {
                    Some(_) => read += 1,
                    None => refused += 1,
                }
            }
            if let Some(text) = damage(&config, &mut rng) {
                match same_as_serde_yaml::<StaticConfig>(&text) {
                    Some(_) => read += 1,
                    None => refused += 1,
                }
            }
        }
        // Both kinds happen, so the property was exercised both ways.
        assert!(
            read > 100 && refused > 100,
            "{read} read, {refused} refused"
        );
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_key() {
        let text = "\u{feff}token: {issuer: i, audience: a, keys: []}\nservices: []\n";
        assert!(parse_yaml::<RegistryFile>(Path::new("r.yaml"), text).is_ok());
        assert!(parse_yaml_partial::<RegistryFile>(Path::new("r.yaml"), text).is_ok());
        // serde_yaml alone reads it as a key named "\u{feff}token".
        assert!(serde_yaml::from_str::<RegistryFile>(text).is_err());
    }

    #[test]
    fn the_shipped_files_read_the_same_both_ways() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let registry = std::fs::read_to_string(root.join("registry.yaml")).unwrap();
        assert!(same_as_serde_yaml::<RegistryFile>(&registry).is_some());
        let config = std::fs::read_to_string(root.join("service-auth.yaml")).unwrap();
        assert!(same_as_serde_yaml::<StaticConfig>(&config).is_some());
    }

    #[test]
    fn listen_addr_forms() {
        assert_eq!(
            "127.0.0.1:9191".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:9191".parse().unwrap())
        );
        assert_eq!(
            "unix:/run/a.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/run/a.sock".into())
        );
        assert!("localhost:9191".parse::<ListenAddr>().is_err());
        assert!("unix:".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn unknown_field_is_an_error_with_location() {
        let text = "listen:\n  grpc: 127.0.0.1:1\nregistry: r.yaml\nreload:\n  pol_interval: 2s\n";
        let err = parse_yaml::<StaticConfig>(Path::new("c.yaml"), text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("c.yaml:5:"), "{msg}");
        assert!(msg.contains("pol_interval"), "{msg}");
    }

    #[test]
    fn durations_parse_and_bad_ones_fail() {
        let ok: Reload = serde_yaml::from_str("poll_interval: 300ms").unwrap();
        assert_eq!(ok.poll_interval, Duration::from_millis(300));
        assert!(serde_yaml::from_str::<Reload>("poll_interval: soon").is_err());
    }

    #[test]
    fn configs_round_trip_through_yaml() {
        let text = "listen:\n  grpc: unix:/run/a.sock\nregistry: r.yaml\nreload:\n  poll_interval: 1m 30s\nlimits:\n  handshake_timeout: 250ms\n";
        let config: StaticConfig = serde_yaml::from_str(text).unwrap();
        let again: StaticConfig =
            serde_yaml::from_str(&serde_yaml::to_string(&config).unwrap()).unwrap();
        assert_eq!(again.listen.grpc, ListenAddr::Unix("/run/a.sock".into()));
        assert_eq!(again.reload.poll_interval, Duration::from_secs(90));
        assert_eq!(again.limits.handshake_timeout, Duration::from_millis(250));
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let text = "id: a\nid: b\nprincipals: []\n";
        assert!(serde_yaml::from_str::<ServiceEntry>(text).is_err());
        // Also among trust domains: which bundle would a domain get?
        let text = "token: {issuer: i, audience: a, keys: []}\nservices: []\n\
                    trust_domains:\n  a.test: one.pem\n  a.test: two.pem\n";
        assert!(serde_yaml::from_str::<RegistryFile>(text).is_err());
    }

    #[test]
    fn relative_paths_resolve_against_the_naming_file() {
        assert_eq!(
            resolve(Path::new("/etc/sa/config.yaml"), Path::new("reg.yaml")),
            PathBuf::from("/etc/sa/reg.yaml")
        );
        assert_eq!(
            resolve(Path::new("/etc/sa/config.yaml"), Path::new("/abs/reg.yaml")),
            PathBuf::from("/abs/reg.yaml")
        );
    }

    #[test]
    fn oversized_file_is_refused_with_its_own_limit_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.yaml");
        std::fs::write(&path, vec![b'a'; 5000]).unwrap();
        let err = read_capped(&path, 1024).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::TooLarge {
                    size: 5000,
                    limit: 1024,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("5000 bytes is above the 1024-byte limit")
        );
        assert!(matches!(
            read_capped(&dir.path().join("missing.yaml"), 1024),
            Err(ConfigError::Read { .. })
        ));
    }

    fn tls(extra: &str) -> Result<ListenTls, Invalid> {
        let text = format!("cert: c.crt\nkey: c.key\nclient_ca: ca.crt\n{extra}");
        let tls: ListenTls = serde_yaml::from_str(&text).unwrap();
        tls.validate().map(|()| tls)
    }

    #[test]
    fn allowed_sans_are_validated_and_their_absence_warned() {
        let open = tls("").unwrap();
        assert_eq!(open.allow_list_warning(), Some(NO_ALLOWED_SANS_WARNING));
        let listed = tls("allowed_sans: [spiffe://mesh/envoy, envoy.mesh.local]\n").unwrap();
        assert_eq!(listed.allow_list_warning(), None);
        assert_eq!(
            tls("allowed_sans: []\n").unwrap_err(),
            Invalid::EmptyAllowList
        );
        for (bad, shown) in [
            ("\"\"", ""),
            ("\"a b\"", "a b"),
            ("\"*.mesh.local\"", "*.mesh.local"),
            ("\"caf\u{e9}\"", "caf\u{e9}"),
            ("\"a\\nb\"", "a\\nb"),
        ] {
            assert_eq!(
                tls(&format!("allowed_sans: [ok.mesh, {bad}]\n")).unwrap_err(),
                Invalid::NotASan(shown.into()),
                "{bad}"
            );
        }
        let text = "listen:\n  grpc: 127.0.0.1:1\n  tls:\n    cert: c\n    key: k\n    client_ca: ca\n    allowed_sans: []\nregistry: r.yaml\n";
        let config: StaticConfig = serde_yaml::from_str(text).unwrap();
        let errors = config.validate(Path::new("c.yaml"));
        assert!(
            matches!(&errors[..], [ConfigError::Invalid { at, problem: Invalid::EmptyAllowList, .. }] if at == "listen.tls.allowed_sans"),
            "{errors:?}"
        );
    }

    #[test]
    fn pending_handshakes_are_limited_and_the_slot_cap_bounded() {
        assert_eq!(Limits::default().max_pending_handshakes, 64);
        let zero = Limits {
            max_pending_handshakes: 0,
            ..Limits::default()
        };
        assert_eq!(zero.zeros(), ["max_pending_handshakes"]);
        let text = "listen:\n  grpc: 127.0.0.1:1\nregistry: r.yaml\nlimits:\n  max_connections: 18446744073709551615\n";
        let config: StaticConfig = serde_yaml::from_str(text).unwrap();
        let errors = config.validate(Path::new("c.yaml"));
        assert!(
            matches!(&errors[..], [ConfigError::Invalid { at, problem: Invalid::AboveMaximum(_), .. }] if at == "limits.max_connections"),
            "{errors:?}"
        );
    }

    #[test]
    fn registry_is_a_file_or_a_list_of_files_and_directories() {
        let one: StaticConfig =
            serde_yaml::from_str("listen:\n  grpc: 127.0.0.1:1\nregistry: r.yaml\n").unwrap();
        assert_eq!(one.registry, RegistryPaths::file("r.yaml"));
        let text = "listen:\n  grpc: 127.0.0.1:1\nregistry: [r.yaml, teams/, /abs/x.yaml]\n";
        let mut many: StaticConfig = serde_yaml::from_str(text).unwrap();
        many.resolve_paths(Path::new("/etc/sa/config.yaml"));
        assert_eq!(
            many.registry,
            RegistryPaths {
                main: "/etc/sa/r.yaml".into(),
                fragments: vec!["/etc/sa/teams/".into(), "/abs/x.yaml".into()],
            }
        );
        for config in [one, many] {
            let again: StaticConfig =
                serde_yaml::from_str(&serde_yaml::to_string(&config).unwrap()).unwrap();
            assert_eq!(again.registry, config.registry);
        }
        let err = parse_yaml::<StaticConfig>(
            Path::new("c.yaml"),
            "listen:\n  grpc: 127.0.0.1:1\nregistry: []\n",
        )
        .unwrap_err();
        assert!(
            matches!(&err, ConfigError::Yaml { line: 3, message, .. } if message.contains("the list is empty")),
            "{err:?}"
        );
    }

    #[test]
    fn fragments_hold_only_services_and_revocation() {
        let ok: RegistryFragment = serde_yaml::from_str("services: []\n").unwrap();
        assert!(ok.services.is_some() && ok.revocation.is_none());
        let err =
            serde_yaml::from_str::<RegistryFragment>("token: {}\nservices: []\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `token`"), "{err}");
    }

    #[test]
    fn every_zero_limit_is_named() {
        let text = "listen:\n  grpc: 127.0.0.1:1\nregistry: r.yaml\nlimits:\n  max_connections: 0\n  request_timeout: 0s\n  keepalive_timeout: 0ms\n  max_message_bytes: 0\nreload:\n  poll_interval: 0s\n";
        let config: StaticConfig = serde_yaml::from_str(text).unwrap();
        let errors: Vec<String> = config
            .validate(Path::new("c.yaml"))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            [
                "c.yaml: reload.poll_interval: must be above zero",
                "c.yaml: limits.max_message_bytes: must be above zero",
                "c.yaml: limits.max_connections: must be above zero",
                "c.yaml: limits.request_timeout: must be above zero",
                "c.yaml: limits.keepalive_timeout: must be above zero",
            ]
        );
    }

    #[test]
    fn the_admin_listener_may_not_take_the_grpc_address() {
        let clash = |grpc: &str, admin: &str| {
            let text =
                format!("listen:\n  grpc: {grpc}\nregistry: r.yaml\nadmin:\n  listen: {admin}\n");
            let config: StaticConfig = serde_yaml::from_str(&text).unwrap();
            let errors = config.validate(Path::new("c.yaml"));
            match &errors[..] {
                [] => false,
                [
                    ConfigError::Invalid {
                        at,
                        problem: Invalid::SameAddress,
                        ..
                    },
                ] if at == "admin.listen" => true,
                other => panic!("{other:?}"),
            }
        };
        assert!(clash("127.0.0.1:9191", "127.0.0.1:9191"));
        assert!(clash("0.0.0.0:9191", "127.0.0.1:9191"));
        assert!(clash("unix:/run/a.sock", "unix:/run/a.sock"));
        assert!(
            !clash("127.0.0.1:0", "127.0.0.1:0"),
            "port 0: the kernel picks two ports"
        );
        assert!(!clash("127.0.0.1:9191", "127.0.0.1:9192"));
        assert!(!clash("127.0.0.1:9191", "127.0.0.2:9191"));
    }

    #[test]
    fn every_structural_error_of_a_refused_file_at_its_own_line() {
        let text = "listen:\n  grpc: 127.0.0.1:1\nregistry: r.yaml\nreload:\n  pol_interval: 2s\nlimits:\n  max_conections: 1\nlog:\n  level: info\nlog:\n  level: debug\n";
        let refused = parse_yaml_partial::<StaticConfig>(Path::new("c.yaml"), text).unwrap_err();
        let lines: Vec<String> = refused.errors.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].starts_with("c.yaml:5:3: reload: unknown field `pol_interval`, expected "),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with(
                "c.yaml:7:3: limits: unknown field `max_conections`, expected one of "
            ),
            "{lines:?}"
        );
        assert_eq!(
            lines[2],
            "c.yaml:10:1: duplicate key `log` (first at line 8 column 1)"
        );
        let config = refused.value.expect("read without the refused keys");
        assert_eq!(
            config.log.level, "info",
            "the first copy of a duplicate key is kept"
        );
        // A syntax error is serde_yaml's, without its own copy of the
        // location at the end.
        let text = "listen:\n  grpc: 127.0.0.1:1\nregistry: r.yaml\nlog: {level: info\n";
        let refused = parse_yaml_partial::<StaticConfig>(Path::new("c.yaml"), text).unwrap_err();
        let lines: Vec<String> = refused.errors.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("c.yaml:5:1: "), "{lines:?}");
        assert!(!lines[0].ends_with(" at line 5 column 1"), "{lines:?}");
        assert!(refused.value.is_none());
    }
}
