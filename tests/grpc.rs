//! The sidecar over real gRPC (in-process, on a kernel-chosen port):
//! response shape, and bad input that must come back as a denial inside a
//! `CheckResponse` (never a transport error, never a crash). The log test
//! runs the real binary.

mod common;

use common::procs::Sidecar;
use common::{Ca, ClientSpec, Fixture, InProcess, Req, Svc, tcp0};
use envoy_types::ext_authz::v3::pb::{CheckResponse, HeaderAppendAction, HttpResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use time::{Duration, OffsetDateTime};

const A_URI: &str = "spiffe://mesh.test/ns/default/sa/a";
const B_URI: &str = "spiffe://mesh.test/ns/default/sa/b";
const A_KEY: &str = "key-of-service-a-0123456789";
const B_KEY: &str = "key-of-service-b-0123456789";

fn fixture() -> Fixture {
    Fixture::new(&[Svc::new("a", A_URI, A_KEY), Svc::new("b", B_URI, B_KEY)])
}

async fn start() -> (Fixture, InProcess, Ca) {
    let fixture = fixture();
    let sidecar = InProcess::for_fixture(&fixture).await;
    (fixture, sidecar, Ca::new("grpc test CA"))
}

fn metadata(resp: &CheckResponse, field: &str) -> Option<String> {
    let outer = resp.dynamic_metadata.as_ref()?.fields.get("service_auth")?;
    let Some(Kind::StructValue(inner)) = &outer.kind else {
        return None;
    };
    match &inner.fields.get(field)?.kind {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

/// Asserts a well-formed denial: gRPC code, HTTP status, generic body, JSON
/// content type, and the reason only in dynamic metadata.
fn assert_denial(resp: &CheckResponse, grpc: i32, http: i32, body: &str, reason: &str) {
    assert_eq!(resp.status.as_ref().unwrap().code, grpc, "{resp:?}");
    let Some(HttpResponse::DeniedResponse(denied)) = &resp.http_response else {
        panic!("expected a denied_response, got {resp:?}")
    };
    assert_eq!(denied.status.as_ref().unwrap().code, http);
    assert_eq!(denied.body, body);
    let ct = denied
        .headers
        .iter()
        .find(|h| h.header.as_ref().unwrap().key == "content-type")
        .expect("content-type header");
    assert_eq!(ct.header.as_ref().unwrap().value, "application/json");
    assert_eq!(metadata(resp, "reason").as_deref(), Some(reason));
    assert!(!denied.body.contains(reason) || reason == "unavailable");
}

fn assert_unauthenticated(resp: &CheckResponse, reason: &str) {
    assert_denial(resp, 16, 401, r#"{"error":"unauthenticated"}"#, reason);
}

#[tokio::test]
async fn allow_response_overwrites_the_token_header_and_strips_the_key() {
    let (_f, sidecar, ca) = start().await;
    let mut client = sidecar.client().await;
    let cert = ca.client(&ClientSpec::uri(A_URI));
    let resp = client
        .check(Req::cert(cert.forwarded()).key(A_KEY).build())
        .await
        .expect("gRPC call")
        .into_inner();
    assert_eq!(resp.status.as_ref().unwrap().code, 0);
    let Some(HttpResponse::OkResponse(ok)) = &resp.http_response else {
        panic!("expected ok_response: {resp:?}")
    };
    assert_eq!(ok.headers.len(), 1);
    let h = &ok.headers[0];
    assert_eq!(h.header.as_ref().unwrap().key, "x-service-jwt");
    #[allow(deprecated)]
    let append = h.append.as_ref().map(|b| b.value);
    assert_eq!(
        append,
        Some(false),
        "deprecated append must be set to false"
    );
    assert_eq!(
        h.append_action,
        HeaderAppendAction::OverwriteIfExistsOrAdd as i32
    );
    assert_eq!(ok.headers_to_remove, vec!["x-api-key".to_string()]);
    assert_eq!(metadata(&resp, "service").as_deref(), Some("a"));
    assert_eq!(metadata(&resp, "kid").as_deref(), Some("test-1"));
    assert!(metadata(&resp, "jti").is_some_and(|j| j.len() >= 22));
}

#[tokio::test]
async fn denials_carry_status_code_and_generic_body() {
    let (_f, sidecar, ca) = start().await;
    let mut client = sidecar.client().await;
    let cert = ca.client(&ClientSpec::uri(A_URI)).forwarded();

    let resp = client
        .check(Req::cert(cert.clone()).key("nope").build())
        .await
        .unwrap()
        .into_inner();
    assert_unauthenticated(&resp, "invalid_api_key");

    let resp = client
        .check(
            Req::cert(cert.clone())
                .key(A_KEY)
                .header("x-auth-scope", "admin")
                .build(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_denial(
        &resp,
        7,
        403,
        r#"{"error":"forbidden"}"#,
        "scope_not_allowed",
    );

    let resp = client
        .check(Req::cert(cert).key(A_KEY).ext("mode", "nonsense").build())
        .await
        .unwrap()
        .into_inner();
    assert_denial(
        &resp,
        14,
        503,
        r#"{"error":"unavailable"}"#,
        "internal_error",
    );
}

#[tokio::test]
async fn bad_input_is_a_denial_not_an_error() {
    let (_f, sidecar, ca) = start().await;
    let mut client = sidecar.client().await;
    let now = OffsetDateTime::now_utc();
    let good = ca.client(&ClientSpec::uri(A_URI)).forwarded();
    let cases: Vec<(&str, Req, &str)> = vec![
        (
            "expired certificate",
            Req::cert(
                ca.client(
                    &ClientSpec::uri(A_URI).valid(now - Duration::days(9), now - Duration::days(2)),
                )
                .forwarded(),
            )
            .key(A_KEY),
            "certificate_expired",
        ),
        (
            "not-yet-valid certificate",
            Req::cert(
                ca.client(
                    &ClientSpec::uri(A_URI).valid(now + Duration::days(2), now + Duration::days(9)),
                )
                .forwarded(),
            )
            .key(A_KEY),
            "certificate_not_yet_valid",
        ),
        (
            "CN-only certificate",
            Req::cert(ca.client(&ClientSpec::empty().with_cn(A_URI)).forwarded()).key(A_KEY),
            "unknown_principal",
        ),
        (
            "two services in one certificate",
            Req::cert(
                ca.client(&ClientSpec::uri(A_URI).with_uri(B_URI))
                    .forwarded(),
            )
            .key(A_KEY),
            "ambiguous_principal",
        ),
        (
            "malformed certificate",
            Req::cert("-----BEGIN%20junk".into()).key(A_KEY),
            "malformed_certificate",
        ),
        (
            "200 KB certificate",
            Req::cert("Q".repeat(200 * 1024)).key(A_KEY),
            "malformed_certificate",
        ),
        (
            "invalid percent-encoding",
            Req::cert(format!("{good}%G1")).key(A_KEY),
            "malformed_certificate",
        ),
        (
            "100 KB API key",
            Req::cert(good.clone()).key(&"k".repeat(100 * 1024)),
            "invalid_api_key",
        ),
        (
            "duplicate API key values",
            Req::cert(good.clone()).key(&format!("{A_KEY},{A_KEY}")),
            "invalid_api_key",
        ),
        (
            "duplicate API key entries in header_map",
            Req::cert(good.clone())
                .raw_header("x-api-key", A_KEY.as_bytes())
                .raw_header("x-api-key", A_KEY.as_bytes()),
            "invalid_api_key",
        ),
        (
            "another service's key",
            Req::cert(good.clone()).key(B_KEY),
            "identity_mismatch",
        ),
        ("no identity", Req::default().key(A_KEY), "missing_identity"),
    ];
    for (name, req, reason) in cases {
        let resp = client
            .check(req.build())
            .await
            .unwrap_or_else(|e| panic!("{name}: transport error {e}"))
            .into_inner();
        assert_eq!(metadata(&resp, "reason").as_deref(), Some(reason), "{name}");
        assert_unauthenticated(&resp, reason);
    }
    // Still serving after all that.
    let resp = client
        .check(Req::cert(good).key(A_KEY).build())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status.unwrap().code, 0);
}

#[tokio::test]
async fn denials_are_logged_without_credentials() {
    let fixture = fixture();
    let sidecar = Sidecar::start(&fixture.write_config(&fixture.static_config(tcp0()))).await;
    let ca = Ca::new("grpc test CA");
    let mut client = sidecar.client().await;
    let cert = ca.client(&ClientSpec::uri(A_URI)).forwarded();
    let resp = client
        .check(Req::cert(cert.clone()).key(B_KEY).build())
        .await
        .unwrap()
        .into_inner();
    assert_unauthenticated(&resp, "identity_mismatch");
    let resp = client
        .check(Req::cert(cert).key(A_KEY).build())
        .await
        .unwrap()
        .into_inner();
    let Some(HttpResponse::OkResponse(ok)) = resp.http_response else {
        panic!()
    };
    let token = ok.headers[0].header.as_ref().unwrap().value.clone();

    let log = common::procs::poll(
        "the denial log line",
        std::time::Duration::from_secs(10),
        || {
            let text = sidecar.log_text();
            async move { text.contains("identity_mismatch").then_some(text) }
        },
    )
    .await;
    let line = log
        .lines()
        .find(|l| l.contains("identity_mismatch"))
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
    assert_eq!(json["reason"], "identity_mismatch");
    assert_eq!(json["service"], "a");
    assert_eq!(json["request_id"], "req-1");
    for secret in [A_KEY, B_KEY, common::SECRET, token.as_str()] {
        assert!(!log.contains(secret), "log leaks a credential");
    }
}
