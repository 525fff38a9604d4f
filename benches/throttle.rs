//! Failed-authentication throttling under a flood, against the release
//! binary over gRPC. Reports
//!
//! * the cost of naming a caller by its certificate (the SHA-256 the
//!   throttle keys on, taken before any decision), per Check;
//! * the sidecar's RSS before and after 1,000,000 distinct failing sources
//!   (one failed Check each, from distinct IPv4 addresses), with the default
//!   `max_tracked` (100,000) and with `max_tracked: 1000000`;
//! * a legitimate caller's latency (p50, p99, max; paced, sequential)
//!   while nothing else runs, while a paced flood of new failing sources
//!   runs, and while a paced flood of already-throttled callers runs; and,
//!   for comparison, the first flood against a sidecar without `throttle`.
//!
//! Run: `cargo bench --bench throttle`. Knobs (environment): SOURCES
//! (1000000), LEGIT_RPS (200), FLOOD_RPS (2000), SECONDS (10) per latency
//! run, ROUNDS (3) of interleaved latency runs, CONCURRENCY (64) for the
//! memory flood, MEMORY (1; 0 skips the memory floods). `cargo test --all-targets`
//! builds and starts this binary without `--bench`; it then does nothing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::procs::Sidecar;
use common::{Ca, ClientSpec, Fixture, Req, Svc, tcp0};
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use service_auth::config::ThrottleSection;
use service_auth::identity::PeerCertificate;
use service_auth::testkit::Memory;
use tonic::transport::Channel;

const A_URI: &str = "spiffe://mesh.bench/a";
const A_KEY: &str = "key-of-a-0123456789";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `VmRSS` and `VmHWM` of `pid`, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let m = Memory::of(&pid.to_string()).expect("read /proc/PID/status");
    (m.rss_mib(), m.peak_mib())
}

/// A registry with service `a` (callers present a certificate) that also
/// accepts principal-only callers, so a flood needs no certificates;
/// `max_tracked: None` turns the throttle off.
fn fixture(max_tracked: Option<usize>) -> Fixture {
    let services = [Svc::new("a", A_URI, A_KEY)];
    let f = Fixture::new(&services);
    let mut file = f.registry_file(&services);
    file.identity.require_certificate = false;
    file.throttle = max_tracked.map(|max_tracked| ThrottleSection {
        failures: 5,
        window: Duration::from_secs(600),
        max_tracked,
    });
    f.write(&file);
    f
}

async fn start(f: &Fixture) -> Sidecar {
    Sidecar::start(&f.write_config(&f.static_config(tcp0()))).await
}

/// Failing source `i`: a wrong API key from IPv4 address 10.0.0.0 + i.
fn failing(i: u32) -> CheckRequest {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + i);
    Req::principal(A_URI)
        .from_address(&ip.to_string())
        .key("wrong-key-0123456789")
        .build()
}

fn allowed(resp: &CheckResponse) -> bool {
    matches!(resp.http_response, Some(HttpResponse::OkResponse(_)))
}

fn status_of(resp: &CheckResponse) -> i32 {
    match &resp.http_response {
        Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().map_or(0, |s| s.code),
        _ => 200,
    }
}

async fn clients(sidecar: &Sidecar, n: usize) -> Vec<AuthorizationClient<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(sidecar.client().await);
    }
    out
}

/// Sends `failing(0..sources)` with `concurrency` in flight; returns the
/// rate achieved.
async fn flood_distinct(sidecar: &Sidecar, sources: u32, concurrency: u32) -> f64 {
    let channels = clients(sidecar, 4).await;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let mut client = channels[w as usize % channels.len()].clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= u64::from(sources) {
                    return;
                }
                let resp = client.check(failing(i as u32)).await.unwrap().into_inner();
                assert_eq!(status_of(&resp), 401, "a new source fails, unthrottled");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    f64::from(sources) / started.elapsed().as_secs_f64()
}

/// Latency percentiles of `samples` (microseconds).
fn percentiles(mut samples: Vec<u64>) -> String {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    format!(
        "n={} p50={} us p99={} us max={} us",
        samples.len(),
        at(0.50),
        at(0.99),
        samples[samples.len() - 1]
    )
}

#[derive(Clone, Copy)]
enum Flood {
    None,
    /// New failing sources, each failing once (decision, hashing, an insert).
    Distinct,
    /// Sources already over their limit (refused before any decision).
    Throttled,
}

