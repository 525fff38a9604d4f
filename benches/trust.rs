//! Cost of one uncached chain validation (`trust::Bundle::verify`) with the
//! shape real meshes issue: root + intermediate + leaf, ECDSA P-256 (rcgen's
//! default), plus the pieces around it (bundle load, CRL lookup).
//! Run: `cargo bench --bench trust`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use service_auth::trust::{Bundle, Revocations};
use time::{Duration, OffsetDateTime};

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(365);
    p
}

fn bench(c: &mut Criterion) {
    let root = CertifiedIssuer::self_signed(ca_params("bench root"), KeyPair::generate().unwrap())
        .unwrap();
    let inter = CertifiedIssuer::signed_by(
        ca_params("bench intermediate"),
        KeyPair::generate().unwrap(),
        &root,
    )
    .unwrap();
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name.push(DnType::CommonName, "workload");
    leaf.subject_alt_names = vec![SanType::URI(
        "spiffe://mesh.bench/ns/default/sa/caller"
            .try_into()
            .unwrap(),
    )];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = leaf
        .signed_by(&KeyPair::generate().unwrap(), &inter)
        .unwrap();
    let leaf_der = leaf.der().to_vec();
    let pem = format!("{}{}", root.pem(), inter.pem());
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
