//! Failed-authentication throttling (`throttle` in the registry): the Check
//! after a caller's `failures`-th failure within `window` is refused with
//! 429 and `retry-after`, before any decision; other callers are not
//! affected; the caller is heard again once its window has passed.

mod common;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use common::otlp::Receiver;
use common::procs::poll;
use common::{Ca, ClientSpec, Fixture, InProcess, Req, Svc, tcp0};
use envoy_types::ext_authz::v3::pb::{CheckResponse, HttpResponse};
use service_auth::config::{Enforcement, Otlp, OtlpProtocol, ThrottleSection};
use service_auth::registry::Snapshot;
use service_auth::server::AuthzService;
use service_auth::telemetry::Observer;
use service_auth::testkit::{ManualClock, grpc};
use service_auth::throttle::Throttle;

const A_URI: &str = "spiffe://mesh.test/a";
const B_URI: &str = "spiffe://mesh.test/b";
const A_KEY: &str = "key-of-a-0123456789";
const B_KEY: &str = "key-of-b-0123456789";
const WRONG: &str = "wrong-key-0123456789";
const FAILURES: u32 = 3;

/// A registry for a and b with `throttle: {failures: 3, window: 1m}`.
fn fixture(edit: impl FnOnce(&mut service_auth::config::RegistryFile)) -> Fixture {
    let services = [Svc::new("a", A_URI, A_KEY), Svc::new("b", B_URI, B_KEY)];
    let f = Fixture::new(&services);
    let mut file = f.registry_file(&services);
    file.throttle = Some(ThrottleSection {
        failures: FAILURES,
        window: Duration::from_secs(60),
        max_tracked: 1000,
    });
    edit(&mut file);
    f.write(&file);
    f
}

fn reason(resp: &CheckResponse) -> String {
    for key in ["reason", "would_deny"] {
        if let Some(s) = grpc::metadata(resp, key) {
            return format!("{key}:{s}");
        }
    }
    "allow".into()
}

/// "allow", the HTTP status of a denial, or `would_deny`.
fn status(resp: &CheckResponse) -> u16 {
    match &resp.http_response {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().map_or(0, |s| s.code as u16),
        other => panic!("{other:?}"),
    }
}

/// The `retry-after` seconds of a throttled answer.
fn retry_after(resp: &CheckResponse) -> u64 {
    let Some(HttpResponse::DeniedResponse(denied)) = &resp.http_response else {
        panic!("not a denial: {resp:?}")
    };
    let header = denied
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "retry-after")
        .expect("retry-after");
    header.value.parse().expect("whole seconds")
}

/// One Check through the server's handler (throttle, decision, answer),
/// without the transport.
fn check_now(server: &AuthzService, req: &Req) -> CheckResponse {
    use service_auth::wire::{CheckHandler, CheckView};
    let bytes = prost::Message::encode_to_vec(&req.build());
    server
        .check(CheckView::decode(&bytes))
        .decode()
        .expect("a CheckResponse")
}

#[tokio::test]
async fn the_failure_after_the_limit_gets_429_with_retry_after_and_no_decision() {
    let f = fixture(|_| {});
    let sidecar = InProcess::for_fixture(&f).await;
    let mut client = sidecar.client().await;
    let ca = Ca::new("throttle CA");
    let a = ca.client(&ClientSpec::uri(A_URI)).forwarded();
    let guess = Req::cert(a.clone()).key(WRONG);
    for _ in 0..FAILURES {
        let resp = client.check(guess.build()).await.unwrap().into_inner();
        assert_eq!(status(&resp), 401);
    }
    let resp = client.check(guess.build()).await.unwrap().into_inner();
    assert_eq!(status(&resp), 429, "{resp:?}");
    assert_eq!(
        resp.status.as_ref().map(|s| s.code),
        Some(tonic::Code::ResourceExhausted as i32)
    );
    assert_eq!(reason(&resp), "reason:too_many_failures");
    assert!((1..=60).contains(&retry_after(&resp)));
    let Some(HttpResponse::DeniedResponse(denied)) = &resp.http_response else {
        unreachable!()
    };
    assert_eq!(denied.body, r#"{"error":"too_many_requests"}"#);
    let content_type = denied
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "content-type");
    assert_eq!(
        content_type.map(|h| h.value.as_str()),
        Some("application/json")
    );

    // Refused before the decision: even the right key is not looked at.
    let right = client
        .check(Req::cert(a).key(A_KEY).build())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reason(&right), "reason:too_many_failures");
    sidecar.sidecar.shutdown().await.unwrap();
}

