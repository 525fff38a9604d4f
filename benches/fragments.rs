//! Registry fragments at scale: 50,000 services in 50 fragment files (1,000
//! each, one directory) beside a main registry. Reports
//!
//! * the build time of the whole set (`Registry::load_paths`) and the peak
//!   RSS of a fresh process that builds it;
//! * the reload time when one fragment changes: from the atomic rename of
//!   the changed file to the release binary answering with the new snapshot
//!   (file event + debounce + `reload.settle` + rebuild + swap), and the
//!   binary's peak RSS across the reload.
//!
//! Run: `cargo bench --bench fragments` (FRAGMENTS=50, PER_FRAGMENT=1000,
//! SETTLE_MS=100 override). `cargo test --all-targets` builds and starts
//! this binary without `--bench`; it then does nothing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::procs::Sidecar;
use common::{Ca, ClientSpec, Fixture, Req, Svc, tcp0};
use envoy_types::ext_authz::v3::pb::HttpResponse;
use service_auth::config::RegistryPaths;
use service_auth::registry::Registry;
use service_auth::testkit::{Memory, fragment, scale_service};

/// The binary's allocator, so the in-process build's RSS is the binary's.
#[global_allocator]
static ALLOCATOR: service_auth::alloc::Allocator = service_auth::alloc::Allocator;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn team_file(dir: &Path, f: usize) -> PathBuf {
    dir.join(format!("teams/team-{f:03}.yaml"))
}

fn write_team(fixture: &Fixture, f: usize, per: usize, extra: Option<Svc>) {
    let mut services: Vec<Svc> = (0..per).map(|i| scale_service(f, i)).collect();
    services.extend(extra);
    let text = serde_yaml::to_string(&fragment(&services)).unwrap();
    // Atomic replace, as `kubectl` + the kubelet or an editor would.
    let path = team_file(fixture.path(), f);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Not `*.yaml`: never read as a fragment while half written.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

/// `VmHWM` and `VmRSS` of `pid` ("self" for this process), in KiB.
fn memory_kib(pid: &str) -> (u64, u64) {
    let m = Memory::of(pid).expect("read /proc/PID/status");
    (m.peak_kib, m.rss_kib)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// In a fresh process: build the set three times; print the times and the
/// peak RSS.
fn measure_build(main: &Path, teams: &Path) {
    let paths = RegistryPaths {
        main: main.to_path_buf(),
        fragments: vec![teams.to_path_buf()],
    };
    let (hwm_before, _) = memory_kib("self");
    // How much of a build is YAML parsing alone.
    let started = Instant::now();
    let mut files: Vec<PathBuf> = std::fs::read_dir(teams)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let parsed: usize = files
        .iter()
        .map(|p| {
            let fragment: service_auth::config::RegistryFragment =
                service_auth::config::read_yaml(p).unwrap();
            fragment.services.map_or(0, |s| s.len())
        })
        .sum();
    println!(
        "parse only: {parsed} services in {} files: {:.0} ms",
        files.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    let mut times = Vec::new();
    let mut services = 0;
    for _ in 0..3 {
        let started = Instant::now();
        let registry = Registry::load_paths(&paths).unwrap_or_else(|e| panic!("{e:?}"));
        times.push(started.elapsed());
        services = registry.services().len();
        if times.len() == 1 {
            let (_, rss) = memory_kib("self");
            println!("build: RSS with the registry built: {:.1} MiB", mib(rss));
        }
        drop(registry);
    }
    let (hwm, rss) = memory_kib("self");
    println!(
        "build: {services} services: first {:.0} ms, then {:.0} ms and {:.0} ms",
        times[0].as_secs_f64() * 1e3,
        times[1].as_secs_f64() * 1e3,
        times[2].as_secs_f64() * 1e3,
    );
    println!(
        "build: peak RSS {:.1} MiB (before the first build {:.1} MiB; after, registry dropped: {:.1} MiB)",
        mib(hwm),
        mib(hwm_before),
        mib(rss)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--measure-build") {
        service_auth::alloc::tune();
        measure_build(Path::new(&args[i + 1]), Path::new(&args[i + 2]));
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("fragments benchmark: run with `cargo bench --bench fragments`");
        return;
    }
    let fragments = env_usize("FRAGMENTS", 50);
    let per = env_usize("PER_FRAGMENT", 1000);
    let settle = Duration::from_millis(env_usize("SETTLE_MS", 100) as u64);

    let fixture = Fixture::new(&[]);
    let started = Instant::now();
    for f in 0..fragments {
        write_team(&fixture, f, per, None);
    }
    let teams = fixture.path().join("teams");
    let bytes: u64 = std::fs::read_dir(&teams)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    println!(
        "fixture: {fragments} fragments x {per} services = {} services, {:.1} MiB of YAML (written in {:.1} s)",
        fragments * per,
        bytes as f64 / (1024.0 * 1024.0),
        started.elapsed().as_secs_f64()
    );

    // Build time and peak RSS, in a process that does nothing else.
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--measure-build")
        .arg(fixture.registry_path())
        .arg(&teams)
        .status()
        .unwrap();
    assert!(status.success());

    // Reload time through the release binary.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut config = fixture.static_config(tcp0());
        config.registry.fragments = vec![teams.clone()];
        config.reload.settle = settle;
        // Let the file event do it: the poll is only a safety net.
        config.reload.poll_interval = Duration::from_secs(3600);
        let started = Instant::now();
        let sidecar = Sidecar::start(&fixture.write_config(&config)).await;
        println!(
            "binary: SERVING {:.2} s after spawn",
            started.elapsed().as_secs_f64()
        );
        let pid = sidecar.pid().to_string();
        let mut client = sidecar.client().await;
        let ca = Ca::new("fragments bench CA");
        let uri = "spiffe://mesh.bench/ns/new/sa/new";
        let new = Req::cert(ca.client(&ClientSpec::uri(uri)).forwarded()).key("key-of-new-0123456789");
        let allowed = |resp: &envoy_types::ext_authz::v3::pb::CheckResponse| {
            matches!(resp.http_response, Some(HttpResponse::OkResponse(_)))
        };
        assert!(!allowed(&client.check(new.build()).await.unwrap().into_inner()));
        let (hwm_before, rss_before) = memory_kib(&pid);
        for round in 0..6 {
            // One fragment changes: the new service appears in it (and
            // leaves again in the next round).
            let f = fragments / 2;
            let extra = (round % 2 == 0).then(|| Svc::new("new", uri, "key-of-new-0123456789"));
            let want = extra.is_some();
            let started = Instant::now();
            write_team(&fixture, f, per, extra);
            loop {
                let resp = client.check(new.build()).await.unwrap().into_inner();
                if allowed(&resp) == want {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(120), "no reload");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let elapsed = started.elapsed();
            // The reloader trims freed memory right after the swap.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (_, rss) = memory_kib(&pid);
            println!(
                "reload {round}: one fragment changed -> new snapshot answering after {:.0} ms (settle {} ms); RSS then {:.1} MiB",
                elapsed.as_secs_f64() * 1e3,
                settle.as_millis(),
                mib(rss)
            );
        }
        let (hwm, rss) = memory_kib(&pid);
        println!(
            "binary: RSS {:.1} MiB before the reloads (peak so far {:.1} MiB, the first load), {:.1} MiB after; peak {:.1} MiB",
            mib(rss_before),
            mib(hwm_before),
            mib(rss),
            mib(hwm)
        );
    });
}
