//! The listener: mTLS and Unix-socket hops through a real Envoy, who is
//! refused at the handshake, certificate rotation under a running sidecar,
//! and idle connections that must not starve a normal client.
//!
//! Tests that only need a sidecar answering run it in-process; rotation
//! (read from the process's log) and the socket file run the binary.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::procs::{Echo, Envoy, EnvoyPorts, Sidecar, envoy_config_variant, poll};
use common::{Ca, ClientSpec, Fixture, InProcess, Issued, ListenAddr, Req, Svc, tcp0, unix_now};
use envoy_types::ext_authz::v3::pb::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use service_auth::config::{ListenTls, StaticConfig};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const A_URI: &str = "spiffe://mesh.test/a";
const A_KEY: &str = "key-of-a-0123456789";
const WAIT: Duration = Duration::from_secs(20);

/// A fixture, its CA and certificates, and a config that listens with
/// `listen.tls` (paths relative to the config file, as an operator writes
/// them).
struct TlsSetup {
    fixture: Fixture,
    ca: Ca,
    /// Envoy's client certificate for the hop.
    client: Issued,
    served: Issued,
    config: StaticConfig,
}

fn write_pair(dir: &Path, name: &str, issued: &Issued) {
    std::fs::write(dir.join(format!("{name}.crt")), &issued.cert_pem).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &issued.key_pem).unwrap();
}

fn tls_setup() -> TlsSetup {
    let fixture = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let ca = Ca::new("hop CA");
    let tls_dir = fixture.path().join("tls");
    std::fs::create_dir(&tls_dir).unwrap();
    let served = ca.server(&["service-auth"]);
    write_pair(&tls_dir, "sidecar", &served);
    std::fs::write(tls_dir.join("ca.crt"), ca.cert_pem()).unwrap();
    let mut config = fixture.static_config(tcp0());
    config.listen.tls = Some(ListenTls {
        cert: "tls/sidecar.crt".into(),
        key: "tls/sidecar.key".into(),
        client_ca: "tls/ca.crt".into(),
        allowed_sans: None,
    });
    let client = ca.client(&ClientSpec::empty().with_cn("envoy"));
    TlsSetup {
        fixture,
        ca,
        client,
        served,
        config,
    }
}

impl TlsSetup {
    /// The sidecar in this process, its TLS paths resolved as `serve`
    /// resolves them against the config file.
    async fn in_process(&self) -> InProcess {
        let mut config = self.config.clone();
        config.resolve_paths(&self.fixture.path().join("service-auth.yaml"));
        InProcess::start(&config).await
    }

    /// The binary, once its TLS listener completes a handshake.
    async fn binary(&self) -> Sidecar {
        let mut sidecar = Sidecar::spawn(&self.fixture.write_config(&self.config), &[]);
        let ListenAddr::Tcp(addr) = sidecar.listening().await else {
            panic!("a TLS listener is TCP");
        };
        let deadline = std::time::Instant::now() + WAIT;
        while self.channel(addr, &self.client).await.is_err() {
            sidecar.assert_running();
            assert!(
                std::time::Instant::now() < deadline,
                "the TLS listener never came up"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        sidecar
    }

    async fn channel(
        &self,
        addr: SocketAddr,
        identity: &Issued,
    ) -> Result<Channel, tonic::transport::Error> {
        Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(self.ca.cert_pem()))
                    .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem))
                    .domain_name("service-auth"),
            )?
            .connect()
            .await
    }

    fn tls_dir(&self) -> PathBuf {
        self.fixture.path().join("tls")
    }
}

/// Allowed, as seen from a Check over `channel`.
async fn allowed(channel: Channel, ca: &Ca) -> Result<bool, tonic::Status> {
    let mut client = AuthorizationClient::new(channel);
    let req = Req::cert(ca.client(&ClientSpec::uri(A_URI)).forwarded()).key(A_KEY);
    let resp = client.check(req.build()).await?.into_inner();
    Ok(matches!(
        resp.http_response,
        Some(HttpResponse::OkResponse(_))
    ))
}

/// A TLS 1.3 client trusting `ca`, presenting `identity` (or no certificate).
fn tls_connector(ca: &Ca, identity: Option<&Issued>) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots);
    let config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(identity.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

fn server_name() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from("service-auth").unwrap()
}

/// The certificate a fresh TLS handshake is presented with.
async fn presented_certificate(addr: SocketAddr, ca: &Ca, identity: &Issued) -> Option<Vec<u8>> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let tls = tls_connector(ca, Some(identity))
        .connect(server_name(), stream)
        .await
        .ok()?;
    Some(tls.get_ref().1.peer_certificates()?.first()?.to_vec())
}

