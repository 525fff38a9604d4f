//! The listener at the wire, against the real binary: connections that stall
//! in their handshake (one byte, a half ClientHello, TLS then nothing) are
//! closed by the handshake deadline on TCP, TLS and Unix sockets; a flood of
//! silent sockets only evicts itself from the pending-handshake cap; and
//! `listen.tls.allowed_sans` admits only the listed hop clients.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::procs::{Sidecar, poll};
use common::{Ca, ClientSpec, Fixture, Issued, ListenAddr, Req, Svc, tcp0};
use envoy_types::ext_authz::v3::pb::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use service_auth::config::{Limits, ListenTls, StaticConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const A_URI: &str = "spiffe://mesh.test/a";
const A_KEY: &str = "key-of-a-0123456789";
const ENVOY_SAN: &str = "spiffe://mesh.test/envoy";
/// How long a test waits for something that should happen (far above any
/// deadline configured here): a bound on a hang, not a timing assertion.
const WAIT: Duration = Duration::from_secs(20);

/// Reads until the peer closes. True for EOF or a reset/abort (what a closed
/// connection looks like); false if it stays open for `WAIT`. Data (such as
/// an HTTP/2 server's SETTINGS) is read past.
async fn closed_by_peer<S: AsyncRead + Unpin>(mut stream: S) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let read_to_close = async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => {
                    return matches!(
                        e.kind(),
                        ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe
                    );
                }
            }
        }
    };
    tokio::time::timeout(WAIT, read_to_close)
        .await
        .unwrap_or(false)
}

/// A Check for the registered service `a`, as Envoy would forward it.
fn check_request(ca: &Ca) -> Req {
    Req::cert(ca.client(&ClientSpec::uri(A_URI)).forwarded()).key(A_KEY)
}

/// Allowed, as seen from a Check over `channel` under a `deadline` (sent as
/// the gRPC deadline and enforced here too).
async fn allowed_within(channel: Channel, ca: &Ca, deadline: Duration) -> Result<bool, String> {
    let mut client = AuthorizationClient::new(channel);
    let mut request = tonic::Request::new(check_request(ca).build());
    request.set_timeout(deadline);
    let resp = tokio::time::timeout(deadline, client.check(request))
        .await
        .map_err(|_| format!("no answer within {deadline:?}"))?
        .map_err(|status| status.to_string())?
        .into_inner();
    Ok(matches!(
        resp.http_response,
        Some(HttpResponse::OkResponse(_))
    ))
}

/// A sidecar serving `listen.tls` with a CA of its own for the hop.
struct TlsSidecar {
    _fixture: Fixture,
    ca: Ca,
    sidecar: Sidecar,
    addr: SocketAddr,
}

impl TlsSidecar {
    async fn start(allowed_sans: Option<&[&str]>, limits: Limits) -> TlsSidecar {
        let fixture = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
        let ca = Ca::new("hop CA");
        let tls_dir = fixture.path().join("tls");
        std::fs::create_dir(&tls_dir).unwrap();
        let served = ca.server(&["service-auth"]);
        std::fs::write(tls_dir.join("sidecar.crt"), &served.cert_pem).unwrap();
        std::fs::write(tls_dir.join("sidecar.key"), &served.key_pem).unwrap();
        std::fs::write(tls_dir.join("ca.crt"), ca.cert_pem()).unwrap();
        let mut config = fixture.static_config(tcp0());
        config.listen.tls = Some(ListenTls {
            cert: "tls/sidecar.crt".into(),
            key: "tls/sidecar.key".into(),
            client_ca: "tls/ca.crt".into(),
            allowed_sans: allowed_sans.map(|sans| sans.iter().map(|s| s.to_string()).collect()),
        });
        config.limits = limits;
        let mut sidecar = Sidecar::spawn(&fixture.write_config(&config), &[]);
        let ListenAddr::Tcp(addr) = sidecar.listening().await else {
            panic!("a TLS listener is TCP");
        };
        let envoy = ca.client(&ClientSpec::uri(ENVOY_SAN));
        poll("the TLS listener to serve Checks", WAIT, || {
            sidecar.assert_running();
            let channel = tls_channel(addr, &ca, &envoy);
            let ca = &ca;
            async move { allowed_within(channel, ca, WAIT).await.ok()?.then_some(()) }
        })
        .await;
        TlsSidecar {
            _fixture: fixture,
            ca,
            sidecar,
            addr,
        }
    }

    fn channel(&self, identity: &Issued) -> Channel {
        tls_channel(self.addr, &self.ca, identity)
    }
}

/// Default limits but these two.
fn limits(max_connections: usize, handshake_timeout: Duration) -> Limits {
    Limits {
        max_connections,
        handshake_timeout,
        ..Limits::default()
    }
}

/// A plaintext sidecar on loopback, running the binary.
async fn plain_sidecar(fixture: &Fixture, limits: Limits) -> Sidecar {
    let config = StaticConfig {
        limits,
        ..fixture.static_config(tcp0())
    };
    Sidecar::start(&fixture.write_config(&config)).await
}

