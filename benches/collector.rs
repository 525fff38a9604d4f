//! What an unreachable OTLP collector costs the release binary: Check
//! latency against a sidecar without telemetry, RSS across 30,000 Checks,
//! and how long SIGTERM takes with a dead (port closed) and a hanging
//! (accepts, never answers) collector. `tests/telemetry.rs` asserts the
//! behaviour (answers, exits 0); the figures and their goals live here.
//!
//!   cargo bench --bench collector
//!
//! Prints one line per figure with its goal and exits non-zero if a goal is
//! missed. `cargo test --all-targets` builds and starts this binary without
//! `--bench`; it then does nothing. Traffic goes to 127.0.0.1 only.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::procs::{Sidecar, refusing_addr};
use common::{Fixture, Req, Svc, tcp0};
use service_auth::config::{Otlp, OtlpProtocol, StaticConfig};

const A_URI: &str = "spiffe://bench.test/sa/a";
const B_URI: &str = "spiffe://bench.test/sa/b";
const A_KEY: &str = "bench-key-a-0123456789";
const B_KEY: &str = "bench-key-b-0123456789";
/// Goals (what the old timing assertions demanded).
const RSS_GROWTH_GOAL_KIB: u64 = 30 * 1024;
const LATENCY_FACTOR_GOAL: u32 = 3;
const LATENCY_SLACK_GOAL: Duration = Duration::from_millis(2);
const SHUTDOWN_GOAL: Duration = Duration::from_secs(8);

/// Principal-only callers: identity is not what is measured.
fn fixture() -> Fixture {
    let services = [Svc::new("a", A_URI, A_KEY), Svc::new("b", B_URI, B_KEY)];
    let fixture = Fixture::new(&services);
    let mut file = fixture.registry_file(&services);
    file.identity.require_certificate = false;
    fixture.write(&file);
    fixture
}

fn exporting(fixture: &Fixture, endpoint: &str, protocol: OtlpProtocol) -> StaticConfig {
    let mut config = fixture.static_config(tcp0());
    config.telemetry.otlp = Some(Otlp {
        endpoint: Some(endpoint.into()),
        protocol: Some(protocol),
        interval: Some(Duration::from_millis(200)),
    });
    config
}

async fn start(fixture: &Fixture, config: &StaticConfig) -> Sidecar {
    Sidecar::start(&fixture.write_config(config)).await
}

/// `n` Checks, `tasks` at a time: allowed, wrong key, random unknown caller.
async fn burst(sidecar: &Sidecar, n: usize, tasks: usize) {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let mut client = sidecar.client().await;
        handles.push(tokio::spawn(async move {
            for i in (t..n).step_by(tasks) {
                let req = match i % 3 {
                    0 => Req::principal(A_URI).key(A_KEY),
                    1 => Req::principal(B_URI).key("wrong-key"),
                    _ => Req::principal(&format!("spiffe://random/{}", rand::random::<u64>()))
                        .key(A_KEY),
                };
                client.check(req.build()).await.expect("a Check answer");
            }
        }));
    }
    for h in handles {
        h.await.expect("a burst task");
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in KiB")
}

/// Median wall time of `n` sequential allowed Checks, after a warm-up.
async fn median_latency(sidecar: &Sidecar, n: usize) -> Duration {
    let mut client = sidecar.client().await;
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let started = Instant::now();
        client
            .check(Req::principal(A_URI).key(A_KEY).build())
            .await
            .expect("a Check answer");
        if i >= 50 {
            times.push(started.elapsed());
        }
    }
    times.sort();
    times[n / 2]
}

/// SIGTERM, then the time until the process has exited (and its status).
async fn shutdown(sidecar: Sidecar) -> (Duration, bool) {
    let started = Instant::now();
    sidecar.signal_term();
    let status = sidecar.wait_exit(Duration::from_secs(120)).await;
    (started.elapsed(), status.success())
}

struct Report {
    missed: usize,
}

impl Report {
    fn line(&mut self, what: &str, figure: String, goal: String, met: bool) {
        let verdict = if met { "ok" } else { "MISSED" };
        println!("{what:<52} {figure:>14}   goal {goal:<22} {verdict}");
        if !met {
            self.missed += 1;
        }
    }
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mut report = Report { missed: 0 };

    let plain_fixture = fixture();
    let plain = start(&plain_fixture, &plain_fixture.static_config(tcp0())).await;
    let normal = median_latency(&plain, 300).await;
    drop(plain);

    let dead_fixture = fixture();
    let (_closed_port, closed) = refusing_addr();
    let dead = start(
        &dead_fixture,
        &exporting(
            &dead_fixture,
            &format!("http://{closed}"),
            OtlpProtocol::Grpc,
        ),
    )
    .await;
    burst(&dead, 3_000, 4).await;
    let before = rss_kib(dead.pid());
    burst(&dead, 30_000, 8).await;
    let after = rss_kib(dead.pid());
    let degraded = median_latency(&dead, 300).await;
    let (took, clean) = shutdown(dead).await;

    report.line(
        "median Check latency, no telemetry",
        format!("{normal:.2?}"),
        "-".into(),
        true,
    );
    let latency_goal = normal * LATENCY_FACTOR_GOAL + LATENCY_SLACK_GOAL;
    report.line(
        "median Check latency, dead collector",
        format!("{degraded:.2?}"),
        format!("< {latency_goal:.2?}"),
        degraded < latency_goal,
    );
    let growth = after.saturating_sub(before);
    report.line(
        "RSS growth over 30,000 Checks, dead collector",
        format!("{growth} KiB"),
        format!("< {RSS_GROWTH_GOAL_KIB} KiB"),
        growth < RSS_GROWTH_GOAL_KIB,
    );
    println!("  (RSS {before} KiB after 3,000 Checks, {after} KiB after 33,000)");
    report.line(
        "SIGTERM to exit, dead collector",
        format!("{took:.2?}"),
        format!("< {SHUTDOWN_GOAL:?}, exit 0"),
        clean && took < SHUTDOWN_GOAL,
    );

    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the black hole");
    let endpoint = format!(
        "http://{}",
        blackhole.local_addr().expect("the black hole's address")
    );
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = blackhole.accept().await {
            held.push(stream);
        }
    });
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let fixture = fixture();
        let sidecar = start(&fixture, &exporting(&fixture, &endpoint, protocol)).await;
        burst(&sidecar, 600, 2).await;
        let (took, clean) = shutdown(sidecar).await;
        report.line(
            &format!("SIGTERM to exit, hanging collector ({protocol:?})"),
            format!("{took:.2?}"),
            format!("< {SHUTDOWN_GOAL:?}, exit 0"),
            clean && took < SHUTDOWN_GOAL,
        );
    }
    holder.abort();

    if report.missed > 0 {
        eprintln!("{} goal(s) missed", report.missed);
        std::process::exit(1);
    }
}