#[tokio::test]
async fn other_callers_are_unaffected() {
    // By certificate: another certificate is another caller.
    let f = fixture(|_| {});
    let sidecar = InProcess::for_fixture(&f).await;
    let mut client = sidecar.client().await;
    let ca = Ca::new("throttle CA");
    let a = Req::cert(ca.client(&ClientSpec::uri(A_URI)).forwarded());
    let b = Req::cert(ca.client(&ClientSpec::uri(B_URI)).forwarded());
    for _ in 0..FAILURES {
        client.check(a.clone().key(WRONG).build()).await.unwrap();
    }
    let check = |req: Req| {
        let mut client = client.clone();
        async move { reason(&client.check(req.build()).await.unwrap().into_inner()) }
    };
    assert_eq!(
        check(a.clone().key(A_KEY)).await,
        "reason:too_many_failures"
    );
    // b's own failures are counted apart from a's, and b's successes do
    // not reset a's count.
    assert_eq!(check(b.clone().key(B_KEY)).await, "allow");
    assert_eq!(check(b.clone().key(WRONG)).await, "reason:invalid_api_key");
    assert_eq!(check(b.clone().key(B_KEY)).await, "allow");
    assert_eq!(
        check(a.clone().key(A_KEY)).await,
        "reason:too_many_failures"
    );
    sidecar.sidecar.shutdown().await.unwrap();

    // Without a certificate: the source address is the caller.
    let f = fixture(|file| file.identity.require_certificate = false);
    let sidecar = InProcess::for_fixture(&f).await;
    let client = sidecar.client().await;
    let check = |req: Req| {
        let mut client = client.clone();
        async move { reason(&client.check(req.build()).await.unwrap().into_inner()) }
    };
    let from = |ip: &str| Req::principal(A_URI).from_address(ip);
    for _ in 0..FAILURES {
        assert_eq!(
            check(from("10.0.0.1").key(WRONG)).await,
            "reason:invalid_api_key"
        );
    }
    assert_eq!(
        check(from("10.0.0.1").key(A_KEY)).await,
        "reason:too_many_failures"
    );
    assert_eq!(check(from("10.0.0.2").key(A_KEY)).await, "allow");
    assert_eq!(
        check(from("10.0.0.2").key(WRONG)).await,
        "reason:invalid_api_key"
    );
    sidecar.sidecar.shutdown().await.unwrap();
}

/// The server's Check handler (throttle, decision, answer) with the throttle's
/// clock in the test's hands: the window passes without waiting for it.
#[test]
fn after_the_window_the_caller_is_let_through_again() {
    let f = fixture(|_| {});
    let snapshot = Snapshot::default();
    snapshot.store(Arc::new(f.load()));
    let clock = ManualClock::new();
    let throttle = Arc::new(Throttle::with_clock(clock.clone()));
    let server = AuthzService::new(snapshot, Observer::logs_only(), throttle.clone());
    let ca = Ca::new("throttle CA");
    let a = Req::cert(ca.client(&ClientSpec::uri(A_URI)).forwarded());
    let check = |req: &Req| check_now(&server, req);

    for _ in 0..FAILURES {
        assert_eq!(status(&check(&a.clone().key(WRONG))), 401);
        clock.advance(Duration::from_secs(1));
    }
    // The window runs from the first failure, 3 s ago.
    let refused = check(&a.clone().key(A_KEY));
    assert_eq!(status(&refused), 429);
    assert_eq!(retry_after(&refused), 57);
    clock.advance(Duration::from_millis(56_500));
    assert_eq!(retry_after(&check(&a.clone().key(A_KEY))), 1, "rounded up");
    clock.advance(Duration::from_millis(500));
    assert_eq!(reason(&check(&a.clone().key(A_KEY))), "allow");
    // A fresh window: failures count from zero again.
    for _ in 0..FAILURES {
        assert_eq!(status(&check(&a.clone().key(WRONG))), 401);
    }
    assert_eq!(status(&check(&a.clone().key(WRONG))), 429);
    assert_eq!(throttle.tracked(), 1);
}

