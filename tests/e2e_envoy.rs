//! End to end through a real Envoy running the shipped `envoy/envoy.yaml`:
//! mTLS client -> Envoy -> ext_authz (the real binary) -> echo upstream.

mod common;

use common::procs::{Echo, Envoy, Sidecar};
use common::{Ca, ClientSpec, Fixture, Issued, Svc, tcp0, unix_now};
use service_auth::token;

const A_URI: &str = "spiffe://mesh.test/ns/default/sa/a";
const B_URI: &str = "spiffe://mesh.test/ns/default/sa/b";
const A_KEY: &str = "key-of-service-a-0123456789";
const B_KEY: &str = "key-of-service-b-0123456789";

struct Mesh {
    fixture: Fixture,
    _sidecar: Sidecar,
    _envoy: Envoy,
    echo: Echo,
    a_cert: Issued,
    a: reqwest::Client,
    base: String,
}

async fn mesh() -> Mesh {
    let ca = Ca::new("mesh CA");
    let fixture = Fixture::new(&[Svc::new("a", A_URI, A_KEY), Svc::new("b", B_URI, B_KEY)]);
    let sidecar = Sidecar::start(&fixture.write_config(&fixture.static_config(tcp0()))).await;
    let echo = Echo::start().await;

    common::write_envoy_certs(&ca, fixture.path());
    let envoy = Envoy::shipped(fixture.path(), sidecar.addr(), echo.addr).await;
    let base = envoy.base_url();

    let a_cert = ca.client(&ClientSpec::uri(A_URI));
    let a = common::https_client(&ca, &a_cert);
    Mesh {
        fixture,
        _sidecar: sidecar,
        _envoy: envoy,
        echo,
        a_cert,
        a,
        base,
    }
}

impl Mesh {
    /// A GET through Envoy as service `a`.
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.a.get(format!("{}{path}", self.base))
    }

    /// The claims of the one `x-service-jwt` the upstream received, verified.
    fn token_claims(&self, upstream_headers: &serde_json::Value) -> token::Claims {
        let jwt = one(upstream_headers, "x-service-jwt");
        token::verify(&self.fixture.load().token, &jwt, unix_now())
            .expect("the upstream's token verifies")
            .claims
    }
}

/// The headers the upstream received, or the status and body of a refusal.
async fn send(req: reqwest::RequestBuilder) -> (u16, serde_json::Value, String) {
    let resp = req.send().await.expect("request through Envoy");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.text().await.unwrap();
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    (status, json, content_type)
}

fn one(headers: &serde_json::Value, name: &str) -> String {
    let values = headers[name]
        .as_array()
        .unwrap_or_else(|| panic!("upstream got no {name}: {headers}"));
    assert_eq!(
        values.len(),
        1,
        "upstream got {name} {} times",
        values.len()
    );
    values[0].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn allowed_call_reaches_upstream_with_one_verified_token_and_no_key() {
    let m = mesh().await;
    let (status, headers, _) = send(m.get("/orders").header("x-api-key", A_KEY)).await;
    assert_eq!(status, 200, "{headers}");
    assert_eq!(m.echo.hits(), 1);
    assert!(
        headers.get("x-api-key").is_none(),
        "the API key reached the upstream"
    );

    let claims = m.token_claims(&headers);
    assert_eq!(claims.sub, "a");
    assert_eq!(claims.aud, common::AUDIENCE);
    assert_eq!(claims.iss, common::ISSUER);
    assert_eq!(claims.scope, "read write");
    assert_eq!(claims.principal, A_URI);
    assert_eq!(claims.exp - claims.iat, 300);
    use sha2::Digest;
    let thumb: [u8; 32] = sha2::Sha256::digest(&m.a_cert.der).into();
    assert_eq!(
        claims.cnf,
        Some(token::Confirmation::for_certificate_sha256(&thumb))
    );
}

#[tokio::test]
async fn bad_keys_get_401_and_never_reach_upstream() {
    let m = mesh().await;
    for key in [Some("wrong-key"), None, Some(B_KEY), Some("")] {
        let mut req = m.get("/orders");
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        let (status, body, content_type) = send(req).await;
        assert_eq!(status, 401, "key {key:?}");
        assert_eq!(body, serde_json::json!({"error": "unauthenticated"}));
        assert_eq!(content_type, "application/json");
    }
    // Two copies of the right key are not the right key.
    let (status, _, _) = send(
        m.get("/orders")
            .header("x-api-key", A_KEY)
            .header("x-api-key", A_KEY),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(m.echo.hits(), 0);
}

#[tokio::test]
async fn client_sent_token_is_replaced() {
    let m = mesh().await;
    let (status, headers, _) = send(
        m.get("/orders")
            .header("x-api-key", A_KEY)
            .header("x-service-jwt", "forged.token.value"),
    )
    .await;
    assert_eq!(status, 200);
    assert_ne!(one(&headers, "x-service-jwt"), "forged.token.value");
    assert_eq!(m.token_claims(&headers).sub, "a");
}

#[tokio::test]
async fn client_sent_xfcc_changes_nothing() {
    let m = mesh().await;
    let forged = format!("By=spiffe://mesh.test/x;URI={B_URI}");
    // Claiming to be B through XFCC while presenting B's key: still A's certificate.
    let (status, _, _) = send(
        m.get("/orders")
            .header("x-api-key", B_KEY)
            .header("x-forwarded-client-cert", &forged),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(m.echo.hits(), 0);
    // With A's own key the forged header is ignored and not forwarded.
    let (status, headers, _) = send(
        m.get("/orders")
            .header("x-api-key", A_KEY)
            .header("x-forwarded-client-cert", &forged),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        headers.get("x-forwarded-client-cert").is_none(),
        "{headers}"
    );
    let claims = m.token_claims(&headers);
    assert_eq!(claims.sub, "a");
}

#[tokio::test]
async fn route_scope_from_context_extensions_is_enforced() {
    let m = mesh().await;
    let (status, headers, _) = send(m.get("/write/x").header("x-api-key", A_KEY)).await;
    assert_eq!(status, 200);
    let claims = m.token_claims(&headers);
    assert_eq!(claims.scope, "write");
    let (status, body, _) = send(m.get("/admin/x").header("x-api-key", A_KEY)).await;
    assert_eq!(status, 403);
    assert_eq!(body, serde_json::json!({"error": "forbidden"}));
    assert_eq!(m.echo.hits(), 1);
}

#[tokio::test]
async fn verify_route_accepts_a_bound_token_and_sets_service_id() {
    let m = mesh().await;
    let (_, headers, _) = send(m.get("/orders").header("x-api-key", A_KEY)).await;
    let jwt = one(&headers, "x-service-jwt");
    let (status, headers, _) = send(
        m.get("/internal/x")
            .header("x-service-jwt", &jwt)
            .header("x-service-id", "admin"),
    )
    .await;
    assert_eq!(status, 200, "{headers}");
    assert_eq!(one(&headers, "x-service-id"), "a");
    let (status, _, _) = send(m.get("/internal/x").header("x-service-jwt", "garbage")).await;
    assert_eq!(status, 401);
}
