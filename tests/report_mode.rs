//! Report mode (`enforcement: report`): a Check that would be denied is
//! answered OK without a token and counted as `would_deny`; allowed Checks,
//! internal errors and throttled callers are unchanged. Through the real
//! gRPC listener and the real OTLP pipeline.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::otlp::Receiver;
use common::procs::{Sidecar, poll};
use common::{Ca, ClientSpec, Fixture, InProcess, Req, SECRET, Svc, tcp0};
use envoy_types::ext_authz::v3::pb::{CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::google::protobuf::value::Kind;
use service_auth::check::Decision;
use service_auth::config::{Enforcement, Otlp, OtlpProtocol, StaticConfig};
use service_auth::enforcement::{self, Disposition};
use service_auth::request::Attributes;
use service_auth::testkit::grpc::{is_ok, metadata};
use service_auth::testkit::{claims_json, decide, forge_hs256, unix_now};
use tonic::transport::Channel;

const A_URI: &str = "spiffe://mesh.test/a";
const B_URI: &str = "spiffe://mesh.test/b";
const E_URI: &str = "spiffe://mesh.test/e";
const A_KEY: &str = "key-of-a-0123456789";
const B_KEY: &str = "key-of-b-0123456789";
const E_KEY: &str = "key-of-e-0123456789";
const METRICS_WAIT: Duration = Duration::from_secs(30);

fn services() -> Vec<Svc> {
    let mut b = Svc::new("b", B_URI, B_KEY);
    b.scopes = vec!["read".into()];
    let mut e = Svc::new("e", E_URI, E_KEY);
    e.keys[0].2 = Some("2020-01-01T00:00:00Z".into());
    vec![Svc::new("a", A_URI, A_KEY), b, e]
}

/// A fixture whose registry-wide enforcement is `enforcement`.
fn fixture(enforcement: Enforcement) -> Fixture {
    let f = Fixture::new(&services());
    let mut file = f.registry_file(&services());
    file.enforcement = enforcement;
    f.write(&file);
    f
}

fn otlp(f: &Fixture, rx: &Receiver) -> StaticConfig {
    let mut config = f.static_config(tcp0());
    config.telemetry.otlp = Some(Otlp {
        endpoint: Some(rx.url()),
        protocol: Some(OtlpProtocol::Grpc),
        interval: Some(Duration::from_millis(200)),
    });
    config
}

/// "allow", "deny:<reason>" or "would_deny:<reason>".
fn outcome(resp: &CheckResponse) -> String {
    match (
        is_ok(resp),
        metadata(resp, "would_deny"),
        metadata(resp, "reason"),
    ) {
        (true, Some(reason), _) => format!("would_deny:{reason}"),
        (true, None, _) => "allow".into(),
        (false, _, Some(reason)) => format!("deny:{reason}"),
        (false, _, None) => panic!("a denial without a reason: {resp:?}"),
    }
}

/// A recorded mix of good and bad requests, each with the outcome enforce
/// mode gives it. Certificates are made once so both replays send the very
/// same bytes.
fn recorded_mix() -> Vec<(Req, &'static str)> {
    let ca = Ca::new("report CA");
    let cert = |uri: &str| ca.client(&ClientSpec::uri(uri)).forwarded();
    let (a, b, e) = (cert(A_URI), cert(B_URI), cert(E_URI));
    let stranger = cert("spiffe://mesh.test/stranger");
    let old = ca
        .client(&ClientSpec::uri(A_URI).valid(
            time::OffsetDateTime::now_utc() - time::Duration::days(30),
            time::OffsetDateTime::now_utc() - time::Duration::days(1),
        ))
        .forwarded();
    let now = unix_now();
    let header = r#"{"alg":"HS256","typ":"JWT","kid":"test-1"}"#;
    let good_token = forge_hs256(header, &claims_json("a", now, |_| {}), SECRET.as_bytes());
    let expired_token = forge_hs256(
        header,
        &claims_json("a", now - 3600, |_| {}),
        SECRET.as_bytes(),
    );
    let forged_token = forge_hs256(
        header,
        &claims_json("a", now, |_| {}),
        b"not-the-secret-0123456789-0123456789",
    );
    let verify = |token: &str| {
        Req::default()
            .ext("mode", "verify")
            .header("x-service-jwt", token)
    };
    let mut mix: Vec<(Req, &str)> = Vec::new();
    let mut add = |n: usize, req: Req, want: &'static str| {
        for _ in 0..n {
            mix.push((req.clone(), want));
        }
    };
    add(3, Req::cert(a.clone()).key(A_KEY), "allow");
    add(
        1,
        Req::cert(b.clone())
            .key(B_KEY)
            .header("x-auth-scope", "read"),
        "allow",
    );
    add(2, verify(&good_token), "allow");
    add(2, Req::cert(stranger).key(A_KEY), "unknown_principal");
    add(2, Req::cert(a.clone()), "missing_api_key");
    add(
        3,
        Req::cert(a.clone()).key("wrong-key-0123456789"),
        "invalid_api_key",
    );
    add(1, Req::cert(a.clone()).key(B_KEY), "identity_mismatch");
    add(1, Req::cert(e).key(E_KEY), "expired_api_key");
    add(
        2,
        Req::cert(b).key(B_KEY).header("x-auth-scope", "write"),
        "scope_not_allowed",
    );
    add(
        1,
        Req::cert("not%20a%20certificate".into()).key(A_KEY),
        "malformed_certificate",
    );
    add(1, Req::default().key(A_KEY), "missing_identity");
    add(1, Req::cert(old).key(A_KEY), "certificate_expired");
    add(2, verify("garbage"), "invalid_token");
    add(1, verify(&forged_token), "invalid_token");
    add(1, verify(&expired_token), "expired_token");
    // A route with a mode this sidecar does not know: an internal error,
    // which denies in every mode.
    add(
        2,
        Req::cert(a).key(A_KEY).ext("mode", "bogus"),
        "internal_error",
    );
    // Interleave, as live traffic would be (7 is prime to the mix's size,
    // so this is a permutation).
    assert_eq!(mix.len(), 26);
    let interleaved: Vec<(Req, &str)> = (0..mix.len())
        .map(|i| mix[(i * 7) % mix.len()].clone())
        .collect();
    assert_eq!(
        tally(interleaved.iter().map(|(_, w)| *w)),
        tally(mix.iter().map(|(_, w)| *w))
    );
    assert_eq!(
        tally(mix.iter().map(|(_, w)| *w)).len(),
        13,
        "outcomes in the mix"
    );
    interleaved
}

