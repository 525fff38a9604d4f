//! Reload memory: the release binary serving a large registry (`ca_file` on
//! every service) is sent SIGHUP `RELOADS` times while its memory
//! is read from `/proc/<pid>/status`. Reports, per registry size:
//!
//! * the steady RSS: at rest, serving the registry, after the first load;
//! * the peak RSS of each reload (`VmHWM`, reset before each SIGHUP through
//!   `/proc/<pid>/clear_refs`), and the highest of them;
//! * the RSS at rest after reloads 1, 10, 50 and the last: growth across the
//!   reloads.
//!
//! Targets (issue 19): peak ≤ 2 × steady, and no growth.
//!
//! Run: `cargo bench --bench reload_memory`. Knobs: `SCENARIOS` (default
//! `10000x2 50000x1 50000x1/50`: services × API keys per service, in the
//! registry file, which must stay under the 16 MiB cap, or `/N` fragment
//! files of one directory), `RELOADS` (default 100), `VERBOSE` (set: also
//! print the RSS at rest and the peak of every reload). Linux only
//! (`/proc`); resetting `VmHWM` needs Linux ≥ 4.0. `cargo test --all-targets`
//! builds and starts this binary without `--bench`; it then does nothing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::procs::Sidecar;
use common::{Ca, Fixture, Svc, tcp0};
use service_auth::testkit::{fragment, scale_service};

/// `VmHWM` and `VmRSS` of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Makes `VmHWM` start again from the current RSS (`clear_refs` value 5).
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// The RSS once it has stopped moving: the reloader drops the old registry
/// and trims freed memory after it logs the reload, on other threads, and a
/// 50,000-service registry takes a while to free on a busy machine. Equal
/// over 500 ms, or whatever it is after 10 s.
fn settled_rss(pid: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = memory_kib(pid).1;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = memory_kib(pid).1;
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Successful reloads in the sidecar's JSON log so far.
fn reloads_logged(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.contains(r#""event":"registry_reload""#) && l.contains(r#""result":"success""#)
        })
        .count()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One registry layout: `services` services with `keys` keys each, in the
/// main file (`files` 1) or spread over `files` fragment files in one
/// directory. Starts the binary, reloads it, prints the figures.
fn scenario(
    runtime: &tokio::runtime::Runtime,
    services: usize,
    keys: usize,
    files: usize,
    reloads: usize,
) {
    let fixture = Fixture::new(&[]);
    let ca = Ca::new("reload memory CA").cert_pem();
    let per_file = services.div_ceil(files);
    let entries = |file: usize| -> Vec<Svc> {
        (file * per_file..services.min((file + 1) * per_file))
            .map(|i| {
                let mut svc = scale_service(file, i);
                svc.keys.truncate(keys);
                // Relative to the file that names it.
                svc.ca_file = Some("ca.pem".into());
                svc
            })
            .collect()
    };
    let mut config = fixture.static_config(tcp0());
    if files == 1 {
        fixture.write_file("ca.pem", &ca);
        fixture.write_registry(&entries(0));
    } else {
        fixture.write_file("teams/ca.pem", &ca);
        for file in 0..files {
            fixture.write_fragment(
                &format!("teams/team-{file:03}.yaml"),
                &fragment(&entries(file)),
            );
        }
        config.registry.fragments = vec![fixture.path().join("teams")];
    }
    let bytes: u64 = [fixture.registry_path(), fixture.path().join("teams")]
        .iter()
        .flat_map(|p| match std::fs::read_dir(p) {
            Ok(dir) => dir.map(|e| e.unwrap().path()).collect(),
            Err(_) => vec![p.clone()],
        })
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    // Only SIGHUP reloads: nothing changes on disk.
    config.reload.poll_interval = Duration::from_secs(3600);
    let config = fixture.write_config(&config);

    let sidecar = runtime.block_on(Sidecar::start(&config));
    let pid = sidecar.pid();
    let steady = settled_rss(pid);
    let (first_load_peak, _) = memory_kib(pid);
    println!(
        "{services} services x {keys} key(s) in {files} file(s), ca_file on each, {:.1} MiB of YAML: steady RSS {:.1} MiB (first load peaked at {:.1} MiB)",
        bytes as f64 / (1024.0 * 1024.0),
        mib(steady),
        mib(first_load_peak)
    );

    let mut peaks = Vec::with_capacity(reloads);
    let mut rest = Vec::with_capacity(reloads);
    let started = Instant::now();
    for n in 1..=reloads {
        reset_peak(pid);
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(120);
        while reloads_logged(&sidecar.log) < n {
            assert!(Instant::now() < deadline, "reload {n} was not logged");
            std::thread::sleep(Duration::from_millis(5));
        }
        rest.push(settled_rss(pid));
        peaks.push(memory_kib(pid).0);
    }
    let elapsed = started.elapsed();
    if std::env::var_os("VERBOSE").is_some() {
        let each: Vec<String> = rest.iter().map(|&k| format!("{:.1}", mib(k))).collect();
        let high: Vec<String> = peaks.iter().map(|&k| format!("{:.1}", mib(k))).collect();
        println!("  at rest: {}\n  peaks: {}", each.join(" "), high.join(" "));
    }
    let highest = peaks.iter().copied().max().unwrap_or(0);
    let at = |n: usize| rest.get(n - 1).copied().unwrap_or(0);
    println!(
        "  {reloads} SIGHUP reloads in {:.0} s: peak RSS per reload {:.1}..{:.1} MiB (median {:.1}); highest {:.1} MiB = {:.2} x steady (target <= 2)",
        elapsed.as_secs_f64(),
        mib(peaks.iter().copied().min().unwrap_or(0)),
        mib(highest),
        mib(median(&peaks)),
        mib(highest),
        highest as f64 / steady as f64,
    );
    let checkpoints: Vec<String> = [1, 10, 50, reloads]
        .iter()
        .filter(|&&n| n <= reloads)
        .map(|&n| format!("after {n}: {:.1}", mib(at(n))))
        .collect();
    println!(
        "  RSS at rest (MiB): {}; growth from reload 10 to {reloads}: {:+.1} MiB (target: none)",
        checkpoints.join(", "),
        mib(at(reloads)) - mib(at(10.min(reloads)))
    );
    drop(sidecar);
}

fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("reload memory benchmark: run with `cargo bench --bench reload_memory`");
        return;
    }
    let reloads: usize = std::env::var("RELOADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let scenarios =
        std::env::var("SCENARIOS").unwrap_or_else(|_| "10000x2 50000x1 50000x1/50".into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for spec in scenarios.split_whitespace() {
        let (layout, files) = spec.split_once('/').unwrap_or((spec, "1"));
        let parsed = layout
            .split_once('x')
            .and_then(|(s, k)| Some((s.parse().ok()?, k.parse().ok()?, files.parse().ok()?)));
        let Some((services, keys, files)) = parsed else {
            panic!("SCENARIOS entry {spec:?}: want SERVICESxKEYS or SERVICESxKEYS/FILES");
        };
        scenario(&runtime, services, keys, files, reloads);
    }
}
