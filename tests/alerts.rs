//! What an operator is warned of, seen where the operator sees it: the
//! binary's log and a real OTLP receiver. The development signing secret
//! (the shipped config as shipped) and each certificate security alert.

mod common;

use std::time::Duration;

use common::otlp::Receiver;
use common::procs::{Sidecar, poll};
use common::{Ca, ClientSpec, Fixture, Req, Svc, tcp0};
use envoy_types::ext_authz::v3::pb::CheckResponse;
use service_auth::config::{Otlp, OtlpProtocol, StaticConfig};

const A_URI: &str = "spiffe://mesh.test/ns/default/sa/a";
const B_URI: &str = "spiffe://mesh.test/ns/default/sa/b";
const P_URI: &str = "spiffe://mesh.test/ns/default/sa/pinned";
const A_KEY: &str = "key-of-service-a-0123456789";
const B_KEY: &str = "key-of-service-b-0123456789";
const P_KEY: &str = "key-of-service-p-0123456789";
const REVOKED_SERIAL: &[u8] = &[0x4f, 0x1a, 0x77];
const ALERTS: &str = "service_auth.security.alerts";
const DEV_SECRET_GAUGE: &str = "service_auth.dev_secret.in_use";
/// Only bounds a hang: several 200 ms export intervals on a loaded machine.
const WAIT: Duration = Duration::from_secs(30);

/// `config` exporting to `rx` every 200 ms.
fn exporting(mut config: StaticConfig, rx: &Receiver) -> StaticConfig {
    config.telemetry.otlp = Some(Otlp {
        endpoint: Some(rx.url()),
        protocol: Some(OtlpProtocol::Grpc),
        interval: Some(Duration::from_millis(200)),
    });
    config
}

/// Polls until the latest value of `name`{`attrs`} is `expected`.
async fn expect_value(rx: &Receiver, name: &str, attrs: &[(&str, &str)], expected: f64) {
    let what = format!("{name}{attrs:?} = {expected}");
    poll(&what, WAIT, || {
        let v = rx.value(name, attrs);
        async move { (v == Some(expected)).then_some(()) }
    })
    .await;
}

fn events(log: &str, event: &str) -> usize {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .count()
}

fn code(resp: &CheckResponse) -> i32 {
    resp.status.as_ref().map_or(-1, |s| s.code)
}

/// `serve` on the shipped `config/service-auth.yaml` (only its listen
/// address changed to a kernel-chosen port, and OTLP export added) warns
/// about the development secret in its log and sets the gauge to 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_config_warns_of_the_development_secret_in_log_and_gauge() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/service-auth.yaml");
    // `load` resolves the registry path against the shipped file, so the
    // shipped registry and its secret are what is served.
    let mut config = StaticConfig::load(&shipped).expect("the shipped config loads");
    config.listen.grpc = tcp0();
    let rx = Receiver::grpc().await;
    let dir = Fixture::new(&[]);
    let sidecar = Sidecar::start(&dir.write_config(&exporting(config, &rx))).await;

    poll("the dev_signing_secret warning", WAIT, || {
        let n = events(&sidecar.log_text(), "dev_signing_secret");
        async move { (n > 0).then_some(()) }
    })
    .await;
    let log = sidecar.log_text();
    let line: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "dev_signing_secret")
        .unwrap();
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(events(&log, "dev_signing_secret"), 1, "{log}");
    expect_value(&rx, DEV_SECRET_GAUGE, &[], 1.0).await;

    let status = sidecar.terminate();
    assert!(status.success(), "{status}");
}

/// One Check per certificate alert: revoked, untrusted, pin mismatch and
/// ambiguous principal each reach the receiver as
/// `security.alerts{kind=...}` = 1, and nothing else raises an alert. The
/// same run, on a generated secret, reports no development secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_alerts_reach_an_otlp_receiver_by_kind() {
    let ca = Ca::new("alerts CA");
    let pinned = ca.client(&ClientSpec::uri(P_URI));
    let mut p = Svc::new("p", P_URI, P_KEY);
    p.pins = vec![pinned.sha256_hex()];
    let services = [Svc::new("a", A_URI, A_KEY), Svc::new("b", B_URI, B_KEY), p];
    let mut fixture = Fixture::new(&[]);
    fixture.revocation.serials = vec![hex(REVOKED_SERIAL)];
    fixture.write_registry(&services);

    let rx = Receiver::grpc().await;
    let config = exporting(fixture.static_config(tcp0()), &rx);
    let sidecar = Sidecar::start(&fixture.write_config(&config)).await;
    let mut client = sidecar.client().await;

    let revoked = ca.client(&ClientSpec::uri(A_URI).serial(REVOKED_SERIAL));
    let server_only =
        ca.client(&ClientSpec::uri(A_URI).eku(vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth]));
    let another_p = ca.client(&ClientSpec::uri(P_URI));
    let both = ca.client(&ClientSpec::uri(A_URI).with_uri(B_URI));
    let cases = [
        (
            Req::cert(revoked.forwarded()).key(A_KEY),
            "certificate_revoked",
        ),
        (
            Req::cert(server_only.forwarded()).key(A_KEY),
            "certificate_untrusted",
        ),
        (
            Req::cert(another_p.forwarded()).key(P_KEY),
            "certificate_pin_mismatch",
        ),
        (
            Req::cert(both.forwarded()).key(A_KEY),
            "ambiguous_principal",
        ),
    ];
    for (req, kind) in &cases {
        let resp = client
            .check(req.clone().build())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&resp), 16, "{kind}: {resp:?}");
    }
    // The pinned certificate itself is allowed, and raises nothing.
    let resp = client
        .check(Req::cert(pinned.forwarded()).key(P_KEY).build())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), 0, "{resp:?}");

    for (_, kind) in &cases {
        expect_value(&rx, ALERTS, &[("kind", kind)], 1.0).await;
    }
    let mut want: Vec<&str> = cases.iter().map(|(_, kind)| *kind).collect();
    want.sort();
    assert_eq!(rx.attribute_values(ALERTS, "kind"), want);
    expect_value(&rx, DEV_SECRET_GAUGE, &[], 0.0).await;
    assert_eq!(events(&sidecar.log_text(), "dev_signing_secret"), 0);

    let status = sidecar.terminate();
    assert!(status.success(), "{status}");
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
