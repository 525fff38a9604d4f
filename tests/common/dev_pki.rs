//! `service-auth dev-pki` output, made by the real binary in a temp dir: the
//! layout the shipped Envoy configs and the Compose file expect, the API
//! keys it printed, and its `service-auth.yaml` as a typed config.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use service_auth::config::{ListenAddr, StaticConfig, parse_yaml};

/// Where the Compose file and the README expect `dev-pki` output.
pub const DEMO_PKI: &str = "demo-pki";

pub struct DevPki {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub stdout: String,
}

impl DevPki {
    /// Runs `service-auth dev-pki <tmp>/demo-pki`.
    pub fn generate() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(DEMO_PKI);
        let out = Command::new(env!("CARGO_BIN_EXE_service-auth"))
            .arg("dev-pki")
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .expect("run service-auth dev-pki");
        assert!(
            out.status.success(),
            "dev-pki failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        DevPki {
            _tmp: tmp,
            dir,
            stdout: String::from_utf8(out.stdout).unwrap(),
        }
    }

    /// The key printed as `export <SERVICE>_API_KEY=<key>  # ...`.
    pub fn api_key(&self, service: &str) -> String {
        let prefix = format!("export {}_API_KEY=", service.to_uppercase());
        let line = self
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in dev-pki output:\n{}", self.stdout));
        line.split_whitespace().next().unwrap().to_owned()
    }

    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.dir.join(relative))
            .unwrap_or_else(|e| panic!("dev-pki did not write {relative}: {e}"))
    }

    /// The generated `service-auth.yaml` (its paths stay relative to `dir`).
    pub fn static_config(&self) -> StaticConfig {
        self.parse_config(&self.read("service-auth.yaml"))
    }

    /// `text`, a version of the generated `service-auth.yaml` (say, with its
    /// commented block uncommented as a user would), as a typed config.
    pub fn parse_config(&self, text: &str) -> StaticConfig {
        parse_yaml(&self.dir.join("service-auth.yaml"), text)
            .unwrap_or_else(|e| panic!("dev-pki's service-auth.yaml: {e}\n{text}"))
    }

    /// Writes `config` as `service-auth.test.yaml` beside the generated one,
    /// so its relative paths resolve the same, and returns its path. Its admin
    /// listener, if any, moves to a kernel-chosen port: tests run in
    /// parallel, and only one of them could bind the generated 9192.
    pub fn write_config(&self, config: &StaticConfig) -> PathBuf {
        let mut config = config.clone();
        if let Some(admin) = &mut config.admin {
            admin.listen = ListenAddr::Tcp("127.0.0.1:0".parse().unwrap());
        }
        let path = self.dir.join("service-auth.test.yaml");
        std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
        path
    }

    /// The DER of every certificate in `relative` (a chain or bundle file), in
    /// file order.
    pub fn certificates(&self, relative: &str) -> Vec<Vec<u8>> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        CertificateDer::pem_slice_iter(self.read(relative).as_bytes())
            .map(|c| c.unwrap().to_vec())
            .collect()
    }

    /// An mTLS client presenting `clients/<service>.{crt,key}` (the
    /// certificate and the intermediate), trusting the development root CA.
    pub fn client(&self, service: &str) -> reqwest::Client {
        let identity = format!(
            "{}{}",
            self.read(&format!("clients/{service}.crt")),
            self.read(&format!("clients/{service}.key"))
        );
        reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.read("certs/ca.crt").as_bytes()).unwrap(),
            )
            .identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap())
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// A rustls client config trusting `ca` (relative to the dev-pki dir) and
    /// presenting the chain in `cert` with `key`, for raw TLS connections.
    pub fn rustls_client(&self, ca: &str, cert: &str, key: &str) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.read(ca).as_bytes()).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            // The whole chain, as curl sends it: Envoy trusts only the root.
            CertificateDer::pem_slice_iter(self.read(cert).as_bytes())
                .map(|c| c.unwrap())
                .collect(),
            PrivateKeyDer::from_pem_slice(self.read(key).as_bytes()).unwrap(),
        )
        .unwrap();
        Arc::new(config)
    }
}
