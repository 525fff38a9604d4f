//! Micro-benchmarks of the decision path: certificate extraction, registry
//! lookup, API-key check, token signing, and the whole `decide` (with and
//! without the certificate cache the server uses).
//! Run: `cargo bench --bench decide`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use common::pki::{Ca, ClientSpec};
use common::{Fixture, Req, Svc};
use criterion::{Criterion, criterion_group, criterion_main};
use service_auth::check::{Decision, decide, decide_with};
use service_auth::identity::{CertCache, PeerCertificate, SanKind};
use service_auth::registry::hash_api_key;
use service_auth::token;

const URI: &str = "spiffe://mesh.bench/ns/default/sa/caller";
const KEY: &str = "bench-api-key-0123456789abcdefghij";

fn bench(c: &mut Criterion) {
    let mut services: Vec<Svc> = (0..1000)
        .map(|i| {
            Svc::new(
                &format!("svc-{i}"),
                &format!("spiffe://mesh.bench/svc-{i}"),
                &format!("key-{i}-0123456789"),
            )
        })
        .collect();
    let ca = Ca::new("bench CA");
    std::fs::create_dir_all(std::env::temp_dir()).unwrap();
    let mut caller = Svc::new("caller", URI, KEY);
    let fixture = Fixture::new(&[]);
    std::fs::write(fixture.path().join("ca.crt"), ca.cert_pem()).unwrap();
    caller.ca_file = Some("ca.crt".into());
    services.push(caller);
    fixture.write_registry(&services);
    let registry = fixture.load();
    let cert = ca.client(&ClientSpec::uri(URI));
    let forwarded = cert.forwarded();
    let request = Req::cert(forwarded.clone()).key(KEY).build();
    let now = common::unix_now();

    c.bench_function(
        "certificate extraction (percent-decode + PEM + X.509 + SANs)",
        |b| b.iter(|| PeerCertificate::from_forwarded(black_box(&forwarded)).unwrap()),
    );
    c.bench_function("registry lookup (principal -> service)", |b| {
        b.iter(|| {
            registry
                .service_for_principal(SanKind::Uri, black_box(URI))
                .unwrap()
        })
    });
    c.bench_function("api key hash (SHA-256)", |b| {
        b.iter(|| hash_api_key(black_box(KEY.as_bytes())))
    });
    let service = registry.service("caller").unwrap();
    c.bench_function("token signing", |b| {
        b.iter(|| {
            token::issue(
                &registry.token,
                token::Subject {
                    service: &service.id,
                    principal: URI,
                    scope: &service.all_scopes,
                    certificate_sha256: Some(&[7; 32]),
                },
                now,
            )
            .unwrap()
        })
    });
    c.bench_function(
        "decide, allow, uncached (parse + CA signature every time)",
        |b| {
            b.iter(|| {
                assert!(matches!(
                    decide(black_box(&request), &registry, now),
                    Decision::Allow(_)
                ))
            })
        },
    );
    let cache = CertCache::new(1024);
    c.bench_function("decide, allow, with the server's certificate cache", |b| {
        b.iter(|| {
            assert!(matches!(
                decide_with(black_box(&request), &registry, now, &cache),
                Decision::Allow(_)
            ))
        })
    });
    let denied = Req::cert(forwarded).key("wrong-key").build();
    c.bench_function("decide, deny (wrong key), with cache", |b| {
        b.iter(|| decide_with(black_box(&denied), &registry, now, &cache))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
