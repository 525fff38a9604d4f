//! The shipped Envoy configs, tried as an attacker would try them.
//!
//! Each test runs a file from `envoy/` exactly as shipped (only its ports
//! rewritten, checked below) with its working directory at real
//! `service-auth dev-pki` output, in front of the real sidecar and an echo
//! upstream. As `billing` (scope `read` only, its own certificate and key) it
//! sends what reaches a write or admin route by another spelling, smuggles
//! credentials in headers, or forges the caller's address: every attempt must
//! be refused (its status asserted) or stripped (what the upstream received
//! asserted). Requests go out as raw HTTP/1.1 over mTLS, because an HTTP
//! client library would normalise `/x/../write` or `\` before sending.
//! Where a setting cannot be seen from outside (which headers the sidecar is
//! sent, which mutations it may make), a fake sidecar stands in and records.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::dev_pki::DevPki;
use common::procs::{Echo, Envoy, EnvoyPorts, Sidecar, envoy_config_variant, poll, refusing_addr};
use common::{tcp0, unix_now};
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, OkHttpResponse,
};
use serde_yaml::Value;
use service_auth::config::ListenAddr;
use service_auth::registry::Registry;
use service_auth::token;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

/// The read-only caller.
const BILLING: &str = "billing";
/// The caller with `read write`: a control that the routes still work.
const API: &str = "api_service";

/// Which file of `envoy/` runs, which decides how Envoy reaches the sidecar.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    /// `envoy.yaml`: plaintext gRPC on the shared loopback.
    Loopback,
    /// `envoy-mtls-hop.yaml`: mTLS with certificates from the hop CA.
    MtlsHop,
    /// `envoy-uds-hop.yaml`: a Unix socket.
    UdsHop,
}

impl Variant {
    fn file(self) -> &'static str {
        match self {
            Variant::Loopback => "envoy/envoy.yaml",
            Variant::MtlsHop => "envoy/envoy-mtls-hop.yaml",
            Variant::UdsHop => "envoy/envoy-uds-hop.yaml",
        }
    }
}

// ---------------------------------------------------------------------------
// The stack: dev-pki, sidecar, echo upstream, Envoy
// ---------------------------------------------------------------------------

struct Stack {
    pki: DevPki,
    sidecar: Sidecar,
    echo: Echo,
    envoy: Envoy,
}

