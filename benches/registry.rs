//! Registry build time: how long a reload of a large registry takes (read,
//! parse, validate, index). Run: `cargo bench --bench registry`.

use criterion::{Criterion, criterion_group, criterion_main};
use service_auth::registry::Registry;
use service_auth::testkit as common;

/// A registry of `n` services, each with one URI principal and two keys.
pub fn large_fixture(n: usize) -> common::Fixture {
    let services: Vec<common::Svc> = (0..n).map(|i| common::scale_service(0, i)).collect();
    common::Fixture::new(&services)
}

fn registry_load(c: &mut Criterion) {
    let fixture = large_fixture(10_000);
    let size = std::fs::metadata(fixture.registry_path()).unwrap().len();
    let mut group = c.benchmark_group("registry");
    group.sample_size(10);
    group.bench_function(format!("load 10k services ({} KiB)", size / 1024), |b| {
        b.iter(|| Registry::load(&fixture.registry_path()).unwrap())
    });
    group.finish();
}

criterion_group!(benches, registry_load);
criterion_main!(benches);
