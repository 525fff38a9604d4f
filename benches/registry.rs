//! Registry build time: how long a reload of a large registry takes (read,
//! parse, validate, index). Run: `cargo bench --bench registry`.

use criterion::{Criterion, criterion_group, criterion_main};
use service_auth::registry::Registry;
use service_auth::testkit as common;

/// A registry of `n` services, each with one URI principal and two keys.
pub fn large_fixture(n: usize) -> common::Fixture {
    let services: Vec<common::Svc> = (0..n)
        .map(|i| {
            let mut svc = common::Svc::new(
                &format!("svc-{i}"),
                &format!("spiffe://mesh.bench/ns/default/sa/svc-{i}"),
                &format!("key-{i}-primary-0123456789"),
            );
            svc.keys.push((
                "secondary".into(),
                format!("key-{i}-secondary-0123456789"),
                Some("2030-01-01T00:00:00Z".into()),
            ));
            svc
        })
        .collect();
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
