//! Telemetry and operations against the real binary: OTLP metrics received
//! by a real receiver (gRPC and HTTP), bounded attributes, a dead collector,
//! health transitions, graceful SIGTERM, and logs free of credentials.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::otlp::Receiver;
use common::procs::{Sidecar, poll, refusing_addr};
use common::{Fixture, Req, Svc, tcp0};
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use opentelemetry_proto::tonic::metrics::v1::metric;
use service_auth::config::{Otlp, OtlpProtocol, StaticConfig};
use tonic::transport::Channel;

const A_URI: &str = "spiffe://mesh.test/ns/default/sa/a";
const B_URI: &str = "spiffe://mesh.test/ns/default/sa/b";
const C_URI: &str = "spiffe://mesh.test/ns/default/sa/c";
const A_KEY: &str = "key-of-service-a-0123456789";
const B_KEY: &str = "key-of-service-b-0123456789";
const C_KEY: &str = "key-of-service-c-0123456789";
const A_KEY_EXPIRES: &str = "2099-01-01T00:00:00Z";
const A_KEY_EXPIRES_UNIX: i64 = 4_070_908_800;
const AUTHZ_SERVICE: &str = "envoy.service.auth.v3.Authorization";
const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;
/// Long enough for several 200 ms export intervals on a loaded machine.
const METRICS_WAIT: Duration = Duration::from_secs(30);
/// How long a shutdown may take before it counts as hung: generous, it
/// only bounds a hang (the flush timeout is a few seconds).
const HANG: Duration = Duration::from_secs(60);

fn services() -> Vec<Svc> {
    let mut a = Svc::new("a", A_URI, A_KEY);
    a.keys[0].2 = Some(A_KEY_EXPIRES.into());
    vec![a, Svc::new("b", B_URI, B_KEY)]
}

/// A fixture for [`services`] that identifies callers by Envoy's
/// `source.principal`: these tests are about what the sidecar reports, not
/// about how it establishes identity.
fn fixture() -> Fixture {
    let fixture = Fixture::new(&services());
    write_registry(&fixture, &services());
    fixture
}

/// Writes the registry for `services` with
/// `identity.require_certificate: false` (principal-only callers).
fn write_registry(fixture: &Fixture, services: &[Svc]) {
    let mut file = fixture.registry_file(services);
    file.identity.require_certificate = false;
    fixture.write(&file);
}

/// The fixture's config, exporting to `endpoint` every 200 ms.
fn otlp_config(fixture: &Fixture, endpoint: &str, protocol: OtlpProtocol) -> StaticConfig {
    let mut config = fixture.static_config(tcp0());
    config.telemetry.service_name = Some("sa-test".into());
    config.telemetry.otlp = Some(Otlp {
        endpoint: Some(endpoint.into()),
        protocol: Some(protocol),
        interval: Some(Duration::from_millis(200)),
    });
    config
}

/// The fixture's config without telemetry.
fn plain_config(fixture: &Fixture) -> StaticConfig {
    fixture.static_config(tcp0())
}

/// The binary serving `config` (written into the fixture), once SERVING.
async fn start(fixture: &Fixture, config: &StaticConfig) -> Sidecar {
    Sidecar::start(&fixture.write_config(config)).await
}

fn by_principal(principal: &str) -> Req {
    Req::principal(principal)
}

async fn check(client: &mut AuthorizationClient<Channel>, req: CheckRequest) -> CheckResponse {
    client.check(req).await.expect("gRPC call").into_inner()
}

fn code(resp: &CheckResponse) -> i32 {
    resp.status.as_ref().map_or(-1, |s| s.code)
}

/// The token an allowed issue-mode Check injected.
fn token_of(resp: &CheckResponse) -> String {
    let Some(HttpResponse::OkResponse(ok)) = &resp.http_response else {
        panic!("expected an allow: {resp:?}")
    };
    ok.headers[0].header.as_ref().unwrap().value.clone()
}