#[test]
fn the_least_recently_seen_callers_are_forgotten_beyond_max_tracked() {
    let f = fixture(|file| {
        if let Some(t) = &mut file.throttle {
            t.failures = 1;
            t.max_tracked = 2;
        }
    });
    let snapshot = Snapshot::default();
    snapshot.store(Arc::new(f.load()));
    assert_eq!(
        snapshot.load().unwrap().throttle.map(|t| t.max_tracked),
        NonZeroUsize::new(2)
    );
    let throttle = Arc::new(Throttle::with_clock(ManualClock::new()));
    let server = AuthzService::new(snapshot, Observer::logs_only(), throttle.clone());
    let guess = |ip: &str| {
        let req = Req::principal(A_URI).from_address(ip).key(WRONG);
        status(&check_now(&server, &req))
    };
    // Without a certificate (require_certificate is on): missing_identity,
    // a 401 like any other failed authentication.
    assert_eq!(guess("10.0.0.1"), 401);
    assert_eq!(guess("10.0.0.2"), 401);
    assert_eq!(guess("10.0.0.1"), 429);
    assert_eq!(guess("10.0.0.3"), 401);
    assert_eq!(throttle.tracked(), 2);
    assert_eq!(
        guess("10.0.0.1"),
        429,
        "seen more recently than .2, still tracked"
    );
    assert_eq!(
        guess("10.0.0.2"),
        401,
        "the least recently seen was forgotten"
    );
    // .2 is tracked again, so .3, now the least recently seen, is forgotten.
    assert_eq!(guess("10.0.0.3"), 401);
    assert_eq!(throttle.tracked(), 2);
}

/// Report mode blocks nothing by itself: a reported denial is not a
/// failure. A caller throttled for enforced failures is refused on a
/// report-mode route too (the throttle acts before anything is decided).
#[tokio::test]
async fn report_mode_never_throttles_but_a_throttled_caller_is_refused_there_too() {
    let f = fixture(|file| file.enforcement = Enforcement::Report);
    let sidecar = InProcess::for_fixture(&f).await;
    let client = sidecar.client().await;
    let check = |req: Req| {
        let mut client = client.clone();
        async move { reason(&client.check(req.build()).await.unwrap().into_inner()) }
    };
    let ca = Ca::new("throttle CA");
    let a = Req::cert(ca.client(&ClientSpec::uri(A_URI)).forwarded());
    for _ in 0..3 * FAILURES {
        assert_eq!(
            check(a.clone().key(WRONG)).await,
            "would_deny:invalid_api_key"
        );
    }
    let enforced = a.clone().key(WRONG).ext("enforcement", "enforce");
    for _ in 0..FAILURES {
        assert_eq!(check(enforced.clone()).await, "reason:invalid_api_key");
    }
    assert_eq!(
        check(a.clone().key(WRONG)).await,
        "reason:too_many_failures"
    );
    assert_eq!(check(a.key(A_KEY)).await, "reason:too_many_failures");
    sidecar.sidecar.shutdown().await.unwrap();
}

#[tokio::test]
async fn tracked_callers_and_throttled_checks_are_counted() {
    let rx = Receiver::grpc().await;
    let f = fixture(|_| {});
    let mut config = f.static_config(tcp0());
    config.telemetry.otlp = Some(Otlp {
        endpoint: Some(rx.url()),
        protocol: Some(OtlpProtocol::Grpc),
        interval: Some(Duration::from_millis(200)),
    });
    let sidecar = InProcess::start(&config).await;
    let mut client = sidecar.client().await;
    let ca = Ca::new("throttle CA");
    for uri in [A_URI, B_URI] {
        let req = Req::cert(ca.client(&ClientSpec::uri(uri)).forwarded()).key(WRONG);
        for _ in 0..FAILURES + 2 {
            client.check(req.build()).await.unwrap();
        }
    }
    poll("throttle.tracked = 2", Duration::from_secs(30), || {
        let v = rx.value("service_auth.throttle.tracked", &[]);
        async move { (v == Some(2.0)).then_some(()) }
    })
    .await;
    poll("4 throttled checks", Duration::from_secs(30), || {
        let v = rx.value(
            "service_auth.checks",
            &[
                ("result", "deny"),
                ("reason", "too_many_failures"),
                ("service", "unknown"),
            ],
        );
        async move { (v == Some(4.0)).then_some(()) }
    })
    .await;
    sidecar.sidecar.shutdown().await.unwrap();
}