/// The TLS alert the sidecar refuses a handshake with. In TLS 1.3 the
/// client's side of the handshake ends before the server has judged its
/// certificate, so the refusal may arrive on the first read instead.
async fn refusal(addr: SocketAddr, ca: &Ca, identity: Option<&Issued>) -> rustls::Error {
    use tokio::io::AsyncReadExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let attempt = async {
        match tls_connector(ca, identity)
            .connect(server_name(), tcp)
            .await
        {
            Ok(mut tls) => match tls.read(&mut [0u8; 64]).await {
                Ok(n) => panic!("the sidecar accepted the handshake and sent {n} bytes"),
                Err(e) => e,
            },
            Err(e) => e,
        }
    };
    let error = tokio::time::timeout(WAIT, attempt)
        .await
        .expect("the sidecar answers the handshake");
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(e) => e.clone(),
        None => panic!("not a TLS refusal: {error:?}"),
    }
}

/// What a plaintext HTTP/2 client (gRPC without TLS) gets back from the TLS
/// port: every byte the sidecar sends before it closes the connection.
async fn plaintext_answer(addr: SocketAddr) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The HTTP/2 preface and an empty SETTINGS frame.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("the sidecar closes a plaintext connection")
        .expect("closed cleanly");
    answer
}

/// Each refusal is the specific one for its client, and the same sidecar
/// still serves a good client right after it (a dead sidecar refuses
/// nothing in particular).
#[tokio::test]
async fn only_clients_with_a_certificate_from_client_ca_get_in() {
    use rustls::AlertDescription::{CertificateRequired, UnknownCA};
    let s = tls_setup();
    let sidecar = s.in_process().await;
    let addr = sidecar.addr;
    let good_client_served = || async {
        let channel = s.channel(addr, &s.client).await.expect("a good handshake");
        assert!(
            allowed(channel, &s.ca)
                .await
                .expect("a good client's Check")
        );
    };
    good_client_served().await;

    // Plaintext gRPC to the TLS port: not TLS, so the sidecar answers with
    // one fatal `decode_error` alert record, then closes.
    const FATAL: u8 = 2;
    const DECODE_ERROR: u8 = 50;
    let answer = plaintext_answer(addr).await;
    assert!(
        matches!(
            answer.as_slice(),
            [0x15, 0x03, _, 0x00, 0x02, FATAL, DECODE_ERROR]
        ),
        "expected one fatal decode_error alert, got {answer:02x?}"
    );
    good_client_served().await;

    // A client certificate from another CA.
    let stranger = Ca::new("another CA").client(&ClientSpec::empty().with_cn("envoy"));
    assert_eq!(
        refusal(addr, &s.ca, Some(&stranger)).await,
        rustls::Error::AlertReceived(UnknownCA)
    );
    good_client_served().await;

    // No client certificate at all.
    assert_eq!(
        refusal(addr, &s.ca, None).await,
        rustls::Error::AlertReceived(CertificateRequired)
    );
    good_client_served().await;
}

#[tokio::test]
async fn rotated_certificate_serves_new_handshakes_and_open_connections_live_on() {
    let s = tls_setup();
    let sidecar = s.binary().await;
    let open = s.channel(sidecar.addr(), &s.client).await.unwrap();
    assert!(allowed(open.clone(), &s.ca).await.unwrap());
    assert_eq!(
        presented_certificate(sidecar.addr(), &s.ca, &s.client).await,
        Some(s.served.der.clone())
    );

    // A half-written certificate file (in place) keeps the old pair.
    let cert_path = s.tls_dir().join("sidecar.crt");
    let half = &s.served.cert_pem[..s.served.cert_pem.len() / 2];
    std::fs::write(&cert_path, half).unwrap();
    poll("the failed TLS reload to be logged", WAIT, || {
        let log = sidecar.log_text();
        async move {
            log.lines()
                .any(|l| l.contains("listener_tls_reload") && l.contains("failure"))
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        presented_certificate(sidecar.addr(), &s.ca, &s.client).await,
        Some(s.served.der.clone()),
        "a broken file must not replace the serving certificate"
    );

    // A complete new pair, written the way cert-manager does (rename).
    let rotated = s.ca.server(&["service-auth"]);
    let tmp = s.tls_dir().join("new");
    std::fs::create_dir(&tmp).unwrap();
    write_pair(&tmp, "sidecar", &rotated);
    std::fs::rename(tmp.join("sidecar.key"), s.tls_dir().join("sidecar.key")).unwrap();
    std::fs::rename(tmp.join("sidecar.crt"), &cert_path).unwrap();
    let (addr, ca, client, want) = (sidecar.addr(), &s.ca, &s.client, rotated.der.clone());
    poll("new handshakes to present the rotated certificate", WAIT, || {
        let want = want.clone();
        async move { (presented_certificate(addr, ca, client).await == Some(want)).then_some(()) }
    })
    .await;
    // The connection opened before the rotation still works.
    assert!(allowed(open, &s.ca).await.unwrap());
}

#[tokio::test]
async fn idle_connections_do_not_starve_a_normal_client() {
    let fixture = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let mut config = fixture.static_config(tcp0());
    config.limits.max_connections = 32;
    config.limits.handshake_timeout = Duration::from_millis(300);
    let sidecar = InProcess::start(&config).await;
    let addr = sidecar.addr;
    // Far more idle connections than the cap: none sends a byte.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let ca = Ca::new("idle CA");
    let mut client = sidecar.client().await;
    let resp = tokio::time::timeout(
        WAIT,
        client.check(
            Req::cert(ca.client(&ClientSpec::uri(A_URI)).forwarded())
                .key(A_KEY)
                .build(),
        ),
    )
    .await
    .expect("a normal client is served despite the idle connections")
    .unwrap()
    .into_inner();
    assert!(matches!(
        resp.http_response,
        Some(HttpResponse::OkResponse(_))
    ));
    // The idle ones are closed by the sidecar (read returns EOF).
    let mut first = idle.swap_remove(0);
    let closed = tokio::time::timeout(WAIT, async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1];
        first.read(&mut buf).await
    })
    .await
    .expect("an idle connection is closed within the handshake deadline");
    assert!(matches!(closed, Ok(0) | Err(_)));
}