/// The same token with a different, still decodable signature.
fn forged(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let first = if signature.starts_with('A') { 'B' } else { 'A' };
    format!("{signed}.{first}{}", &signature[1..])
}

/// Polls the receiver until `name` has a series with `attrs` whose latest
/// value is `expected`.
async fn expect_value(rx: &Receiver, name: &str, attrs: &[(&str, &str)], expected: f64) {
    let what = format!("{name}{attrs:?} = {expected}");
    poll(&what, METRICS_WAIT, || {
        let v = rx.value(name, attrs);
        async move { (v == Some(expected)).then_some(()) }
    })
    .await;
}

/// Drives allowed and denied Checks of every kind and a reload, and asserts
/// each instrument arrives at the receiver with its attributes and counts.
async fn metrics_arrive(rx: &Receiver, protocol: OtlpProtocol) {
    let fixture = fixture();
    let sidecar = start(&fixture, &otlp_config(&fixture, &rx.url(), protocol)).await;
    let mut client = sidecar.client().await;

    let mut token = String::new();
    for _ in 0..3 {
        let resp = check(&mut client, by_principal(A_URI).key(A_KEY).build()).await;
        assert_eq!(code(&resp), 0, "{resp:?}");
        token = token_of(&resp);
    }
    for _ in 0..2 {
        let resp = check(&mut client, by_principal(A_URI).key("wrong-key").build()).await;
        assert_eq!(code(&resp), 16);
    }
    let mismatch = check(&mut client, by_principal(A_URI).key(B_KEY).build()).await;
    assert_eq!(code(&mismatch), 16);
    let unknown = check(
        &mut client,
        by_principal("spiffe://elsewhere/x").key(A_KEY).build(),
    )
    .await;
    assert_eq!(code(&unknown), 16);
    let verify = |t: &str| {
        Req::default()
            .ext("mode", "verify")
            .header("x-service-jwt", t)
            .build()
    };
    assert_eq!(code(&check(&mut client, verify(&token)).await), 0);
    assert_eq!(code(&check(&mut client, verify(&forged(&token))).await), 16);

    let checks = "service_auth.checks";
    let allow_a = [("result", "allow"), ("reason", "none"), ("service", "a")];
    expect_value(
        rx,
        checks,
        &[&allow_a[..], &[("mode", "issue")]].concat(),
        3.0,
    )
    .await;
    expect_value(
        rx,
        checks,
        &[&allow_a[..], &[("mode", "verify")]].concat(),
        1.0,
    )
    .await;
    let deny = |reason, service, mode| {
        [
            ("result", "deny"),
            ("reason", reason),
            ("service", service),
            ("mode", mode),
        ]
    };
    expect_value(rx, checks, &deny("invalid_api_key", "a", "issue"), 2.0).await;
    expect_value(rx, checks, &deny("identity_mismatch", "a", "issue"), 1.0).await;
    expect_value(
        rx,
        checks,
        &deny("unknown_principal", "unknown", "issue"),
        1.0,
    )
    .await;
    expect_value(rx, checks, &deny("invalid_token", "unknown", "verify"), 1.0).await;

    let duration = "service_auth.check.duration";
    expect_value(rx, duration, &[("result", "allow")], 4.0).await;
    expect_value(rx, duration, &[("result", "deny")], 5.0).await;
    expect_value(
        rx,
        "service_auth.tokens.issued",
        &[("service", "a"), ("kid", "test-1")],
        3.0,
    )
    .await;
    let verified = "service_auth.tokens.verified";
    expect_value(
        rx,
        verified,
        &[("result", "success"), ("reason", "none")],
        1.0,
    )
    .await;
    expect_value(
        rx,
        verified,
        &[("result", "failure"), ("reason", "bad_signature")],
        1.0,
    )
    .await;
    let alerts = "service_auth.security.alerts";
    expect_value(rx, alerts, &[("kind", "identity_mismatch")], 1.0).await;
    expect_value(rx, alerts, &[("kind", "invalid_token_signature")], 1.0).await;
    expect_value(rx, "service_auth.registry.services", &[], 2.0).await;

    let expiry = poll("the api_key expiry gauge", METRICS_WAIT, || {
        let v = rx.value(
            "service_auth.credentials.expiry",
            &[("kind", "api_key"), ("service", "a"), ("id", "k1")],
        );
        async move { v }
    })
    .await;
    let expected = (A_KEY_EXPIRES_UNIX - common::unix_now()) as f64;
    assert!((expiry - expected).abs() < 120.0, "{expiry} vs {expected}");
    let expiring = rx.latest("service_auth.credentials.expiry");
    assert_eq!(expiring.len(), 1, "keys without not_after are not reported");

    // A good reload, then a broken one that is refused.
    let mut more = services();
    more.push(Svc::new("c", C_URI, C_KEY));
    write_registry(&fixture, &more);
    expect_value(rx, "service_auth.registry.services", &[], 3.0).await;
    expect_value(
        rx,
        "service_auth.registry.reloads",
        &[("result", "success")],
        1.0,
    )
    .await;
    fixture.write_text("token: [not a mapping\n");
    expect_value(
        rx,
        "service_auth.registry.reloads",
        &[("result", "failure")],
        1.0,
    )
    .await;
    expect_value(rx, "service_auth.registry.services", &[], 3.0).await;

    // Kinds and units as the metrics table in docs/operations.md has them.
    let kind = |name: &str| rx.metric(name).and_then(|m| m.data).unwrap();
    for name in [
        checks,
        "service_auth.tokens.issued",
        verified,
        alerts,
        "service_auth.registry.reloads",
    ] {
        let metric::Data::Sum(sum) = kind(name) else {
            panic!("{name} should be a counter")
        };
        assert!(sum.is_monotonic, "{name}");
    }
    assert!(matches!(kind(duration), metric::Data::Histogram(_)));
    assert!(matches!(
        kind("service_auth.registry.services"),
        metric::Data::Gauge(_)
    ));
    assert!(matches!(
        kind("service_auth.credentials.expiry"),
        metric::Data::Gauge(_)
    ));
    assert_eq!(rx.metric(duration).unwrap().unit, "s");
    assert_eq!(
        rx.metric("service_auth.credentials.expiry").unwrap().unit,
        "s"
    );
    assert_eq!(rx.resource_attr("service.name").as_deref(), Some("sa-test"));

    let status = sidecar.terminate();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_reach_an_otlp_grpc_receiver() {
    let rx = Receiver::grpc().await;
    metrics_arrive(&rx, OtlpProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_reach_an_otlp_http_receiver() {
    let rx = Receiver::http().await;
    metrics_arrive(&rx, OtlpProtocol::HttpProtobuf).await;
}

/// Without a `telemetry.otlp` block, the standard variables alone turn
/// export on (endpoint, protocol, interval and service name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_environment_variables_alone_enable_export() {
    let rx = Receiver::http().await;
    let fixture = fixture();
    let config = fixture.write_config(&plain_config(&fixture));
    let url = rx.url();
    let mut sidecar = Sidecar::spawn(
        &config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
            ("OTEL_SERVICE_NAME", "sa-from-env"),
        ],
    );
    sidecar.wait_serving().await;
    let mut client = sidecar.client().await;
    check(&mut client, by_principal(A_URI).key(A_KEY).build()).await;
    expect_value(&rx, "service_auth.checks", &[("result", "allow")], 1.0).await;
    assert_eq!(
        rx.resource_attr("service.name").as_deref(),
        Some("sa-from-env")
    );
}

/// A mix of allowed, denied and unknown callers, `n` of them, `tasks` at a time.
async fn check_burst(sidecar: &Sidecar, n: usize, tasks: usize) {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let mut client = sidecar.client().await;
        handles.push(tokio::spawn(async move {
            for i in (t..n).step_by(tasks) {
                let req = match i % 3 {
                    0 => by_principal(A_URI).key(A_KEY),
                    1 => by_principal(B_URI).key("wrong-key"),
                    _ => by_principal(&format!("spiffe://random/{}", rand::random::<u64>()))
                        .key(A_KEY),
                };
                let resp = check(&mut client, req.build()).await;
                let want = if i % 3 == 0 { 0 } else { 16 };
                assert_eq!(code(&resp), want, "{resp:?}");
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}

/// With the collector's port closed, the sidecar stays up and answers
/// every Check, then SIGTERM exits 0. How much the dead collector costs
/// (latency, RSS) is measured by `benches/collector.rs`, not asserted here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_leaves_checks_answered_and_sigterm_exits_zero() {
    let fixture = fixture();
    let (_closed_port, closed) = refusing_addr();
    let closed = format!("http://{closed}");
    let mut sidecar = start(
        &fixture,
        &otlp_config(&fixture, &closed, OtlpProtocol::Grpc),
    )
    .await;
    // Each Check is answered with its expected code (asserted inside).
    check_burst(&sidecar, 3_000, 4).await;
    sidecar.assert_running();
    assert_eq!(
        sidecar.health(AUTHZ_SERVICE).await,
        Some(SERVING),
        "still serving with a dead collector"
    );

    sidecar.signal_term();
    let status = sidecar.wait_exit(HANG).await;
    assert!(status.success(), "{status}");
}

/// A collector that accepts connections and never answers: exports hang,
/// Checks do not, and SIGTERM still ends the process with status 0 (the
/// flush gives up). The wait only bounds a hang; the shutdown time is
/// measured by `benches/collector.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_collector_cannot_hold_shutdown() {
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", blackhole.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = blackhole.accept().await {
            held.push(stream);
        }
    });
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let fixture = fixture();
        let sidecar = start(&fixture, &otlp_config(&fixture, &endpoint, protocol)).await;
        check_burst(&sidecar, 600, 2).await;
        sidecar.signal_term();
        let status = sidecar.wait_exit(HANG).await;
        assert!(status.success(), "{protocol:?}: {status}");
    }
    holder.abort();
}

