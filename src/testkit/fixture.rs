//! Registry and static-config files for tests, built from the typed config
//! structs and written into a temporary directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{
    ApiKeyEntry, Enforcement, KeyEntry, Listen, ListenAddr, Log, RegistryFile, RegistryFragment,
    RegistryPaths, Reload, RequestSection, RevocationSection, ServiceEntry, StaticConfig,
    TokenSection,
};
use crate::registry::Registry;

/// The signing secret fixtures use (tests only).
pub const SECRET: &str = "test-signing-secret-0123456789abcdef-0123456789";
pub const ISSUER: &str = "https://service-auth.test";
pub const AUDIENCE: &str = "orders";
/// The kid of the fixture's signing key.
pub const KID: &str = "test-1";

/// Hex SHA-256, as the registry stores API keys and pins.
pub fn sha256_hex(data: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data.as_bytes()))
}

/// One service in a generated registry.
#[derive(Clone, Default, Debug)]
pub struct Svc {
    pub id: String,
    pub principals: Vec<String>,
    pub scopes: Vec<String>,
    /// (key id, plaintext key, optional RFC 3339 not_after)
    pub keys: Vec<(String, String, Option<String>)>,
    pub ca_file: Option<String>,
    pub pins: Vec<String>,
    /// The service's own `enforcement`, when set.
    pub enforcement: Option<Enforcement>,
}

impl Svc {
    /// A service with one principal, scopes `read write` and one API key.
    pub fn new(id: &str, principal: &str, key: &str) -> Self {
        Svc {
            id: id.into(),
            principals: vec![principal.into()],
            scopes: vec!["read".into(), "write".into()],
            keys: vec![("k1".into(), key.into(), None)],
            ..Default::default()
        }
    }

    /// The registry entry, with key hashes instead of keys.
    pub fn entry(&self) -> ServiceEntry {
        ServiceEntry {
            id: self.id.clone(),
            principals: self.principals.clone(),
            ca_file: self.ca_file.as_ref().map(PathBuf::from),
            certificate_sha256: self.pins.clone(),
            scopes: self.scopes.clone(),
            api_keys: self
                .keys
                .iter()
                .map(|(id, key, not_after)| ApiKeyEntry {
                    id: id.clone(),
                    sha256: sha256_hex(key),
                    not_after: not_after.clone(),
                })
                .collect(),
            enforcement: self.enforcement,
        }
    }
}

/// Service `i` of team `team` in a registry at scale: one URI principal and
/// two API keys, the second with a `not_after`. The benchmarks build their
/// 10,000- to 50,000-service registries from it.
pub fn scale_service(team: usize, i: usize) -> Svc {
    let id = format!("team{team}-svc{i}");
    let mut svc = Svc::new(
        &id,
        &format!("spiffe://mesh.bench/ns/team{team}/sa/svc{i}"),
        &format!("key-{id}-primary-0123456789"),
    );
    svc.keys.push((
        "secondary".into(),
        format!("key-{id}-secondary-0123456789"),
        Some("2030-01-01T00:00:00Z".into()),
    ));
    svc
}

/// A registry fragment holding `services`.
pub fn fragment(services: &[Svc]) -> RegistryFragment {
    RegistryFragment {
        services: Some(services.iter().map(Svc::entry).collect()),
        revocation: None,
    }
}

/// A registry file for `services`, signing with `secrets/jwt.key` (kid
/// [`KID`]) and the default request headers.
pub fn registry_file(services: &[Svc]) -> RegistryFile {
    RegistryFile {
        token: TokenSection {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            ttl: Duration::from_secs(300),
            leeway: Duration::from_secs(30),
            header: "x-service-jwt".into(),
            keys: vec![KeyEntry {
                kid: KID.into(),
                secret_file: Some("secrets/jwt.key".into()),
                ..Default::default()
            }],
        },
        identity: Default::default(),
        trust_domains: BTreeMap::new(),
        request: RequestSection::default(),
        revocation: RevocationSection::default(),
        enforcement: Enforcement::Enforce,
        throttle: None,
        services: services.iter().map(Svc::entry).collect(),
    }
}

/// A static config listening on `grpc`, reading `registry`, polling often
/// (tests wait for reloads), logging JSON at info.
pub fn static_config(grpc: ListenAddr, registry: &Path) -> StaticConfig {
    StaticConfig {
        listen: Listen { grpc, tls: None },
        registry: RegistryPaths::file(registry),
        reload: Reload {
            poll_interval: Duration::from_millis(200),
            settle: Duration::from_millis(100),
        },
        telemetry: Default::default(),
        log: Log::default(),
        limits: Default::default(),
        admin: None,
    }
}

/// A directory holding `registry.yaml`, `secrets/jwt.key` and, on request,
/// `service-auth.yaml`. Removed when dropped.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    /// Applied to every registry this fixture writes from services.
    pub revocation: RevocationSection,
    /// Likewise: SPIFFE trust domain -> bundle file (relative to the fixture).
    pub trust_domains: BTreeMap<String, PathBuf>,
}

impl Fixture {
    pub fn new(services: &[Svc]) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        write(&dir.path().join("secrets/jwt.key"), SECRET.as_bytes());
        let fixture = Fixture {
            dir,
            revocation: RevocationSection::default(),
            trust_domains: BTreeMap::new(),
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

    /// The registry file this fixture writes for `services`.
    pub fn registry_file(&self, services: &[Svc]) -> RegistryFile {
        let mut file = registry_file(services);
        file.revocation = self.revocation.clone();
        file.trust_domains = self.trust_domains.clone();
        file
    }

    pub fn write_registry(&self, services: &[Svc]) {
        self.write(&self.registry_file(services));
    }

    /// Writes `file` as the registry.
    pub fn write(&self, file: &RegistryFile) {
        write(&self.registry_path(), to_yaml(file).as_bytes());
    }

    /// Writes `text` as the registry, verbatim (for broken files).
    pub fn write_text(&self, text: &str) {
        write(&self.registry_path(), text.as_bytes());
    }

    /// Writes `fragment` as a registry fragment at `relative` (e.g.
    /// `registry.d/team-a.yaml`) and returns its path.
    pub fn write_fragment(&self, relative: &str, fragment: &RegistryFragment) -> PathBuf {
        self.write_file(relative, to_yaml(fragment))
    }

    /// Writes a file relative to the fixture directory.
    pub fn write_file(&self, relative: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(relative);
        write(&path, contents.as_ref());
        path
    }

    /// Loads the registry, panicking with every error if it is invalid.
    pub fn load(&self) -> Registry {
        Registry::load(&self.registry_path()).unwrap_or_else(|errors| {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!("fixture registry invalid: {errors:#?}")
        })
    }

    /// A static config for this fixture's registry, listening on `grpc`.
    pub fn static_config(&self, grpc: ListenAddr) -> StaticConfig {
        static_config(grpc, &self.registry_path())
    }

    /// Writes `config` as `service-auth.yaml` and returns its path.
    pub fn write_config(&self, config: &StaticConfig) -> PathBuf {
        let path = self.dir.path().join("service-auth.yaml");
        write(&path, to_yaml(config).as_bytes());
        path
    }
}

fn to_yaml(value: &impl serde::Serialize) -> String {
    serde_yaml::to_string(value).unwrap_or_else(|e| panic!("serialize YAML: {e}"))
}

/// Writes `contents` to `path`, creating it with mode 0600 as a careful
/// operator would: a secret others can read is a registry warning, which
/// tests that list warnings would otherwise all see.
fn write(path: &Path, contents: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(contents))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