/// The legitimate caller's latencies for `seconds` while `flood` runs at
/// `flood_rps`, paced.
/// The legitimate caller's latencies for `seconds` while `flood` runs at
/// `flood_rps`, paced. The flood runs on its own runtime (`flood_rt`), so
/// the legitimate caller's task never waits behind flood tasks in the
/// benchmark's own scheduler.
#[allow(clippy::too_many_arguments)]
async fn legit_latency(
    sidecar: &Sidecar,
    flood_rt: &tokio::runtime::Handle,
    legit: &CheckRequest,
    flood: Flood,
    flood_base: u32,
    legit_rps: u64,
    flood_rps: u64,
    seconds: u64,
) -> (Vec<u64>, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut flooders = Vec::new();
    if !matches!(flood, Flood::None) {
        let workers = 32u64;
        let addr = sidecar.addr();
        for w in 0..workers {
            let (stop, sent) = (stop.clone(), sent.clone());
            flooders.push(flood_rt.spawn(async move {
                let mut client = common::procs::authz_client(addr).await;
                let mut tick = tokio::time::interval(Duration::from_secs_f64(
                    workers as f64 / flood_rps as f64,
                ));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let source = match flood {
                        // A fresh address each time.
                        Flood::Distinct => flood_base + (w as u32) * 10_000_000 / 32 + n,
                        // One of 16 addresses, throttled beforehand.
                        _ => (w as u32) % 16,
                    };
                    n += 1;
                    let _ = client.check(failing(source)).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    let mut client = sidecar.client().await;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / legit_rps as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samples = Vec::new();
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        tick.tick().await;
        let started = Instant::now();
        let resp = client.check(legit.clone()).await.unwrap().into_inner();
        samples.push(started.elapsed().as_micros() as u64);
        assert!(
            allowed(&resp),
            "the legitimate caller was refused: {resp:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.await.unwrap();
    }
    (samples, sent.load(Ordering::Relaxed))
}

/// p50 and p99 of `samples`, in microseconds.
fn p50_p99(mut samples: Vec<u64>) -> (u64, u64) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99))
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Rounds of `scenarios`, interleaved so that drift on a shared machine
/// hits each alike; prints every run and the medians.
#[allow(clippy::too_many_arguments)]
async fn latency_rounds(
    label: &str,
    sidecar: &Sidecar,
    flood_rt: &tokio::runtime::Handle,
    legit: &CheckRequest,
    scenarios: &[(&str, Flood)],
    rounds: u64,
    legit_rps: u64,
    flood_rps: u64,
    seconds: u64,
) {
    let mut results: Vec<Vec<(u64, u64)>> = vec![Vec::new(); scenarios.len()];
    let mut base = 100_000_000u32;
    for round in 0..rounds {
        for (i, (name, flood)) in scenarios.iter().enumerate() {
            base += 1_000_000;
            let (samples, sent) = legit_latency(
                sidecar, flood_rt, legit, *flood, base, legit_rps, flood_rps, seconds,
            )
            .await;
            let (p50, p99) = p50_p99(samples.clone());
            println!(
                "latency: {label}, round {round}, {name} ({:.0}/s): legit {}",
                sent as f64 / seconds as f64,
                percentiles(samples)
            );
            results[i].push((p50, p99));
        }
    }
    for ((name, _), runs) in scenarios.iter().zip(results) {
        println!(
            "latency: {label}, {name}: median of {rounds} rounds: p50 {} us, p99 {} us",
            median(runs.iter().map(|r| r.0).collect()),
            median(runs.iter().map(|r| r.1).collect()),
        );
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("throttle benchmark: run with `cargo bench --bench throttle`");
        return;
    }
    let sources = env_u64("SOURCES", 1_000_000) as u32;
    let legit_rps = env_u64("LEGIT_RPS", 200);
    let flood_rps = env_u64("FLOOD_RPS", 2000);
    let seconds = env_u64("SECONDS", 10);
    let concurrency = env_u64("CONCURRENCY", 64) as u32;
    let rounds = env_u64("ROUNDS", 3);
    let memory = env_u64("MEMORY", 1) != 0;

    let ca = Ca::new("throttle bench CA");
    let forwarded = ca.client(&ClientSpec::uri(A_URI)).forwarded();
    let legit = Req::typical(forwarded.clone(), A_KEY).build();

    // What naming a caller by certificate costs (before any decision).
    let iterations = 200_000;
    let started = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(PeerCertificate::forwarded_sha256(std::hint::black_box(
            &forwarded,
        )));
    }
    let sha = started.elapsed().as_nanos() as f64 / f64::from(iterations);
    let started = Instant::now();
    for _ in 0..iterations / 10 {
        let _ = std::hint::black_box(PeerCertificate::from_forwarded(std::hint::black_box(
            &forwarded,
        )));
    }
    let parse = started.elapsed().as_nanos() as f64 / f64::from(iterations / 10);
    println!(
        "caller key: certificate SHA-256 from the forwarded PEM {sha:.0} ns per Check (a full parse: {parse:.0} ns; {} bytes forwarded)",
        forwarded.len()
    );

    // What consulting the throttle costs a legitimate caller (in process):
    // nobody tracked, then 100,000 callers tracked (a lookup that misses).
    {
        use service_auth::check::Decision;
        use service_auth::enforcement::Disposition;
        use service_auth::request::Attributes;
        use service_auth::throttle::Throttle;
        let settings = service_auth::registry::ThrottleSettings {
            failures: std::num::NonZeroU32::new(5).unwrap(),
            window: Duration::from_secs(600),
            max_tracked: std::num::NonZeroUsize::new(100_000).unwrap(),
        };
        let f = fixture(Some(100_000));
        let registry = f.load();
        let throttle = Throttle::new();
        let per_check = |label: &str| {
            let bytes = prost::Message::encode_to_vec(&legit);
            let view = service_auth::wire::CheckView::decode(&bytes).unwrap();
            let attributes = Attributes::from_view(&view);
            let decision =
                service_auth::testkit::decide(&legit, &registry, service_auth::testkit::unix_now());
            assert!(matches!(decision, Decision::Allow(_)));
            let n = 200_000;
            let started = Instant::now();
            for _ in 0..n {
                let admitted = throttle.admit(&attributes, Some(&settings)).unwrap();
                admitted.record(&decision, Disposition::Enforced);
            }
            println!(
                "throttle: admit + record for an allowed caller with a certificate, {label}: {:.0} ns per Check",
                started.elapsed().as_nanos() as f64 / f64::from(n)
            );
        };
        per_check("nobody tracked");
        let deny = service_auth::check::Denial {
            mode: service_auth::check::Mode::Issue,
            reason: service_auth::check::Reason::InvalidApiKey,
            service: None,
            token: None,
        };
        for i in 0..100_000 {
            let req = failing(i);
            let bytes = prost::Message::encode_to_vec(&req);
            let view = service_auth::wire::CheckView::decode(&bytes).unwrap();
            let attributes = Attributes::from_view(&view);
            let admitted = throttle.admit(&attributes, Some(&settings)).unwrap();
            admitted.record(&Decision::Deny(deny), Disposition::Enforced);
        }
        assert_eq!(throttle.tracked(), 100_000);
        per_check("100,000 failing callers tracked");
    }

    // The memory flood and the legitimate caller run here; a latency run's
    // flood runs on a runtime of its own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Memory: 1,000,000 distinct failing sources.
        let memory_runs: &[usize] = if memory { &[100_000, 1_000_000] } else { &[] };
        for &max_tracked in memory_runs {
            let f = fixture(Some(max_tracked));
            let sidecar = start(&f).await;
            let mut client = sidecar.client().await;
            for _ in 0..2000 {
                assert!(allowed(&client.check(legit.clone()).await.unwrap().into_inner()));
            }
            let (before, _) = memory_mib(sidecar.pid());
            let rate = flood_distinct(&sidecar, sources, concurrency).await;
            let (after, peak) = memory_mib(sidecar.pid());
            println!(
                "memory: max_tracked {max_tracked}: {sources} distinct failing sources at {rate:.0}/s: RSS {before:.1} -> {after:.1} MiB (+{:.1} MiB; peak {peak:.1} MiB)",
                after - before
            );
        }

        // Latency of a legitimate caller.
        let flood_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let f = fixture(Some(100_000));
        let sidecar = start(&f).await;
        let mut client = sidecar.client().await;
        for i in 0..16 {
            for _ in 0..6 {
                client.check(failing(i)).await.unwrap();
            }
            assert_eq!(
                status_of(&client.check(failing(i)).await.unwrap().into_inner()),
                429
            );
        }
        for _ in 0..2000 {
            client.check(legit.clone()).await.unwrap();
        }
        latency_rounds(
            "throttle on",
            &sidecar,
            flood_rt.handle(),
            &legit,
            &[
                ("quiet", Flood::None),
                ("flood of new failing sources", Flood::Distinct),
                ("flood of throttled callers", Flood::Throttled),
            ],
            rounds,
            legit_rps,
            flood_rps,
            seconds,
        )
        .await;
        drop(sidecar);
        let f = fixture(None);
        let sidecar = start(&f).await;
        let mut client = sidecar.client().await;
        for _ in 0..2000 {
            client.check(legit.clone()).await.unwrap();
        }
        latency_rounds(
            "throttle off",
            &sidecar,
            flood_rt.handle(),
            &legit,
            &[
                ("quiet", Flood::None),
                ("flood of new failing sources", Flood::Distinct),
            ],
            rounds,
            legit_rps,
            flood_rps,
            seconds,
        )
        .await;
        drop(sidecar);
        flood_rt.shutdown_background();
    });
}
