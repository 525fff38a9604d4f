//! Cost of one uncached chain validation (`trust::Bundle::verify`) with the
//! shape real meshes issue: root + intermediate + leaf, ECDSA P-256 (rcgen's
//! default), plus the pieces around it (bundle load, CRL lookup).
//! Run: `cargo bench --bench trust`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use service_auth::testkit::pki::{Ca, ClientSpec};
use service_auth::trust::{Bundle, Revocations};
use time::OffsetDateTime;

fn bench(c: &mut Criterion) {
    let root = Ca::new("bench root");
    let inter = root.intermediate("bench intermediate");
    let leaf = inter
        .client(&ClientSpec::uri("spiffe://mesh.bench/ns/default/sa/caller").with_cn("workload"));
    let leaf_der = leaf.der;
    let pem = Ca::bundle_pem(&[&root, &inter]);
    let bundle = Bundle::from_pem(pem.as_bytes()).unwrap();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    assert!(bundle.verify(&leaf_der, now).is_trusted());

    c.bench_function("trust: verify root+intermediate+leaf (uncached)", |b| {
        b.iter(|| bundle.verify(black_box(&leaf_der), black_box(now)))
    });
    c.bench_function("trust: load 2-certificate PEM bundle", |b| {
        b.iter(|| Bundle::from_pem(black_box(pem.as_bytes())).unwrap())
    });
    let mut revoked = Revocations::new();
    for i in 0u32..1000 {
        revoked.revoke_serial(&i.to_be_bytes());
    }
    let issuer = b"\x30\x00";
    c.bench_function("trust: revocation lookup (1000 serials)", |b| {
        b.iter(|| revoked.is_revoked(black_box(issuer), black_box(&[0x12, 0x34, 0x56])))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
