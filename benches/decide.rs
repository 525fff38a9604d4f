//! Micro-benchmarks of the decision path: certificate extraction, registry
//! lookup, API-key check, token signing, and a whole Check's work (parse the
//! attributes, gather evidence with or without the server's memo, decide,
//! sign). Run: `cargo bench --bench decide`.
//!
//! Wall-clock figures move ±10 % on a shared machine; instruction counts do
//! not. `DECIDE_CALLGRIND=<case>:<n>` skips criterion and runs one case `n`
//! times, with the caller's certificate issued by an intermediate CA (a
//! 3-certificate chain): `uncached` and `cached` judge it against the
//! service's `ca_file` (root + intermediate), `uncached-domain` and
//! `cached-domain` against its SPIFFE trust domain's bundle. Under
//! `valgrind --tool=callgrind`, (Ir at n2 - Ir at n1) / (n2 - n1) is the
//! per-Check cost; `benches/callgrind.sh` does that arithmetic.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group};
use prost::Message;
use service_auth::check::{self, Decision, Grant, Input};
use service_auth::evidence::{Evidence, EvidenceCache};
use service_auth::identity::{PeerCertificate, SanKind};
use service_auth::registry::{Registry, hash_api_key};
use service_auth::request::Attributes;
use service_auth::testkit::pki::{Ca, ClientSpec};
use service_auth::testkit::{Fixture, Req, Svc, unix_now};
use service_auth::token;
use service_auth::wire::CheckView;

const URI: &str = "spiffe://mesh.bench/ns/default/sa/caller";
const KEY: &str = "bench-api-key-0123456789abcdefghij";

/// One Check's work on the request's bytes, as the server does it (minus
/// the transport): decode, read the attributes, gather evidence (with or
/// without the memo), decide, sign.
fn check_once(req: &[u8], registry: &Registry, cache: Option<&EvidenceCache>, now: i64) -> bool {
    let Ok(view) = CheckView::decode(req) else {
        return false;
    };
    let attributes = Attributes::from_view(&view);
    let evidence = match cache {
        Some(cache) => cache.resolve(attributes.certificate, registry, now),
        None => Evidence::from_forwarded(attributes.certificate, registry, now).map(Arc::new),
    };
    let input = Input {
        attributes,
        certificate: Some(evidence.as_ref().map(Arc::as_ref).map_err(|e| *e)),
    };
    match check::decide(&input, registry, now) {
        Decision::Allow(Grant::Issue(grant)) => {
            token::issue(&registry.token, &grant.subject(), now).is_ok()
        }
        _ => false,
    }
}

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
    let root = Ca::new("bench root");
    let inter = root.intermediate("bench intermediate");
    let mut caller = Svc::new("caller", URI, KEY);
    let fixture = Fixture::new(&[]);
    fixture.write_file("ca.crt", Ca::bundle_pem(&[&root, &inter]));
    caller.ca_file = Some("ca.crt".into());
    services.push(caller);
    fixture.write_registry(&services);
    let registry = fixture.load();
    let cert = inter.client(&ClientSpec::uri(URI));
    let forwarded = cert.forwarded();
    let request = Req::typical(forwarded.clone(), KEY).build().encode_to_vec();
    let now = unix_now();

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
    let subject = token::Subject {
        service: &service.id,
        principal: URI,
        scope: service.all_scopes.as_str().into(),
        certificate_sha256: Some([7; 32]),
    };
    c.bench_function("token signing", |b| {
        b.iter(|| token::issue(&registry.token, black_box(&subject), now).unwrap())
    });
    c.bench_function(
        "check, allow, uncached (parse + 3-certificate chain every time)",
        |b| b.iter(|| assert!(check_once(black_box(&request), &registry, None, now))),
    );
    let cache = EvidenceCache::new(1024);
    c.bench_function("check, allow, with the server's evidence memo", |b| {
        b.iter(|| {
            assert!(check_once(
                black_box(&request),
                &registry,
                Some(&cache),
                now
            ))
        })
    });
    let denied = Req::typical(forwarded, "wrong-key").build().encode_to_vec();
    c.bench_function("check, deny (wrong key), with the memo", |b| {
        b.iter(|| {
            assert!(!check_once(
                black_box(&denied),
                &registry,
                Some(&cache),
                now
            ))
        })
    });
}

/// The caller's registry and request for the callgrind cases: the caller's
/// certificate comes from an intermediate; the bundle (intermediate, then
/// root) is its service's `ca_file`, or with `domain` its trust domain's.
fn chain_world(domain: bool) -> (Fixture, Registry, Vec<u8>) {
    let root = Ca::new("bench root");
    let inter = root.intermediate("bench intermediate");
    let mut fixture = Fixture::new(&[]);
    fixture.write_file("bundle.pem", Ca::bundle_pem(&[&inter, &root]));
    let mut caller = Svc::new("caller", URI, KEY);
    if domain {
        fixture
            .trust_domains
            .insert("mesh.bench".into(), "bundle.pem".into());
    } else {
        caller.ca_file = Some("bundle.pem".into());
    }
    fixture.write_registry(&[caller]);
    let registry = fixture.load();
    let cert = inter.client(&ClientSpec::uri(URI));
    let request = Req::typical(cert.forwarded(), KEY).build().encode_to_vec();
    (fixture, registry, request)
}

fn callgrind(spec: &str) {
    let (case, n) = spec.split_once(':').unwrap_or((spec, "1"));
    let n: u64 = n.parse().expect("DECIDE_CALLGRIND=<case>:<n>");
    let (cached, domain) = match case {
        "uncached" => (false, false),
        "cached" => (true, false),
        "uncached-domain" => (false, true),
        "cached-domain" => (true, true),
        other => panic!("unknown case {other:?}"),
    };
    let (_fixture, registry, request) = chain_world(domain);
    let now = unix_now();
    let cache = EvidenceCache::new(1024);
    let cache = cached.then_some(&cache);
    for _ in 0..n {
        assert!(check_once(black_box(&request), &registry, cache, now));
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = bench
}

fn main() {
    if let Ok(spec) = std::env::var("DECIDE_CALLGRIND") {
        callgrind(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