/// Random unknown principals all become `service="unknown"`: no request
/// value reaches an attribute, so the series count stays fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_unknown_principals_create_no_attribute_values() {
    let rx = Receiver::grpc().await;
    let fixture = fixture();
    let sidecar = start(
        &fixture,
        &otlp_config(&fixture, &rx.url(), OtlpProtocol::Grpc),
    )
    .await;
    let mut client = sidecar.client().await;
    let n = 300;
    for i in 0..n {
        let random: u64 = rand::random();
        let principal = if i % 2 == 0 {
            format!("spiffe://attacker/{random}")
        } else {
            format!("attacker-{random}.example")
        };
        let resp = check(&mut client, by_principal(&principal).key(A_KEY).build()).await;
        assert_eq!(code(&resp), 16);
    }
    expect_value(
        &rx,
        "service_auth.checks",
        &[("reason", "unknown_principal"), ("service", "unknown")],
        n as f64,
    )
    .await;
    assert_eq!(
        rx.attribute_values("service_auth.checks", "service"),
        ["unknown"]
    );
    for name in ["service_auth.checks", "service_auth.check.duration"] {
        assert_eq!(rx.latest(name).len(), 1, "{name}: one series");
        for point in rx.latest(name) {
            assert!(
                point.attrs.values().all(|v| !v.contains("attacker")),
                "{point:?}"
            );
        }
    }
}