/// An mTLS channel presenting `identity`, connected on first use (so a
/// call's deadline also covers the connection's handshake).
fn tls_channel(addr: SocketAddr, ca: &Ca, identity: &Issued) -> Channel {
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca.cert_pem()))
                .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem))
                .domain_name("service-auth"),
        )
        .unwrap()
        .connect_lazy()
}

/// A TLS 1.3 client of `addr` that trusts `ca` and presents `identity`.
fn tls_connector(ca: &Ca, identity: &Issued) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from_pem_slice(identity.cert_pem.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from("service-auth").unwrap()
}

#[tokio::test]
async fn sockets_that_sent_one_byte_are_closed_and_free_their_slots() {
    let fixture = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let sidecar = plain_sidecar(&fixture, limits(8, Duration::from_secs(1))).await;
    let addr = sidecar.addr();
    // As many as there are slots, each stuck one byte into the preface.
    let mut stuck = Vec::new();
    for _ in 0..8 {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket.write_all(b"P").await.unwrap();
        stuck.push(socket);
    }
    for socket in stuck {
        assert!(
            closed_by_peer(socket).await,
            "a socket stuck in the HTTP/2 preface is closed by the handshake deadline"
        );
    }
    let mut client = sidecar.client().await;
    let resp = tokio::time::timeout(WAIT, client.check(check_request(&Ca::new("mesh")).build()))
        .await
        .expect("a real client is served once the stuck sockets are gone")
        .unwrap()
        .into_inner();
    assert!(matches!(
        resp.http_response,
        Some(HttpResponse::OkResponse(_))
    ));
}