#[tokio::test]
async fn unix_socket_is_private_and_a_stale_one_is_replaced() {
    use std::os::unix::fs::PermissionsExt;
    let fixture = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let socket = fixture.path().join("authz.sock");
    // A stale socket file from a previous run.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let config = fixture.write_config(&fixture.static_config(ListenAddr::Unix(socket.clone())));
    let mut sidecar = Sidecar::spawn(&config, &[]);
    let mode = poll("the socket to be served", WAIT, || {
        sidecar.assert_running();
        let socket = socket.clone();
        async move {
            let health = uds_health(&socket).await?;
            health.then(|| std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777)
        }
    })
    .await;
    assert_eq!(mode, 0o660);

    // A regular file at the path is never deleted: start-up fails instead.
    let file = fixture.path().join("not-a-socket");
    std::fs::write(&file, "data").unwrap();
    let config = fixture.write_config(&fixture.static_config(ListenAddr::Unix(file.clone())));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_service-auth"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!status.status.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
}

/// SERVING over a Unix socket, via the `health` subcommand.
async fn uds_health(socket: &Path) -> Option<bool> {
    let addr = format!("unix:{}", socket.display());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_service-auth"))
            .args(["health", "--addr", &addr])
            .output()
    })
    .await
    .ok()?
    .ok()?;
    out.status.success().then_some(true)
}

/// Envoy + sidecar + echo for an Envoy config variant, and one allowed call.
async fn call_through_envoy(
    variant: &str,
    fixture: &Fixture,
    ca: &Ca,
    sidecar_socket: Option<&Path>,
    sidecar_addr: SocketAddr,
) {
    let echo = Echo::start().await;
    common::write_envoy_certs(ca, fixture.path());
    let certs = fixture.path().join("certs");
    let hop_client = ca.client(&ClientSpec::empty().with_cn("envoy"));
    write_pair(&certs, "envoy-client", &hop_client);
    let ports = EnvoyPorts {
        sidecar: sidecar_addr,
        app: echo.addr,
    };
    let envoy = Envoy::start(
        fixture.path(),
        &envoy_config_variant(variant, &ports, sidecar_socket),
    )
    .await;
    let caller = ca.client(&ClientSpec::uri(A_URI));
    let http = common::https_client(ca, &caller);
    let url = format!("{}/orders", envoy.base_url());
    let resp = http
        .get(&url)
        .header("x-api-key", A_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{variant}");
    let headers: serde_json::Value = resp.json().await.unwrap();
    let jwt = headers["x-service-jwt"][0]
        .as_str()
        .expect("token upstream");
    let claims = service_auth::token::verify(&fixture.load().token, jwt, unix_now())
        .unwrap()
        .claims;
    assert_eq!(claims.sub, "a");
    let resp = http
        .get(&url)
        .header("x-api-key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(echo.hits(), 1);
}

#[tokio::test]
async fn mtls_hop_through_envoy() {
    let s = tls_setup();
    let sidecar = s.in_process().await;
    call_through_envoy(
        "envoy/envoy-mtls-hop.yaml",
        &s.fixture,
        &s.ca,
        None,
        sidecar.addr,
    )
    .await;
}

#[tokio::test]
async fn unix_socket_hop_through_envoy() {
    let fixture = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let socket = fixture.path().join("authz.sock");
    // In this process: the hop is under test, not the binary.
    let config = fixture.static_config(ListenAddr::Unix(socket.clone()));
    let mut sidecar = service_auth::Sidecar::start(&config)
        .await
        .expect("start the sidecar");
    sidecar.ready().await.expect("load the registry");
    let ca = Ca::new("uds mesh CA");
    call_through_envoy(
        "envoy/envoy-uds-hop.yaml",
        &fixture,
        &ca,
        Some(&socket),
        "127.0.0.1:1".parse().unwrap(),
    )
    .await;
}
