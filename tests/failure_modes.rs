//! What happens when things break, with the shipped `envoy/envoy.yaml`:
//! the sidecar is down (Envoy answers 503 and the upstream sees nothing),
//! the sidecar dies and comes back under load (never a 200 without a valid
//! token). The exact clock boundaries of issue mode are in-process tests
//! (`critical.rs::issue_mode_clock_boundaries_are_exact`).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::procs::{Echo, Envoy, Sidecar, poll, refusing_addr};
use common::{Ca, ClientSpec, Fixture, ListenAddr, Svc, tcp0};
use service_auth::token;
use tokio::sync::Mutex;

const A_URI: &str = "spiffe://mesh.test/ns/default/sa/a";
const A_KEY: &str = "key-of-service-a-0123456789";

struct Mesh {
    fixture: Fixture,
    sidecar_addr: SocketAddr,
    _envoy: Envoy,
    echo: Echo,
    client: reqwest::Client,
    base: String,
}

fn fixture() -> Fixture {
    Fixture::new(&[Svc::new("a", A_URI, A_KEY)])
}

/// Envoy with the shipped config in front of an echo upstream, sending
/// Checks to `sidecar_addr`.
async fn mesh(fixture: Fixture, sidecar_addr: SocketAddr) -> Mesh {
    let ca = Ca::new("mesh CA");
    let echo = Echo::start().await;
    common::write_envoy_certs(&ca, fixture.path());
    let envoy = Envoy::shipped(fixture.path(), sidecar_addr, echo.addr).await;
    let base = envoy.base_url();
    let cert = ca.client(&ClientSpec::uri(A_URI));
    let client = common::https_client(&ca, &cert);
    Mesh {
        fixture,
        sidecar_addr,
        _envoy: envoy,
        echo,
        client,
        base,
    }
}

/// One request through Envoy: its status and, for a 200, the tokens the
/// upstream received.
async fn call(m: &Mesh, path: &str, key: Option<&str>) -> (u16, Vec<String>) {
    let mut req = m.client.get(format!("{}{path}", m.base));
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    let resp = req.send().await.expect("request through Envoy");
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    let tokens = if status == 200 {
        let headers: serde_json::Value = serde_json::from_str(&body).unwrap();
        headers["x-service-jwt"]
            .as_array()
            .map(|v| v.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    (status, tokens)
}

#[tokio::test]
async fn sidecar_down_means_503_and_nothing_reaches_the_upstream() {
    // The sidecar's address refuses connections: nothing serves it.
    let (_down, sidecar_addr) = refusing_addr();
    let m = mesh(fixture(), sidecar_addr).await;
    for (path, key) in [
        ("/orders", Some(A_KEY)),
        ("/orders", None),
        ("/write/x", Some(A_KEY)),
        ("/internal/x", None),
    ] {
        let (status, _) = call(&m, path, key).await;
        assert_eq!(status, 503, "{path} with key {key:?}");
    }
    assert_eq!(m.echo.hits(), 0, "a request reached the upstream");
}

/// What one load request saw.
struct Seen {
    valid_key: bool,
    status: u16,
    tokens: Vec<String>,
}

#[tokio::test]
async fn sidecar_restart_under_load_fails_closed_then_recovers() {
    let fixture = fixture();
    let sidecar = Sidecar::start(&fixture.write_config(&fixture.static_config(tcp0()))).await;
    let m = Arc::new(mesh(fixture, sidecar.addr()).await);
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let stop = Arc::new(AtomicBool::new(false));

    // Three clients: two with the right key, one with a wrong one.
    let mut load = Vec::new();
    for valid_key in [true, true, false] {
        let (m, seen, stop) = (m.clone(), seen.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let key = if valid_key { A_KEY } else { "not-a-key-0123" };
            while !stop.load(Ordering::SeqCst) {
                let (status, tokens) = call(&m, "/orders", Some(key)).await;
                seen.lock().await.push(Seen {
                    valid_key,
                    status,
                    tokens,
                });
            }
        }));
    }
    poll("load to be allowed", Duration::from_secs(30), || async {
        seen.lock()
            .await
            .iter()
            .any(|s| s.status == 200)
            .then_some(())
    })
    .await;

    // Kill -9: no graceful shutdown. While it is down, every call is a 503.
    drop(sidecar);
    for _ in 0..5 {
        let (status, _) = call(&m, "/orders", Some(A_KEY)).await;
        assert_eq!(status, 503, "valid request while the sidecar is down");
    }
    let outage_len = seen.lock().await.len();

    // The restart binds the address the first run reported (Envoy's
    // cluster points there).
    let config = m
        .fixture
        .write_config(&m.fixture.static_config(ListenAddr::Tcp(m.sidecar_addr)));
    let _sidecar = Sidecar::start(&config).await;
    poll(
        "allowed again after the restart",
        Duration::from_secs(30),
        || async {
            let seen = seen.lock().await;
            seen[outage_len..]
                .iter()
                .any(|s| s.status == 200)
                .then_some(())
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }

    let seen = seen.lock().await;
    let registry = m.fixture.load();
    let mut ok = 0;
    for s in seen.iter() {
        match (s.valid_key, s.status) {
            (true, 200) => {
                assert_eq!(s.tokens.len(), 1, "one token per allowed request");
                let claims = token::verify(&registry.token, &s.tokens[0], common::unix_now())
                    .expect("the upstream got a valid token")
                    .claims;
                assert_eq!(claims.sub, "a");
                ok += 1;
            }
            (true, 503) | (false, 401) | (false, 503) => {}
            (valid, status) => panic!("valid key {valid}: unexpected status {status}"),
        }
    }
    assert!(
        seen.iter().any(|s| s.status == 503),
        "the load never saw the outage"
    );
    assert_eq!(m.echo.hits(), ok, "upstream hits must equal allowed calls");
}