#[tokio::test]
async fn beyond_max_connections_a_client_waits_until_the_deadline_then_is_closed() {
    let fixture = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let sidecar = plain_sidecar(&fixture, limits(1, Duration::from_secs(1))).await;
    let addr = sidecar.addr();
    let ca = Ca::new("mesh");
    let plain = || Channel::from_shared(format!("http://{addr}")).unwrap();
    // The one slot, held by a connection that has been served.
    let holder = poll("a connection to take the only slot", WAIT, || {
        let channel = plain().connect_lazy();
        let ca = &ca;
        async move {
            let served = allowed_within(channel.clone(), ca, WAIT).await;
            (served == Ok(true)).then_some(channel)
        }
    })
    .await;
    // A second client finishes its handshake, waits for a slot, and is
    // closed at the deadline: an error, not a hang until its own deadline.
    let waited = allowed_within(plain().connect_lazy(), &ca, WAIT).await;
    assert!(waited.is_err(), "{waited:?}");
    assert!(!waited.unwrap_err().contains("no answer"));
    poll("the refusal to be logged", WAIT, || {
        let log = sidecar.log_text();
        async move {
            log.lines()
                .any(|l| l.contains("connection_refused") && l.contains("max_connections"))
                .then_some(())
        }
    })
    .await;
    // Once the slot is free, a new client is served.
    drop(holder);
    poll("a client to be served once the slot is free", WAIT, || {
        let channel = plain().connect_lazy();
        let ca = &ca;
        async move { (allowed_within(channel, ca, WAIT).await == Ok(true)).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn tls_connections_that_stall_before_or_after_the_tls_handshake_are_closed() {
    let s = TlsSidecar::start(None, limits(8, Duration::from_secs(1))).await;
    let envoy = s.ca.client(&ClientSpec::uri(ENVOY_SAN));
    // Eight finish TLS with a good certificate, then send nothing.
    let connector = tls_connector(&s.ca, &envoy);
    let mut after_tls = Vec::new();
    for _ in 0..8 {
        let tcp = TcpStream::connect(s.addr).await.unwrap();
        let tls = connector.connect(server_name(), tcp).await.unwrap();
        after_tls.push(tls);
    }
    // Eight more send the first bytes of a ClientHello.
    let mut in_tls = Vec::new();
    for _ in 0..8 {
        let mut tcp = TcpStream::connect(s.addr).await.unwrap();
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        in_tls.push(tcp);
    }
    for tls in after_tls {
        assert!(
            closed_by_peer(tls).await,
            "a TLS connection that never sends the HTTP/2 preface is closed"
        );
    }
    for tcp in in_tls {
        assert!(
            closed_by_peer(tcp).await,
            "a half-sent ClientHello is closed"
        );
    }
    assert!(
        allowed_within(s.channel(&envoy), &s.ca, WAIT)
            .await
            .unwrap()
    );
    // No allowed_sans here: the start-up warning says what that means.
    let log = s.sidecar.log_text();
    assert!(
        log.lines().any(|l| l.contains("\"WARN\"")
            && l.contains("listener_tls_without_allowed_sans")
            && l.contains("allowed_sans")),
        "{log}"
    );
}

#[tokio::test]
async fn a_flood_of_silent_sockets_does_not_starve_an_mtls_client() {
    // The default pending cap (64), and fewer slots than silent sockets: a
    // listener that gave slots before the handshake would be full at once.
    let s = TlsSidecar::start(None, limits(8, Duration::from_secs(60))).await;
    let addr = s.addr;
    // Silent sockets, a new one every 5 ms for as long as the test runs, all
    // kept open by this side (closing them would free their place).
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let flood = tokio::spawn({
        let opened = opened.clone();
        async move {
            let mut first_tx = Some(first_tx);
            let mut open = Vec::new();
            let mut pace = tokio::time::interval(Duration::from_millis(5));
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                pace.tick().await;
                let Ok(socket) = TcpStream::connect(addr).await else {
                    continue;
                };
                opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match first_tx.take() {
                    Some(tx) => {
                        let _ = tx.send(socket);
                    }
                    None => open.push(socket),
                }
            }
        }
    });
    let first = first_rx.await.unwrap();
    poll("twice the pending cap of silent sockets", WAIT, || {
        let n = opened.load(std::sync::atomic::Ordering::Relaxed);
        async move { (n >= 128).then_some(()) }
    })
    .await;
    // With the flood going on, fresh mTLS connections get through. Starved,
    // they would wait for the 60 s handshake deadline; WAIT is well below it
    // (and only bounds that, it is no latency goal).
    let envoy = s.ca.client(&ClientSpec::uri(ENVOY_SAN));
    for _ in 0..3 {
        let answer = allowed_within(s.channel(&envoy), &s.ca, WAIT).await;
        assert_eq!(answer, Ok(true), "a Check during the flood");
    }
    // The cap was full and dropped its oldest: the first silent socket was
    // closed long before its 60 s deadline.
    assert!(
        closed_by_peer(first).await,
        "the oldest pending socket is dropped for newer ones"
    );
    flood.abort();
}

#[tokio::test]
async fn allowed_sans_admit_only_the_listed_hop_clients() {
    let s = TlsSidecar::start(Some(&[ENVOY_SAN]), Limits::default()).await;
    let envoy = s.ca.client(&ClientSpec::uri(ENVOY_SAN));
    // Right CA, other SANs: a workload's certificate, one with only a CN.
    let billing_san = "spiffe://mesh.test/billing";
    for workload in [
        s.ca.client(&ClientSpec::uri(billing_san)),
        s.ca.client(&ClientSpec::empty().with_cn("envoy")),
        s.ca.client(&ClientSpec::dns("envoy.mesh.test")),
    ] {
        let tcp = TcpStream::connect(s.addr).await.unwrap();
        let alert = match tls_connector(&s.ca, &workload)
            .connect(server_name(), tcp)
            .await
        {
            // TLS 1.3: the client's side of the handshake is done when the
            // server judges its certificate; the refusal is the next read.
            Ok(mut tls) => tls.read(&mut [0u8; 64]).await.unwrap_err(),
            Err(e) => e,
        };
        let cause = alert
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        assert_eq!(
            cause,
            Some(&rustls::Error::AlertReceived(
                rustls::AlertDescription::AccessDenied
            )),
            "{alert}"
        );
        // The same refusal through a gRPC client.
        assert!(
            allowed_within(s.channel(&workload), &s.ca, WAIT)
                .await
                .is_err()
        );
    }
    // The listed client is served by the same, live, sidecar.
    assert_eq!(
        allowed_within(s.channel(&envoy), &s.ca, WAIT).await,
        Ok(true)
    );
    let log = s.sidecar.log_text();
    assert!(
        log.lines().any(|l| l.contains("hop_client_refused")
            && l.contains("san_not_allowed")
            && l.contains(billing_san)),
        "{log}"
    );
    assert!(!log.contains("listener_tls_without_allowed_sans"), "{log}");
}

#[tokio::test]
async fn unix_socket_connections_have_the_same_deadline() {
    let fixture = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let socket = fixture.path().join("authz.sock");
    let config = StaticConfig {
        limits: limits(2, Duration::from_secs(1)),
        ..fixture.static_config(ListenAddr::Unix(socket.clone()))
    };
    let mut sidecar = Sidecar::spawn(&fixture.write_config(&config), &[]);
    poll("the socket to be served", WAIT, || {
        sidecar.assert_running();
        let socket = socket.clone();
        async move { uds_serving(&socket).await.then_some(()) }
    })
    .await;
    let mut stuck = Vec::new();
    for _ in 0..2 {
        let mut local = tokio::net::UnixStream::connect(&socket).await.unwrap();
        local.write_all(b"P").await.unwrap();
        stuck.push(local);
    }
    for local in stuck {
        assert!(
            closed_by_peer(local).await,
            "a stuck local client is closed by the handshake deadline"
        );
    }
    assert!(uds_serving(&socket).await);
}

/// SERVING over a Unix socket, via the `health` subcommand.
async fn uds_serving(socket: &Path) -> bool {
    let addr = format!("unix:{}", socket.display());
    let probe = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_service-auth"))
            .args(["health", "--addr", &addr])
            .output()
    });
    matches!(tokio::time::timeout(WAIT, probe).await, Ok(Ok(Ok(out))) if out.status.success())
}