/// NOT_SERVING while the registry loads (its secret file is a FIFO nobody
/// has written yet, so the load blocks), Checks meanwhile fail closed with
/// 503, SERVING once it is installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_until_the_registry_is_loaded() {
    let fixture = fixture();
    let secret = fixture.path().join("secrets/jwt.key");
    std::fs::remove_file(&secret).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&secret)
        .status()
        .unwrap();
    assert!(made.success());
    let config = fixture.write_config(&plain_config(&fixture));
    let mut sidecar = Sidecar::spawn(&config, &[]);
    // The listener is up before the registry loads: health can answer.
    sidecar.listening().await;

    for service in ["", AUTHZ_SERVICE] {
        let status = poll("a health answer", Duration::from_secs(30), || {
            sidecar.health(service)
        })
        .await;
        assert_eq!(status, NOT_SERVING, "{service:?}");
    }
    let mut client = sidecar.client().await;
    let early = check(&mut client, by_principal(A_URI).key(A_KEY).build()).await;
    assert_eq!(
        code(&early),
        14,
        "fail closed before the registry: {early:?}"
    );

    let writer = tokio::task::spawn_blocking(move || std::fs::write(secret, common::SECRET));
    sidecar.wait_serving().await;
    writer.await.unwrap().unwrap();
    assert_eq!(sidecar.health(AUTHZ_SERVICE).await, Some(SERVING));
    let resp = check(&mut client, by_principal(A_URI).key(A_KEY).build()).await;
    assert_eq!(code(&resp), 0, "{resp:?}");
}

