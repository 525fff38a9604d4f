//! Soak test: mixed allowed/denied traffic through a real Envoy (the shipped
//! `envoy/envoy.yaml`) and the release binary, while the registry is
//! rewritten every 100 ms and the OTLP collector is killed and restarted.
//! Reports, per interval, requests, unexpected outcomes, latency percentiles
//! and the sidecar's RSS; exits non-zero on any unexpected outcome or on RSS
//! growth after warm-up.
//!
//! Run it with `benches/soak.sh` (which calls `cargo bench --bench soak`).
//! `cargo test --all-targets` also builds and starts this binary, without
//! `--bench`; it then does nothing, because a soak is not a unit test.
//!
//! Knobs (environment): SOAK_SECONDS (600), SOAK_RPS (200), SOAK_CLIENTS (4),
//! SOAK_REPORT_SECONDS (60), SOAK_COLLECTOR (a shell command with `{port}`;
//! default: a Python TCP sink that reads and discards), SOAK_COLLECTOR_UP /
//! SOAK_COLLECTOR_DOWN (seconds the collector lives / stays dead: 10 / 3).
//! All traffic goes to 127.0.0.1.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::procs::{Echo, Envoy, Sidecar};
use common::{Ca, ClientSpec, Fixture, Svc, tcp0};
use service_auth::config::{Otlp, OtlpProtocol};
use service_auth::testkit::Memory;
use tokio::sync::Mutex;

const A_URI: &str = "spiffe://soak.test/sa/a";
const B_URI: &str = "spiffe://soak.test/sa/b";
const C_URI: &str = "spiffe://soak.test/sa/churn";
const A_KEY: &str = "soak-key-a-0123456789";
const B_KEY: &str = "soak-key-b-0123456789";
const C_KEY: &str = "soak-key-churn-0123456789";

const DEFAULT_COLLECTOR: &str = r#"exec python3 -c '
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(64)
def drain(c):
    while c.recv(65536): pass
while True:
    c, _ = s.accept(); threading.Thread(target=drain, args=(c,), daemon=True).start()
' {port}"#;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One kind of request in the mix and the status it must get.
struct Case {
    path: &'static str,
    key: Option<&'static str>,
    expect: u16,
}

const fn case(path: &'static str, key: Option<&'static str>, expect: u16) -> Case {
    Case { path, key, expect }
}

const ALLOWED: Case = case("/orders", Some(A_KEY), 200);

/// Six in ten allowed; the rest denied in four different ways.
const MIX: [Case; 10] = [
    ALLOWED,
    ALLOWED,
    ALLOWED,
    ALLOWED,
    case("/write/x", Some(A_KEY), 200),
    ALLOWED,
    // Another service's key: identity mismatch.
    case("/orders", Some(B_KEY), 401),
    case("/orders", None, 401),
    case("/admin/x", Some(A_KEY), 403),
    // The churning service's key: unknown or mismatched, never allowed.
    case("/orders", Some(C_KEY), 401),
];

#[derive(Default)]
struct Interval {
    requests: u64,
    unexpected: u64,
    latencies_us: Vec<u32>,
    rss_kib: Vec<u64>,
}

fn rss_kib(pid: u32) -> Option<u64> {
    Memory::of(&pid.to_string()).map(|m| m.rss_kib)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// A port for the stand-in collector, which this benchmark kills and
/// restarts on the same port (so it cannot be bound to port 0 each time).
/// Bound and released once; a benchmark, not a test, so the small race is
/// acceptable.
fn collector_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port for the collector")
}