async fn replay(
    client: &mut AuthorizationClient<Channel>,
    mix: &[(Req, &'static str)],
) -> Vec<CheckResponse> {
    let mut responses = Vec::with_capacity(mix.len());
    for (req, _) in mix {
        responses.push(client.check(req.build()).await.expect("Check").into_inner());
    }
    responses
}

fn tally<'a>(items: impl IntoIterator<Item = &'a str>) -> BTreeMap<&'a str, usize> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(item).or_default() += 1;
    }
    counts
}

/// The sum of `service_auth.checks` over every series with `result`, by
/// reason, once it has reached `total`.
async fn checks_by_reason(rx: &Receiver, result: &str, total: usize) -> BTreeMap<String, usize> {
    poll(
        &format!("{total} checks with result={result}"),
        METRICS_WAIT,
        || {
            let got = rx.value("service_auth.checks", &[("result", result)]);
            async move { (got == Some(total as f64)).then_some(()) }
        },
    )
    .await;
    let mut by_reason = BTreeMap::new();
    for point in rx.latest("service_auth.checks") {
        if point.attrs.get("result").map(String::as_str) == Some(result) {
            *by_reason.entry(point.attrs["reason"].clone()).or_default() += point.value as usize;
        }
    }
    by_reason
}

#[tokio::test]
async fn a_replayed_mix_blocks_nothing_in_report_mode_and_would_deny_what_enforce_denies() {
    let mix = recorded_mix();
    let enforce_rx = Receiver::grpc().await;
    let report_rx = Receiver::grpc().await;
    let enforce_fixture = fixture(Enforcement::Enforce);
    let report_fixture = fixture(Enforcement::Report);
    let enforcing = InProcess::start(&otlp(&enforce_fixture, &enforce_rx)).await;
    let reporting = InProcess::start(&otlp(&report_fixture, &report_rx)).await;

    let enforced = replay(&mut enforcing.client().await, &mix).await;
    let reported = replay(&mut reporting.client().await, &mix).await;

    // Enforce mode: every request gets the outcome it was recorded with.
    for ((req, want), resp) in mix.iter().zip(&enforced) {
        let expected = if *want == "allow" {
            "allow".to_string()
        } else {
            format!("deny:{want}")
        };
        assert_eq!(outcome(resp), expected, "{req:?}");
    }
    // Report mode: the same requests; nothing blocked but internal errors,
    // every other denial reported with its reason, allows unchanged.
    for (((req, want), resp), enforced) in mix.iter().zip(&reported).zip(&enforced) {
        let expected = match *want {
            "allow" => "allow".to_string(),
            "internal_error" => "deny:internal_error".to_string(),
            reason => format!("would_deny:{reason}"),
        };
        assert_eq!(outcome(resp), expected, "{req:?}");
        if *want == "allow" {
            let (Some(HttpResponse::OkResponse(e)), Some(HttpResponse::OkResponse(r))) =
                (&enforced.http_response, &resp.http_response)
            else {
                unreachable!("both are allows")
            };
            let names = |ok: &envoy_types::ext_authz::v3::pb::OkHttpResponse| {
                ok.headers
                    .iter()
                    .map(|h| h.header.as_ref().unwrap().key.clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(names(r), names(e), "an allow injects the same header");
            assert_eq!(r.headers_to_remove, e.headers_to_remove);
            assert!(metadata(resp, "jti").is_some());
        }
    }

    // Through the metrics pipeline: the would_deny counts of the report
    // replay, per reason, are the deny counts of the enforce replay.
    let expected = tally(mix.iter().map(|(_, w)| *w).filter(|w| *w != "allow"));
    let denied = expected.values().sum::<usize>();
    let internal = expected["internal_error"];
    let enforce_denies = checks_by_reason(&enforce_rx, "deny", denied).await;
    let report_would_deny = checks_by_reason(&report_rx, "would_deny", denied - internal).await;
    let report_denies = checks_by_reason(&report_rx, "deny", internal).await;
    let mut enforce_policy = enforce_denies.clone();
    assert_eq!(enforce_policy.remove("internal_error"), Some(internal));
    assert_eq!(report_would_deny, enforce_policy);
    assert_eq!(
        report_denies,
        BTreeMap::from([("internal_error".to_string(), internal)])
    );
    let allowed = mix.len() - denied;
    for rx in [&enforce_rx, &report_rx] {
        poll("the allows", METRICS_WAIT, || {
            let got = rx.value("service_auth.checks", &[("result", "allow")]);
            async move { (got == Some(allowed as f64)).then_some(()) }
        })
        .await;
    }
    // The durations are recorded under the same result.
    poll("would_deny durations", METRICS_WAIT, || {
        let got = report_rx.value("service_auth.check.duration", &[("result", "would_deny")]);
        async move { (got == Some((denied - internal) as f64)).then_some(()) }
    })
    .await;
    enforcing.sidecar.shutdown().await.unwrap();
    reporting.sidecar.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_would_deny_answer_adds_nothing_and_strips_what_could_pass_for_identity() {
    let f = fixture(Enforcement::Report);
    let sidecar = InProcess::for_fixture(&f).await;
    let mut client = sidecar.client().await;
    let ca = Ca::new("report CA");
    let req = Req::cert(ca.client(&ClientSpec::uri(A_URI)).forwarded())
        .key("wrong-key-0123456789")
        // A client-sent token and subject header must not reach the upstream.
        .header("x-service-jwt", "forged")
        .header("x-service-id", "a");
    let resp = client.check(req.build()).await.unwrap().into_inner();
    assert_eq!(resp.status.as_ref().map(|s| s.code), Some(0));
    let Some(HttpResponse::OkResponse(ok)) = &resp.http_response else {
        panic!("expected OK: {resp:?}")
    };
    assert!(ok.headers.is_empty(), "no token: {:?}", ok.headers);
    assert_eq!(
        ok.headers_to_remove,
        ["x-service-jwt", "x-service-id", "x-api-key"]
    );
    let meta = resp.dynamic_metadata.as_ref().unwrap();
    let Some(Kind::StructValue(inner)) = &meta.fields["service_auth"].kind else {
        panic!("{meta:?}")
    };
    assert_eq!(
        inner.fields.keys().collect::<Vec<_>>(),
        ["would_deny"],
        "only the reason: no service, kid or jti"
    );
    assert_eq!(metadata(&resp, "would_deny"), Some("invalid_api_key"));
    sidecar.sidecar.shutdown().await.unwrap();
}

/// The route's `context_extensions["enforcement"]` wins over the caller's
/// service, which wins over the registry; an unknown route value enforces.
#[test]
fn enforcement_comes_from_the_route_then_the_service_then_the_registry() {
    let ca = Ca::new("precedence CA");
    let a = ca.client(&ClientSpec::uri(A_URI)).forwarded();
    let b = ca.client(&ClientSpec::uri(B_URI)).forwarded();
    let stranger = ca
        .client(&ClientSpec::uri("spiffe://mesh.test/x"))
        .forwarded();
    let wrong = "wrong-key-0123456789";
    let cases: [(Enforcement, Req, Disposition); 9] = [
        // Registry enforce; b reports.
        (
            Enforcement::Enforce,
            Req::cert(a.clone()).key(wrong),
            Disposition::Enforced,
        ),
        (
            Enforcement::Enforce,
            Req::cert(b.clone()).key(wrong),
            Disposition::Reported,
        ),
        (
            Enforcement::Enforce,
            Req::cert(b.clone())
                .key(wrong)
                .ext("enforcement", "enforce"),
            Disposition::Enforced,
        ),
        (
            Enforcement::Enforce,
            Req::cert(a.clone()).key(wrong).ext("enforcement", "report"),
            Disposition::Reported,
        ),
        (
            Enforcement::Enforce,
            Req::cert(stranger.clone())
                .key(wrong)
                .ext("enforcement", "report"),
            Disposition::Reported,
        ),
        // A misspelt value fails closed.
        (
            Enforcement::Enforce,
            Req::cert(b.clone()).key(wrong).ext("enforcement", "Report"),
            Disposition::Enforced,
        ),
        // Registry report; a enforces; an unknown caller has no service.
        (
            Enforcement::Report,
            Req::cert(a.clone()).key(wrong),
            Disposition::Enforced,
        ),
        (
            Enforcement::Report,
            Req::cert(stranger).key(wrong),
            Disposition::Reported,
        ),
        // Internal errors are never only reported.
        (
            Enforcement::Report,
            Req::cert(b).key(B_KEY).ext("mode", "bogus"),
            Disposition::Enforced,
        ),
    ];
    for (registry_wide, req, want) in cases {
        let f = Fixture::new(&[]);
        let mut a_svc = Svc::new("a", A_URI, A_KEY);
        a_svc.enforcement = Some(Enforcement::Enforce);
        let mut b_svc = Svc::new("b", B_URI, B_KEY);
        b_svc.enforcement = Some(Enforcement::Report);
        let mut file = f.registry_file(&[a_svc, b_svc]);
        file.enforcement = registry_wide;
        f.write(&file);
        let registry = f.load();
        let request = req.build();
        let decision = decide(&request, &registry, unix_now());
        assert!(matches!(decision, Decision::Deny(_)), "{req:?}");
        let bytes = prost::Message::encode_to_vec(&request);
        let view = service_auth::wire::CheckView::decode(&bytes).unwrap();
        let attributes = Attributes::from_view(&view);
        assert_eq!(
            enforcement::disposition(&decision, &attributes, &registry),
            want,
            "registry {registry_wide:?}, {req:?}"
        );
    }
}

/// One log line per would-be denial, under its own event name.
#[tokio::test]
async fn would_deny_is_logged() {
    let f = fixture(Enforcement::Report);
    let sidecar = Sidecar::start(&f.write_config(&f.static_config(tcp0()))).await;
    let mut client = sidecar.client().await;
    let ca = Ca::new("report CA");
    let req = Req::cert(ca.client(&ClientSpec::uri(A_URI)).forwarded()).key("wrong-key-0123456789");
    let resp = client.check(req.build()).await.unwrap().into_inner();
    assert_eq!(outcome(&resp), "would_deny:invalid_api_key");
    let line = poll("the would_deny log line", METRICS_WAIT, || {
        let line = sidecar
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["event"] == "check_would_deny");
        async move { line }
    })
    .await;
    assert_eq!(line["reason"], "invalid_api_key");
    assert_eq!(line["service"], "a");
    assert!(!sidecar.log_text().contains("check_denied"));
}

/// A request that cannot be read is refused in every mode.
#[tokio::test]
async fn a_malformed_request_is_denied_even_in_report_mode() {
    let f = fixture(Enforcement::Report);
    let sidecar = InProcess::for_fixture(&f).await;
    let req = Req::principal(A_URI).key("marker-0123456789").build();
    let resp = service_auth::testkit::grpc::raw_check(
        sidecar.addr,
        service_auth::testkit::grpc::with_invalid_utf8(&req, "marker-0123456789"),
    )
    .await
    .expect("a CheckResponse, not a gRPC error");
    assert_eq!(outcome(&resp), "deny:malformed_request");
    sidecar.sidecar.shutdown().await.unwrap();
}