type Chunk = Result<hyper::body::Frame<hyper::body::Bytes>, std::convert::Infallible>;
type Body = http_body_util::StreamBody<tokio_stream::wrappers::ReceiverStream<Chunk>>;
/// Sends the rest of a request body; the task yields the decoded response.
type InFlight = (
    tokio::sync::mpsc::Sender<Chunk>,
    tokio::task::JoinHandle<Result<CheckResponse, String>>,
);

/// One gRPC message frame: uncompressed flag, big-endian length, message.
fn grpc_frame(req: &CheckRequest) -> Vec<u8> {
    use prost::Message;
    let msg = req.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    frame
}

/// Starts a Check over raw HTTP/2 and sends only `first` of its body; the
/// returned sender delivers the rest.
fn open_check(
    h2: &mut hyper::client::conn::http2::SendRequest<Body>,
    addr: std::net::SocketAddr,
    first: Vec<u8>,
) -> InFlight {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = hyper::Request::post(format!(
        "http://{addr}/envoy.service.auth.v3.Authorization/Check"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(body)
    .unwrap();
    let response = h2.send_request(req);
    let first = hyper::body::Frame::data(hyper::body::Bytes::from(first));
    tx.try_send(Ok(first)).unwrap();
    let task = tokio::spawn(async move {
        use http_body_util::BodyExt;
        use prost::Message;
        let resp = response.await.map_err(|e| e.to_string())?;
        let collected = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        let grpc_status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        if grpc_status.as_deref() != Some("0") {
            return Err(format!("grpc-status {grpc_status:?}"));
        }
        let bytes = collected.to_bytes();
        CheckResponse::decode(bytes.get(5..).unwrap_or_default()).map_err(|e| e.to_string())
    });
    (tx, task)
}

/// SIGTERM while Checks are in flight (their bodies half sent): every one
/// of them still gets its CheckResponse, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_completes_in_flight_checks_and_exits_zero() {
    let fixture = fixture();
    let sidecar = start(&fixture, &plain_config(&fixture)).await;
    let stream = tokio::net::TcpStream::connect(sidecar.addr())
        .await
        .unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    h2.ready().await.unwrap();

    let frame = grpc_frame(&by_principal(A_URI).key(A_KEY).build());
    let half = frame.len() / 2;
    let mut in_flight = Vec::new();
    for _ in 0..20 {
        in_flight.push(open_check(&mut h2, sidecar.addr(), frame[..half].to_vec()));
    }
    // A complete Check on the same connection: once it is answered, the
    // server has read every earlier stream's headers, so those are in flight.
    let (done, marker) = open_check(&mut h2, sidecar.addr(), frame.clone());
    drop(done);
    assert_eq!(code(&marker.await.unwrap().unwrap()), 0);

    sidecar.signal_term();
    poll("the shutdown log line", Duration::from_secs(10), || {
        let log = sidecar.log_text();
        async move { log.contains(r#""event":"shutdown""#).then_some(()) }
    })
    .await;
    let rest = hyper::body::Bytes::copy_from_slice(&frame[half..]);
    for (tx, _) in &in_flight {
        tx.send(Ok(hyper::body::Frame::data(rest.clone())))
            .await
            .unwrap();
    }
    let mut answered = 0;
    for (tx, task) in in_flight {
        drop(tx);
        let resp = task.await.unwrap().expect("an in-flight Check was dropped");
        assert_eq!(code(&resp), 0, "{resp:?}");
        answered += 1;
    }
    assert_eq!(answered, 20);
    let log = sidecar.log.clone();
    let status = sidecar.wait_exit(HANG).await;
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains(r#""event":"stopped""#), "{log}");
}

/// Keys, secrets and tokens never reach the log, while each denial and
/// reload gets its one line with the fields an operator needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_denials_and_reloads_but_no_credentials() {
    let fixture = fixture();
    let sidecar = start(&fixture, &plain_config(&fixture)).await;
    let mut client = sidecar.client().await;

    let mut secrets = vec![
        A_KEY.to_owned(),
        B_KEY.to_owned(),
        common::SECRET.to_owned(),
    ];
    let allowed = check(&mut client, by_principal(A_URI).key(A_KEY).build()).await;
    let token = token_of(&allowed);
    secrets.push(token.clone());
    secrets.push(forged(&token));
    let wrong_key = "a-wrong-key-that-must-not-be-logged";
    secrets.push(wrong_key.into());

    let mut with_peer = by_principal(A_URI).key(wrong_key).build();
    {
        use envoy_types::pb::envoy::config::core::v3::{
            Address, SocketAddress, address, socket_address,
        };
        let attrs = with_peer.attributes.as_mut().unwrap();
        attrs.source.as_mut().unwrap().address = Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "10.1.2.3".into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(44321)),
                ..Default::default()
            })),
        });
        attrs.request.as_mut().unwrap().http.as_mut().unwrap().id = "req-denied-1".into();
    }
    let denials = [
        with_peer,
        by_principal(A_URI).key(B_KEY).build(),
        by_principal(B_URI).build(),
        Req::default()
            .ext("mode", "verify")
            .header("x-service-jwt", &forged(&token))
            .build(),
        Req::default()
            .ext("mode", "verify")
            .header("authorization", &format!("Bearer {token}x"))
            .build(),
    ];
    for req in denials.iter().cloned() {
        assert_ne!(code(&check(&mut client, req).await), 0);
    }
    assert_eq!(
        code(
            &check(
                &mut client,
                Req::default()
                    .ext("mode", "verify")
                    .header("x-service-jwt", &token)
                    .build()
            )
            .await
        ),
        0
    );
    let mut more = services();
    more.push(Svc::new("c", C_URI, C_KEY));
    write_registry(&fixture, &more);
    poll("the reload log line", Duration::from_secs(10), || {
        let log = sidecar.log_text();
        async move { log.contains(r#""event":"registry_reload""#).then_some(()) }
    })
    .await;

    let log = sidecar.log_text();
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "log leaks {secret:?}:\n{log}"
        );
    }
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let denied: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["event"] == "check_denied")
        .collect();
    assert_eq!(denied.len(), denials.len(), "one line per denial:\n{log}");
    let first: BTreeMap<&str, String> = ["reason", "service", "request_id", "peer_address"]
        .iter()
        .map(|k| (*k, denied[0][*k].as_str().unwrap_or_default().to_owned()))
        .collect();
    assert_eq!(first["reason"], "invalid_api_key");
    assert_eq!(first["service"], "a");
    assert_eq!(first["request_id"], "req-denied-1");
    assert_eq!(first["peer_address"], "10.1.2.3");
    assert_eq!(denied[0]["peer_port"], 44321);
}