/// The generated `service-auth.yaml` with its commented `listen.tls` block
/// uncommented, exactly as its comment tells a user to do.
fn uncomment_listen_tls(generated: &str) -> String {
    let mut out = String::new();
    let mut in_block = false;
    for line in generated.lines() {
        if line == "  # tls:" {
            in_block = true;
            out.push_str("  tls:\n");
        } else if in_block && line.starts_with("  #   ") {
            out.push_str(&format!("    {}\n", &line["  #   ".len()..]));
        } else {
            in_block = false;
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

impl Stack {
    async fn start(variant: Variant) -> Stack {
        Stack::start_with(variant, |_| {}).await
    }

    /// Like [`Stack::start`], with `edit` applied to the Envoy config (after
    /// the ports): for tests that prove what a removed setting was doing.
    async fn start_with(variant: Variant, edit: impl FnOnce(&mut Value)) -> Stack {
        let pki = DevPki::generate();
        let generated = pki.read("service-auth.yaml");
        let text = match variant {
            Variant::MtlsHop => uncomment_listen_tls(&generated),
            _ => generated,
        };
        let mut config = pki.parse_config(&text);
        let socket = pki.dir.join("authz.sock");
        // Kernel-chosen port (or the socket): the sidecar reports what it bound.
        config.listen.grpc = match variant {
            Variant::UdsHop => ListenAddr::Unix(socket.clone()),
            _ => tcp0(),
        };
        if variant == Variant::MtlsHop {
            assert!(
                config.listen.tls.is_some(),
                "dev-pki's service-auth.yaml has no commented listen.tls block:\n{text}"
            );
        }
        let mut sidecar = Sidecar::spawn(&pki.write_config(&config), &[]);
        let listening = sidecar.listening().await;
        match variant {
            Variant::Loopback => sidecar.wait_serving().await,
            Variant::UdsHop => {
                assert_eq!(listening, ListenAddr::Unix(socket.clone()));
                poll("the sidecar's socket to serve", WAIT, || {
                    sidecar.assert_running();
                    let addr = listening.clone();
                    async move {
                        service_auth::health::probe(&addr, None, Duration::from_secs(1))
                            .await
                            .ok()
                    }
                })
                .await
            }
            Variant::MtlsHop => {
                let addr = sidecar.addr();
                poll("the sidecar's TLS listener to serve", WAIT, || {
                    sidecar.assert_running();
                    hop_health(&pki, addr, "certs/envoy-client")
                })
                .await
            }
        }

        let echo = Echo::start().await;
        // The Unix socket variant's sidecar cluster is a pipe (its path set
        // to `socket`): Envoy never dials a TCP address for it, so a loopback
        // port that refuses connections fills the field.
        let (_refusing, refusing) = refusing_addr();
        let ports = EnvoyPorts {
            sidecar: match variant {
                Variant::UdsHop => refusing,
                _ => sidecar.addr(),
            },
            app: echo.addr,
        };
        let text = envoy_config_variant(variant.file(), &ports, Some(&socket));
        let mut envoy_config: Value = serde_yaml::from_str(&text).unwrap();
        assert_only_addresses_differ(&shipped(variant.file()), &envoy_config, "");
        edit(&mut envoy_config);
        let envoy = Envoy::start(&pki.dir, &serde_yaml::to_string(&envoy_config).unwrap()).await;
        Stack {
            pki,
            sidecar,
            echo,
            envoy,
        }
    }

    /// A raw GET as `service`, with its own API key.
    async fn get(&self, service: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let key = self.pki.api_key(service);
        let mut all = vec![("x-api-key", key.as_str())];
        all.extend_from_slice(headers);
        self.get_without_key(service, path, &all).await
    }

    /// A raw GET over `service`'s mTLS connection, with only `headers`.
    async fn get_without_key(&self, service: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let tls = self.pki.rustls_client(
            "certs/ca.crt",
            &format!("clients/{service}.crt"),
            &format!("clients/{service}.key"),
        );
        raw_get(self.envoy.listener, tls, path, headers).await
    }

    /// A token the sidecar issued to `service` (for the verify route).
    async fn token_of(&self, service: &str) -> String {
        let reply = self.get(service, "/orders", &[]).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.upstream_one("x-service-jwt")
    }

    fn registry(&self) -> Registry {
        Registry::load(&self.pki.dir.join("registry.yaml"))
            .unwrap_or_else(|e| panic!("{:?}", e.iter().map(|e| e.to_string()).collect::<Vec<_>>()))
    }

    /// The claims of a token the upstream received, verified.
    fn claims(&self, jwt: &str) -> token::Claims {
        token::verify(&self.registry().token, jwt, unix_now())
            .expect("the upstream's token verifies")
            .claims
    }
}

/// `file` from `envoy/`, parsed.
fn shipped(file: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The config a test runs is the shipped one but for where things listen
/// and connect: `port_value`, `address` and a Unix socket's `path`.
fn assert_only_addresses_differ(shipped: &Value, run: &Value, at: &str) {
    match (shipped, run) {
        (Value::Mapping(a), Value::Mapping(b)) => {
            let keys = |m: &serde_yaml::Mapping| {
                let mut k: Vec<String> = m.keys().map(|k| k.as_str().unwrap().to_owned()).collect();
                k.sort();
                k
            };
            assert_eq!(keys(a), keys(b), "keys differ at {at}");
            for (k, v) in a {
                let k = k.as_str().unwrap();
                let path = format!("{at}.{k}");
                let in_pipe = at.ends_with(".pipe");
                if k == "port_value" || k == "address" || (in_pipe && k == "path") {
                    continue;
                }
                assert_only_addresses_differ(v, &b[k], &path);
            }
        }
        (Value::Sequence(a), Value::Sequence(b)) => {
            assert_eq!(a.len(), b.len(), "lengths differ at {at}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_only_addresses_differ(x, y, &format!("{at}[{i}]"));
            }
        }
        (a, b) => assert_eq!(a, b, "the test would not run the shipped value at {at}"),
    }
}

/// Serving, as a health check over the mTLS hop presenting `identity`
/// (`<path>` of a `.crt`/`.key` pair in the dev-pki dir) sees it: the
/// binary's own `health` probe, trusting the hop CA.
async fn hop_health(pki: &DevPki, addr: SocketAddr, identity: &str) -> Option<()> {
    let tls = service_auth::health::ProbeTls {
        cert: pki.dir.join(format!("{identity}.crt")),
        key: pki.dir.join(format!("{identity}.key")),
        ca: pki.dir.join("certs/hop-ca.crt"),
        server_name: Some("service-auth".into()),
    };
    service_auth::health::probe(&ListenAddr::Tcp(addr), Some(&tls), Duration::from_secs(5))
        .await
        .ok()
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 over mTLS
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    /// What the echo upstream received (`Null` if the request never got there).
    fn upstream(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Every value of `name` the upstream received.
    fn upstream_values(&self, name: &str) -> Vec<String> {
        self.upstream()[name]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    }

    /// The one value of `name` the upstream received.
    fn upstream_one(&self, name: &str) -> String {
        let values = self.upstream_values(name);
        assert_eq!(values.len(), 1, "upstream got {name} {values:?}: {self:?}");
        values[0].clone()
    }

    /// The path the upstream was asked for.
    fn upstream_path(&self) -> String {
        self.upstream_one(":path")
    }
}

/// Sends `GET <path>` byte for byte and reads the whole response.
async fn raw_get(
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to Envoy");
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, stream)
        .await
        .expect("mTLS handshake with Envoy");
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // Envoy closes after the response (`connection: close`); a TLS peer that
    // skips close_notify is the end of the response too.
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await;
    parse_response(&raw).unwrap_or_else(|| {
        panic!(
            "no HTTP response to GET {path}: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

fn parse_response(raw: &[u8]) -> Option<Reply> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Some(Reply { status, body })
}

fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------------------
// The bypasses, for every variant
// ---------------------------------------------------------------------------

/// Spellings of a scoped path and what `billing` must get: 403 is the scoped
/// route's own refusal (the sidecar judged the route's scope), 400 is Envoy
/// refusing a path it will not route.
const SCOPED_SPELLINGS: &[(&str, u16)] = &[
    ("/write/x", 403),
    ("//write/x", 403),
    ("/x/../write/x", 403),
    ("/WRITE/x", 403),
    ("/Write/X", 403),
    ("/write%2Fx", 400),
    ("/write%2fx", 400),
    ("/write%5Cx", 400),
    ("/%77rite/x", 403),
    ("/write", 403),
    ("/write?x=1", 403),
    ("/./write/x", 403),
    ("/write/./x", 403),
    ("/write\\x", 403),
    ("/write;x/y", 400),
    ("/internal/../write/x", 403),
    ("/admin", 403),
    ("/ADMIN/x", 403),
    ("//admin//x", 403),
];

/// Every bypass the issue lists, against `s`: refused, or stripped.
async fn assert_every_bypass_refused(s: &Stack) {
    for &(path, status) in SCOPED_SPELLINGS {
        let reply = s.get(BILLING, path, &[]).await;
        assert_eq!(reply.status, status, "billing GET {path:?}: {reply:?}");
        if status == 403 {
            assert_eq!(reply.body, r#"{"error":"forbidden"}"#, "{path:?}");
        }
    }
    assert_eq!(s.echo.hits(), 0, "a refused spelling reached the app");

    // Underscore copies of the headers service-auth sets or reads: a
    // framework that treats `_` as `-` would read them as the real ones.
    for (name, value) in [
        ("x_service_jwt", "FORGED"),
        ("x_service_id", API),
        ("x_api_key", "stolen"),
        ("x_auth_scope", "write"),
    ] {
        let reply = s.get(BILLING, "/orders", &[(name, value)]).await;
        assert_eq!(reply.status, 400, "{name}: {reply:?}");
    }
    let token = s.token_of(BILLING).await;
    let reply = s
        .get_without_key(
            BILLING,
            "/internal/x",
            &[("x-service-jwt", &token), ("x_service_id", API)],
        )
        .await;
    assert_eq!(
        reply.status, 400,
        "x_service_id on the verify route: {reply:?}"
    );
    assert_eq!(s.echo.hits(), 1, "only the token fetch reached the app");

    // On the verify route the caller's key and scope request stay in Envoy:
    // the app gets only the sidecar's x-service-id for the verified token.
    let key = s.pki.api_key(BILLING);
    let reply = s
        .get_without_key(
            BILLING,
            "/internal/x",
            &[
                ("x-service-jwt", &token),
                ("x-api-key", &key),
                ("x-auth-scope", "write admin"),
                ("x-service-id", API),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.upstream_one("x-service-id"), BILLING);
    assert_eq!(reply.upstream_values("x-api-key"), Vec::<String>::new());
    assert_eq!(reply.upstream_values("x-auth-scope"), Vec::<String>::new());

    // ...and on an issuing route too: the app reads scopes from the token.
    let reply = s.get(BILLING, "/orders", &[("x-auth-scope", "read")]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.upstream_values("x-auth-scope"), Vec::<String>::new());
    assert_eq!(reply.upstream_values("x-api-key"), Vec::<String>::new());
    assert_eq!(s.claims(&reply.upstream_one("x-service-jwt")).sub, BILLING);

    // More headers than max_headers_count: refused before any Check.
    let many: Vec<(String, String)> = (0..120).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let reply = s.get(BILLING, "/orders", &many).await;
    assert_eq!(reply.status, 431, "{reply:?}");
}

#[tokio::test]
async fn shipped_config_refuses_every_bypass() {
    let s = Stack::start(Variant::Loopback).await;
    assert_every_bypass_refused(&s).await;
}

#[tokio::test]
async fn mtls_hop_config_refuses_every_bypass() {
    let s = Stack::start(Variant::MtlsHop).await;
    assert_every_bypass_refused(&s).await;
}

#[tokio::test]
async fn uds_hop_config_refuses_every_bypass() {
    let s = Stack::start(Variant::UdsHop).await;
    assert_every_bypass_refused(&s).await;
}

/// The hop variants are envoy.yaml with another way to reach the sidecar:
/// so the bypass table above covers everything they share.
#[test]
fn hop_variants_differ_from_envoy_yaml_only_in_the_sidecar_cluster() {
    let base = shipped("envoy/envoy.yaml");
    for variant in [Variant::MtlsHop, Variant::UdsHop] {
        let mut hop = shipped(variant.file());
        let mut expected = base.clone();
        let cluster = |doc: &mut Value| -> Value {
            let clusters = doc["static_resources"]["clusters"]
                .as_sequence_mut()
                .unwrap();
            let at = clusters
                .iter()
                .position(|c| c["name"].as_str() == Some("service_auth"))
                .expect("service_auth cluster");
            clusters.remove(at)
        };
        let hop_cluster = cluster(&mut hop);
        cluster(&mut expected);
        assert_eq!(
            hop,
            expected,
            "{} differs outside its service_auth cluster",
            variant.file()
        );
        match variant {
            Variant::MtlsHop => {
                let tls = &hop_cluster["transport_socket"]["typed_config"]["common_tls_context"];
                assert_eq!(
                    tls["validation_context"]["trusted_ca"]["filename"].as_str(),
                    Some("certs/hop-ca.crt"),
                    "the mTLS hop must trust the hop CA, not the mesh CA"
                );
                assert_eq!(
                    tls["tls_certificates"][0]["certificate_chain"]["filename"].as_str(),
                    Some("certs/envoy-client.crt")
                );
            }
            _ => assert!(
                hop_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                    ["address"]["pipe"]["path"]
                    .is_string()
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// What the upstream sees, and what is logged
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_app_gets_the_path_the_route_was_chosen_on() {
    let s = Stack::start(Variant::Loopback).await;
    // As api_service (read write): each spelling of the write route is the
    // write route (a token scoped `write`), and the app is asked for the
    // normalised path, never the raw one the router did not see.
    for (sent, received) in [
        ("//write/x", "/write/x"),
        ("/x/../write/x", "/write/x"),
        ("/%77rite/x", "/write/x"),
        ("/./write/x", "/write/x"),
        ("/write/./x", "/write/x"),
        ("/write\\x", "/write/x"),
        ("/internal/../write/x", "/write/x"),
        ("/WRITE/x", "/WRITE/x"),
        ("/write", "/write"),
    ] {
        let reply = s.get(API, sent, &[]).await;
        assert_eq!(reply.status, 200, "{sent:?}: {reply:?}");
        assert_eq!(reply.upstream_path(), received, "{sent:?}");
        let claims = s.claims(&reply.upstream_one("x-service-jwt"));
        assert_eq!(claims.scope, "write", "{sent:?} was not the write route");
    }
    // Segment matching: `/writer` is not the write route.
    let reply = s.get(BILLING, "/writer", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(s.claims(&reply.upstream_one("x-service-jwt")).scope, "read");
}

/// The shipped stack with the shipped access log format written to
/// `access.log` in the dev-pki dir instead of stdout (the test helper
/// discards Envoy's stdout).
async fn with_file_access_log() -> Stack {
    Stack::start_with(Variant::Loopback, |config| {
        let log = &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"]["access_log"][0];
        assert_eq!(log["name"].as_str(), Some("envoy.access_loggers.stdout"));
        let format = log["typed_config"]["log_format"].clone();
        *log = serde_yaml::from_str(
            "name: envoy.access_loggers.file\ntyped_config:\n  \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n  path: access.log\n",
        )
        .unwrap();
        log["typed_config"]["log_format"] = format;
    })
    .await
}

impl Stack {
    /// The first `n` access log lines (see [`with_file_access_log`]).
    async fn access_log(&self, n: usize) -> Vec<serde_json::Value> {
        let path = self.pki.dir.join("access.log");
        poll("access log lines", WAIT, || {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            async move {
                let lines: Vec<serde_json::Value> = text
                    .lines()
                    .map(|l| serde_json::from_str(l).expect("a JSON log line"))
                    .collect();
                (lines.len() >= n).then_some(lines)
            }
        })
        .await
    }
}

#[tokio::test]
async fn a_client_sent_x_forwarded_for_is_not_the_callers_address() {
    let s = with_file_access_log().await;
    let forged = "203.0.113.77";
    let reply = s
        .get_without_key(
            BILLING,
            "/orders",
            &[("x-api-key", "wrong"), ("x-forwarded-for", forged)],
        )
        .await;
    assert_eq!(reply.status, 401);
    // The access log's caller is the TCP peer (use_remote_address)...
    let line = &s.access_log(1).await[0];
    let downstream = line["downstream"].as_str().unwrap();
    assert!(downstream.starts_with("127.0.0.1:"), "{line}");
    // ...and so is the Check's source address, which the sidecar logs with
    // each denial and keys its throttle on.
    let log = poll("the sidecar to log the denial", WAIT, || {
        let text = s.sidecar.log_text();
        async move { text.contains("check_denied").then_some(text) }
    })
    .await;
    let denial: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| v["event"] == "check_denied")
        .unwrap();
    assert_eq!(denial["peer_address"], "127.0.0.1", "{denial}");
    assert!(
        !log.contains(forged),
        "the forged address reached the sidecar"
    );
}

#[tokio::test]
async fn access_log_records_caller_route_and_decision() {
    let s = with_file_access_log().await;
    let allowed = s.get(BILLING, "/orders", &[]).await;
    assert_eq!(allowed.status, 200);
    let claims = s.claims(&allowed.upstream_one("x-service-jwt"));
    assert_eq!(s.get(BILLING, "/write/x", &[]).await.status, 403);

    let lines = s.access_log(2).await;
    let billing_san = "spiffe://mesh.local/ns/default/sa/billing";
    let ok = &lines[0];
    assert_eq!(ok["status"], 200, "{ok}");
    assert_eq!(ok["route"], "default");
    assert_eq!(ok["peer_uri_san"], billing_san);
    assert_eq!(ok["service"], BILLING);
    assert_eq!(ok["jti"], claims.jti.as_str());
    assert!(ok["kid"].as_str().is_some_and(|k| !k.is_empty()), "{ok}");
    let denied = &lines[1];
    assert_eq!(denied["status"], 403, "{denied}");
    assert_eq!(denied["route"], "write");
    assert_eq!(denied["peer_uri_san"], billing_san);
    assert_eq!(denied["reason"], "scope_not_allowed");
    // Never a credential.
    let all = std::fs::read_to_string(s.pki.dir.join("access.log")).unwrap();
    assert!(
        !all.contains(&s.pki.api_key(BILLING)),
        "the API key was logged"
    );
    assert!(!all.contains("eyJ"), "a token was logged");
}

// ---------------------------------------------------------------------------
// The sidecar's answer, not the strip filters, replaces client-sent copies
// ---------------------------------------------------------------------------

/// Removes the HTTP filter `name` (and any per-route setting for it).
fn without_filter(config: &mut Value, name: &str) {
    let hcm = &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let filters = hcm["http_filters"].as_sequence_mut().unwrap();
    let before = filters.len();
    filters.retain(|f| f["name"].as_str() != Some(name));
    assert_eq!(filters.len(), before - 1, "no filter {name} to remove");
    for vhost in hcm["route_config"]["virtual_hosts"]
        .as_sequence_mut()
        .unwrap()
    {
        for route in vhost["routes"].as_sequence_mut().unwrap() {
            if let Some(per_filter) = route
                .get_mut("typed_per_filter_config")
                .and_then(Value::as_mapping_mut)
            {
                per_filter.remove(name);
            }
        }
    }
}

#[tokio::test]
async fn without_the_strip_filters_the_sidecar_still_leaves_exactly_one_token_and_service_id() {
    let s = Stack::start_with(Variant::Loopback, |config| {
        without_filter(config, "strip_client_token");
        without_filter(config, "strip_client_service_id");
    })
    .await;
    // A forged token next to a real key: the sidecar's header overwrites it
    // (append: false + OVERWRITE_IF_EXISTS_OR_ADD), leaving one, its own.
    let reply = s
        .get(BILLING, "/orders", &[("x-service-jwt", "FORGED")])
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let jwt = reply.upstream_one("x-service-jwt");
    assert_eq!(s.claims(&jwt).sub, BILLING);

    // A forged x-service-id on the verify route: replaced by the token's subject.
    let reply = s
        .get_without_key(
            BILLING,
            "/internal/x",
            &[("x-service-jwt", &jwt), ("x-service-id", API)],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.upstream_values("x-service-id"),
        vec![BILLING.to_owned()]
    );
}

// ---------------------------------------------------------------------------
// What the sidecar is sent and may change: a fake sidecar records it
// ---------------------------------------------------------------------------

/// What the fake sidecar answers OK with, and the header maps it was sent.
#[derive(Default)]
struct FakeState {
    seen: Vec<HashMap<String, String>>,
    set: Vec<(String, String)>,
    remove: Vec<String>,
    /// Headers for the caller's response (`response_headers_to_add`).
    respond: Vec<(String, String)>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<FakeState>>);

#[tonic::async_trait]
impl Authorization for Fake {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let mut state = self.0.lock().unwrap();
        let headers = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .map(|h| h.headers.clone())
            .unwrap_or_default();
        state.seen.push(headers);
        Ok(tonic::Response::new(CheckResponse {
            status: Some(Default::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: overwrite(&state.set),
                headers_to_remove: state.remove.clone(),
                response_headers_to_add: overwrite(&state.respond),
                ..Default::default()
            })),
            ..Default::default()
        }))
    }
}

/// Header options that replace any existing value, as the real sidecar sends them.
#[allow(deprecated)] // `append: false`, still needed: see src/server.rs
fn overwrite(headers: &[(String, String)]) -> Vec<HeaderValueOption> {
    headers
        .iter()
        .map(|(k, v)| HeaderValueOption {
            header: Some(HeaderValue {
                key: k.clone(),
                value: v.clone(),
                ..Default::default()
            }),
            append: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        })
        .collect()
}

/// The shipped envoy.yaml in front of a fake sidecar and the echo upstream.
struct FakeStack {
    pki: DevPki,
    fake: Fake,
    echo: Echo,
    envoy: Envoy,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeStack {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeStack {
    async fn start() -> FakeStack {
        let pki = DevPki::generate();
        let fake = Fake::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = AuthorizationServer::new(fake.clone());
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        let echo = Echo::start().await;
        let envoy = Envoy::shipped(&pki.dir, addr, echo.addr).await;
        FakeStack {
            pki,
            fake,
            echo,
            envoy,
            server,
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let tls =
            self.pki
                .rustls_client("certs/ca.crt", "clients/billing.crt", "clients/billing.key");
        raw_get(self.envoy.listener, tls, path, headers).await
    }
}

#[tokio::test]
async fn the_sidecar_is_sent_only_the_headers_the_decision_reads() {
    let s = FakeStack::start().await;
    let sent = [
        ("x-api-key", "k"),
        ("x-auth-scope", "read"),
        ("authorization", "Bearer t"),
        ("cookie", "session=secret"),
        ("x-custom", "1"),
        ("user-agent", "attacker"),
    ];
    assert_eq!(s.get("/orders", &sent).await.status, 200);
    assert_eq!(
        s.get(
            "/internal/x",
            &[("x-service-jwt", "t"), ("cookie", "session=secret")]
        )
        .await
        .status,
        200
    );
    let seen = std::mem::take(&mut s.fake.0.lock().unwrap().seen);
    assert_eq!(seen.len(), 2);
    let allowed = [
        "x-api-key",
        "x-auth-scope",
        "x-service-jwt",
        "authorization",
    ];
    for headers in &seen {
        for name in headers.keys() {
            assert!(
                name.starts_with(':') || allowed.contains(&name.as_str()),
                "the sidecar was sent {name}: {headers:?}"
            );
        }
    }
    for name in ["x-api-key", "x-auth-scope", "authorization"] {
        assert!(seen[0].contains_key(name), "{name} not sent: {:?}", seen[0]);
    }
    assert_eq!(seen[1].get("x-service-jwt").map(String::as_str), Some("t"));
    // The app still gets what is not a credential.
    assert_eq!(s.echo.hits(), 2);
}

#[tokio::test]
async fn the_sidecar_may_change_only_its_own_headers() {
    let s = FakeStack::start().await;
    let answer = |set: &[(&str, &str)], remove: &[&str]| {
        let mut state = s.fake.0.lock().unwrap();
        state.set = set
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        state.remove = remove.iter().map(|r| (*r).into()).collect();
    };

    // Its own three headers: applied.
    answer(
        &[("x-service-jwt", "t"), ("x-service-id", "s")],
        &["x-api-key"],
    );
    let reply = s.get("/orders", &[("x-api-key", "k")]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.upstream_one("x-service-jwt"), "t");
    assert_eq!(reply.upstream_one("x-service-id"), "s");
    assert_eq!(reply.upstream_values("x-api-key"), Vec::<String>::new());
    let hits = s.echo.hits();

    // Anything else fails the request instead of reaching the app.
    for (set, remove) in [
        (vec![("x-evil", "1")], vec![]),
        (vec![("host", "elsewhere")], vec![]),
        (vec![(":path", "/admin/x")], vec![]),
        (vec![("x-envoy-original-path", "/x")], vec![]),
        (vec![("x-service-jwt", "t")], vec!["x-forwarded-proto"]),
        (vec![("x-service-jwt", "t")], vec!["cookie"]),
    ] {
        answer(&set, &remove);
        let reply = s.get("/orders", &[("cookie", "c")]).await;
        assert_eq!(
            reply.status, 500,
            "set {set:?} remove {remove:?}: {reply:?}"
        );
    }
    // A value that is not a valid header value is refused too, for the
    // upstream request and for the caller's response alike.
    answer(&[("x-service-jwt", "a\r\nx-evil: 1")], &[]);
    assert_eq!(s.get("/orders", &[]).await.status, 500);
    answer(&[], &[]);
    s.fake.0.lock().unwrap().respond = vec![("x-note".into(), "a\r\nset-cookie: x=1".into())];
    assert_eq!(s.get("/orders", &[]).await.status, 500);
    assert_eq!(s.echo.hits(), hits, "a refused mutation reached the app");
}

// ---------------------------------------------------------------------------
// The mTLS hop: its own CA
// ---------------------------------------------------------------------------

#[tokio::test]
async fn mtls_hop_admits_only_envoys_certificate_from_the_hop_ca() {
    let s = Stack::start(Variant::MtlsHop).await;
    let addr = s.sidecar.addr();
    assert!(
        hop_health(&s.pki, addr, "certs/envoy-client")
            .await
            .is_some()
    );
    // Every mesh workload's certificate comes from the mesh CA: none of them
    // opens the hop, however valid it is for Envoy's listener.
    for workload in ["clients/billing", "clients/api_service", "certs/envoy"] {
        assert!(
            hop_health(&s.pki, addr, workload).await.is_none(),
            "{workload} (mesh CA) got through the hop"
        );
    }
    // And through Envoy the hop works.
    assert_eq!(s.get(BILLING, "/orders", &[]).await.status, 200);
}

/// Where the dev-pki output puts the hop's files (a guard against the
/// configs and the generator drifting apart).
#[test]
fn hop_files_named_by_the_configs_are_what_dev_pki_writes() {
    let pki = DevPki::generate();
    for file in [
        "certs/hop-ca.crt",
        "certs/envoy-client.crt",
        "certs/envoy-client.key",
        "sidecar/sidecar.crt",
        "sidecar/sidecar.key",
    ] {
        assert!(pki.dir.join(file).is_file(), "dev-pki wrote no {file}");
    }
    let config = pki.parse_config(&uncomment_listen_tls(&pki.read("service-auth.yaml")));
    let tls = config.listen.tls.expect("listen.tls");
    for (key, value, file) in [
        ("cert", &tls.cert, "sidecar/sidecar.crt"),
        ("key", &tls.key, "sidecar/sidecar.key"),
        ("client_ca", &tls.client_ca, "certs/hop-ca.crt"),
    ] {
        assert_eq!(value, Path::new(file), "listen.tls.{key}");
    }
    assert_ne!(pki.read("certs/hop-ca.crt"), pki.read("certs/ca.crt"));
    assert!(pki.dir.join("ca/hop-ca.key").is_file());
}

// ---------------------------------------------------------------------------
// Settings no request can show
// ---------------------------------------------------------------------------

/// Limits that only bite under load or over time: present in every variant
/// with the values docs/envoy-hardening.md explains.
#[test]
fn load_and_time_limits_are_set_in_every_variant() {
    for variant in [Variant::Loopback, Variant::MtlsHop, Variant::UdsHop] {
        let config = shipped(variant.file());
        let file = variant.file();
        let monitors = config["overload_manager"]["resource_monitors"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{file}: no overload manager"));
        let connections = monitors
            .iter()
            .find(|m| {
                m["name"].as_str()
                    == Some("envoy.resource_monitors.global_downstream_max_connections")
            })
            .unwrap_or_else(|| panic!("{file}: no global downstream connection limit"));
        assert!(
            connections["typed_config"]["max_active_downstream_connections"]
                .as_u64()
                .is_some_and(|n| n > 0)
        );

        let listener = &config["static_resources"]["listeners"][0];
        assert!(
            listener["per_connection_buffer_limit_bytes"]
                .as_u64()
                .is_some(),
            "{file}"
        );
        let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
        for timeout in ["request_headers_timeout", "stream_idle_timeout"] {
            assert!(hcm[timeout].as_str().is_some(), "{file}: no {timeout}");
        }
        let common = &hcm["common_http_protocol_options"];
        assert!(common["max_headers_count"].as_u64().is_some(), "{file}");
        assert!(common["idle_timeout"].as_str().is_some(), "{file}");
        let h2 = &hcm["http2_protocol_options"];
        assert_eq!(h2["max_concurrent_streams"].as_u64(), Some(100), "{file}");

        let sidecar = config["static_resources"]["clusters"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|c| c["name"].as_str() == Some("service_auth"))
            .unwrap();
        let thresholds = &sidecar["circuit_breakers"]["thresholds"][0];
        for limit in ["max_connections", "max_pending_requests", "max_requests"] {
            assert!(thresholds[limit].as_u64().is_some(), "{file}: no {limit}");
        }
        assert_eq!(
            thresholds["track_remaining"].as_bool(),
            Some(true),
            "{file}"
        );

        let ext_authz = hcm["http_filters"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|f| f["name"].as_str() == Some("envoy.filters.http.ext_authz"))
            .unwrap();
        assert_eq!(
            ext_authz["typed_config"]["failure_mode_allow"].as_bool(),
            Some(false)
        );
    }
}
