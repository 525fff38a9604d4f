//! Helpers shared by the integration and end-to-end tests: the crate's
//! `testkit` (PKI, requests, registry files), real processes (`procs`), an
//! OTLP receiver (`otlp`), and the few helpers that need test-only crates.
#![allow(dead_code)] // each test binary uses a different subset

pub mod dev_pki;
pub mod load;
pub mod otlp;
pub mod procs;

use std::path::Path;

pub use service_auth::config::ListenAddr;
#[allow(unused_imports)]
pub use service_auth::testkit::pki::{self, Ca, ClientSpec, Issued};
#[allow(unused_imports)]
pub use service_auth::testkit::{
    AUDIENCE, Fixture, ISSUER, Req, SECRET, Svc, registry_file, sha256_hex, unix_now,
};

/// Loopback, port chosen by the kernel when the listener binds (no races).
pub fn tcp0() -> ListenAddr {
    ListenAddr::Tcp("127.0.0.1:0".parse().unwrap())
}

/// Writes what `envoy/envoy.yaml` reads from Envoy's working directory:
/// `certs/ca.crt` (the mesh CA) and `certs/envoy.{crt,key}` (for `localhost`).
/// Also `certs/hop-ca.crt` (the same CA again), which `envoy-mtls-hop.yaml`
/// trusts for the sidecar: tests of the hop issue both ends from one CA.
pub fn write_envoy_certs(ca: &Ca, workdir: &Path) {
    let certs = workdir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let server = ca.server(&["localhost"]);
    std::fs::write(certs.join("ca.crt"), ca.cert_pem()).unwrap();
    std::fs::write(certs.join("hop-ca.crt"), ca.cert_pem()).unwrap();
    std::fs::write(certs.join("envoy.crt"), &server.cert_pem).unwrap();
    std::fs::write(certs.join("envoy.key"), &server.key_pem).unwrap();
}

/// An HTTPS client that trusts `ca` and presents `cert` (mTLS).
pub fn https_client(ca: &Ca, cert: &Issued) -> reqwest::Client {
    let identity =
        reqwest::Identity::from_pem(format!("{}{}", cert.cert_pem, cert.key_pem).as_bytes())
            .expect("client identity");
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
        .identity(identity)
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A sidecar running in this test process on a kernel-chosen port, with
/// its registry installed.
pub struct InProcess {
    pub sidecar: service_auth::Sidecar,
    pub addr: std::net::SocketAddr,
}

impl InProcess {
    /// Starts the sidecar on `config` (its `listen.grpc` should be port 0)
    /// and waits until its registry is installed.
    pub async fn start(config: &service_auth::config::StaticConfig) -> InProcess {
        let mut sidecar = service_auth::Sidecar::start(config)
            .await
            .expect("start the sidecar");
        sidecar.ready().await.expect("load the registry");
        let ListenAddr::Tcp(addr) = *sidecar.local_addr() else {
            panic!("in-process sidecars listen on TCP");
        };
        InProcess { sidecar, addr }
    }

    /// Starts a sidecar on loopback for `fixture`'s registry.
    pub async fn for_fixture(fixture: &Fixture) -> InProcess {
        InProcess::start(&fixture.static_config(tcp0())).await
    }

    pub async fn client(
        &self,
    ) -> envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient<
        tonic::transport::Channel,
    > {
        procs::authz_client(self.addr).await
    }
}