fn start_collector(command: &str, port: u16) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(command.replace("{port}", &port.to_string()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the collector")
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("soak: not a unit test; run benches/soak.sh");
        return;
    }
    let seconds = env_u64("SOAK_SECONDS", 600);
    let rps = env_u64("SOAK_RPS", 200).max(1);
    let clients = env_u64("SOAK_CLIENTS", 4).max(1);
    let report = env_u64("SOAK_REPORT_SECONDS", 60).max(1);
    let collector_up = Duration::from_secs(env_u64("SOAK_COLLECTOR_UP", 10));
    let collector_down = Duration::from_secs(env_u64("SOAK_COLLECTOR_DOWN", 3));
    let collector_cmd =
        std::env::var("SOAK_COLLECTOR").unwrap_or_else(|_| DEFAULT_COLLECTOR.to_owned());

    // The mesh: two stable services and one that the rewriter adds and removes.
    let stable = vec![Svc::new("a", A_URI, A_KEY), Svc::new("b", B_URI, B_KEY)];
    let fixture = Fixture::new(&stable);
    let collector_port = collector_port();
    let mut config = fixture.static_config(tcp0());
    config.telemetry.otlp = Some(Otlp {
        endpoint: Some(format!("http://127.0.0.1:{collector_port}")),
        protocol: Some(OtlpProtocol::Grpc),
        interval: Some(Duration::from_secs(1)),
    });
    let config = fixture.write_config(&config);
    let mut collector = start_collector(&collector_cmd, collector_port);
    let sidecar = Sidecar::start(&config).await;
    let echo = Echo::start().await;
    let ca = Ca::new("soak CA");
    common::write_envoy_certs(&ca, fixture.path());
    let _envoy = Envoy::shipped(fixture.path(), sidecar.addr(), echo.addr).await;
    let cert = ca.client(&ClientSpec::uri(A_URI));
    let http = common::https_client(&ca, &cert);
    let base = _envoy.base_url();

    println!(
        "soak: {seconds} s, {rps} req/s over {clients} clients, registry rewritten every 100 ms, \
         collector up {collector_up:?} / down {collector_down:?}; sidecar pid {}",
        sidecar.pid()
    );
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let buckets = (seconds.div_ceil(report)) as usize;
    let stats = Arc::new(Mutex::new(
        (0..buckets)
            .map(|_| Interval::default())
            .collect::<Vec<_>>(),
    ));
    let bucket =
        move |t: Instant| ((t - start).as_secs() / report).min(buckets as u64 - 1) as usize;
    let done = Arc::new(AtomicBool::new(false));
    let unexpected_total = Arc::new(AtomicU64::new(0));

    // Registry rewriter: the churn service and a second key for `a` come and
    // go; writes alternate between atomic renames and in-place rewrites.
    let rewriter = {
        let (dir, done) = (fixture.path().to_path_buf(), done.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut n = 0u64;
            let mut writes = 0u64;
            while !done.load(Ordering::SeqCst) {
                tick.tick().await;
                n += 1;
                let mut services = stable.clone();
                if n.is_multiple_of(2) {
                    services.push(Svc::new("churn", C_URI, C_KEY));
                }
                if n.is_multiple_of(3) {
                    services[0].keys.push((
                        "rotated".into(),
                        format!("rotated-{n}-0123456789"),
                        None,
                    ));
                }
                let text = serde_yaml::to_string(&common::registry_file(&services)).unwrap();
                let target = dir.join("registry.yaml");
                if n.is_multiple_of(2) {
                    let tmp = dir.join(".registry.yaml.tmp");
                    std::fs::write(&tmp, text).unwrap();
                    std::fs::rename(&tmp, &target).unwrap();
                } else {
                    std::fs::write(&target, text).unwrap();
                }
                writes += 1;
            }
            writes
        })
    };

    // Collector killer: SIGKILL the collector we started, restart it later.
    let killer = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut restarts = 0u64;
            while !done.load(Ordering::SeqCst) {
                tokio::time::sleep(collector_up).await;
                let _ = collector.kill();
                let _ = collector.wait();
                tokio::time::sleep(collector_down).await;
                collector = start_collector(&collector_cmd, collector_port);
                restarts += 1;
            }
            let _ = collector.kill();
            let _ = collector.wait();
            restarts
        })
    };

    // RSS sampler.
    let sampler = {
        let (stats, done, pid) = (stats.clone(), done.clone(), sidecar.pid());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            while !done.load(Ordering::SeqCst) {
                tick.tick().await;
                if let Some(kib) = rss_kib(pid) {
                    stats.lock().await[bucket(Instant::now())].rss_kib.push(kib);
                }
            }
        })
    };

    // Load: each client paces itself to rps / clients.
    let mut load = Vec::new();
    for c in 0..clients {
        let (http, base, stats, unexpected_total) = (
            http.clone(),
            base.clone(),
            stats.clone(),
            unexpected_total.clone(),
        );
        let period = Duration::from_secs_f64(clients as f64 / rps as f64);
        load.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = c as usize;
            while Instant::now() < deadline {
                tick.tick().await;
                let case = &MIX[i % MIX.len()];
                i += 1;
                let mut req = http.get(format!("{base}{}", case.path));
                if let Some(key) = case.key {
                    req = req.header("x-api-key", key);
                }
                let sent = Instant::now();
                let status = match req.send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let body = resp.text().await.unwrap_or_default();
                        // An allowed call must reach the upstream with exactly one
                        // token (the echo upstream returns the headers it got).
                        let tokens = serde_json::from_str::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|h| h["x-service-jwt"].as_array().map(Vec::len));
                        if status == 200 && tokens != Some(1) {
                            0
                        } else {
                            status
                        }
                    }
                    Err(_) => 0,
                };
                let elapsed = sent.elapsed();
                let mut stats = stats.lock().await;
                let interval = &mut stats[bucket(sent)];
                interval.requests += 1;
                interval.latencies_us.push(elapsed.as_micros() as u32);
                if status != case.expect {
                    interval.unexpected += 1;
                    if unexpected_total.fetch_add(1, Ordering::SeqCst) < 20 {
                        eprintln!(
                            "unexpected: {} key {:?} -> {status} (want {})",
                            case.path, case.key, case.expect
                        );
                    }
                }
            }
        }));
    }
    for task in load {
        task.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let writes = rewriter.await.unwrap();
    let restarts = killer.await.unwrap();
    sampler.await.unwrap();

    let mut stats = stats.lock().await;
    println!(
        "\n{:>9} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>12}",
        "interval", "requests", "unexpected", "p50 ms", "p90 ms", "p99 ms", "max ms", "sidecar RSS"
    );
    for (i, s) in stats.iter_mut().enumerate() {
        s.latencies_us.sort_unstable();
        let rss = s
            .rss_kib
            .last()
            .map_or("-".into(), |k| format!("{:.1} MiB", *k as f64 / 1024.0));
        println!(
            "{:>8}s {:>9} {:>10} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>12}",
            (i as u64 + 1) * report,
            s.requests,
            s.unexpected,
            percentile(&s.latencies_us, 0.50),
            percentile(&s.latencies_us, 0.90),
            percentile(&s.latencies_us, 0.99),
            percentile(&s.latencies_us, 1.0),
            rss
        );
    }
    let total: u64 = stats.iter().map(|s| s.requests).sum();
    let unexpected = unexpected_total.load(Ordering::SeqCst);
    // RSS is flat when, after the first interval (warm-up), it grows by no
    // more than 10 % + 4 MiB.
    let after_warmup = stats
        .get(1.min(stats.len() - 1))
        .and_then(|s| s.rss_kib.first().copied());
    let peak_late = stats.iter().skip(1).flat_map(|s| &s.rss_kib).max().copied();
    let flat = match (after_warmup, peak_late) {
        (Some(base), Some(peak)) => peak <= base + base / 10 + 4096,
        _ => false,
    };
    println!(
        "\ntotal {total} requests, {unexpected} unexpected; {writes} registry writes; \
         {restarts} collector restarts; RSS after warm-up {} KiB, peak later {} KiB: {}",
        after_warmup.unwrap_or(0),
        peak_late.unwrap_or(0),
        if flat { "flat" } else { "GROWING" }
    );
    drop(sidecar);
    if unexpected > 0 || !flat || total == 0 {
        println!("soak: FAILED");
        std::process::exit(1);
    }
    println!("soak: OK");
}
