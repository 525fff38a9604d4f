//! Property tests: for random registries and random requests, `decide`
//! allows exactly when an independent oracle says the certificate SAN (or
//! the principal, where the registry does not require a certificate) and
//! the API key name the same registered service, the certificate is
//! unexpired and unrevoked, and the key is unexpired.
//!
//! Certificates are slow to make, so a pool of 16 is generated once per run
//! and the strategies pick from it.

mod common;

use std::sync::OnceLock;

use common::{Ca, ClientSpec, Fixture, Req, Svc, unix_now};
use proptest::prelude::*;
use service_auth::check::{Decision, Grant};
use service_auth::testkit::decide;
use time::{Duration, OffsetDateTime};

/// The SANs certificates in the pool carry: URI SANs, then DNS SANs.
const SANS: [&str; 12] = [
    "spiffe://prop.test/sa/0",
    "spiffe://prop.test/sa/1",
    "spiffe://prop.test/sa/2",
    "spiffe://prop.test/sa/3",
    "spiffe://prop.test/sa/4",
    "spiffe://prop.test/sa/5",
    "spiffe://prop.test/sa/6",
    "spiffe://prop.test/sa/7",
    "s8.prop.test",
    "s9.prop.test",
    "s10.prop.test",
    "s11.prop.test",
];
const POOL: usize = 16;
const KEYS: usize = 10;
const MAX_SERVICES: usize = 6;

struct PoolCert {
    forwarded: String,
    san: usize,
    /// Hex serial, as the registry's `revocation.serials` spells it.
    serial: String,
    expired: bool,
}

/// 16 certificates: one per SAN, four more for the first SANs with other
/// serials (so revoking one leaves its twin valid), the last two expired.
fn pool() -> &'static [PoolCert] {
    static POOL_CERTS: OnceLock<Vec<PoolCert>> = OnceLock::new();
    POOL_CERTS.get_or_init(|| {
        let ca = Ca::new("property CA");
        let now = OffsetDateTime::now_utc();
        (0..POOL)
            .map(|i| {
                let san = i % SANS.len();
                let serial = [1, i as u8];
                let spec = if SANS[san].contains("://") {
                    ClientSpec::uri(SANS[san])
                } else {
                    ClientSpec::dns(SANS[san])
                };
                let expired = i >= POOL - 2;
                let spec = if expired {
                    spec.valid(now - Duration::days(10), now - Duration::days(1))
                } else {
                    spec
                };
                PoolCert {
                    forwarded: ca.client(&spec.serial(&serial)).forwarded(),
                    san,
                    serial: hex::encode(serial),
                    expired,
                }
            })
            .collect()
    })
}

fn key(i: usize) -> String {
    format!("property-key-{i}-0123456789")
}

/// A random registry, described so the oracle can reason about it.
#[derive(Debug, Clone)]
struct World {
    services: usize,
    /// Owner of each SAN in `SANS`, if registered.
    san_owner: Vec<Option<usize>>,
    /// Owner of each key and whether it has expired, if registered.
    key_owner: Vec<Option<(usize, bool)>>,
    /// Revoked, for each pool certificate.
    revoked: Vec<bool>,
    /// `identity.require_certificate`: Envoy's principal alone is refused.
    require_certificate: bool,
}

#[derive(Debug, Clone)]
enum Identity {
    Cert(usize),
    Principal(usize),
}

#[derive(Debug, Clone)]
struct Request {
    identity: Identity,
    key: Option<usize>,
}

fn world_strategy() -> impl Strategy<Value = World> {
    (1..=MAX_SERVICES).prop_flat_map(|services| {
        (
            Just(services),
            prop::collection::vec(prop::option::of(0..services), SANS.len()),
            prop::collection::vec(prop::option::of((0..services, any::<bool>())), KEYS),
            prop::collection::vec(prop::bool::weighted(0.2), POOL),
            any::<bool>(),
        )
            .prop_map(
                |(services, san_owner, key_owner, revoked, require_certificate)| World {
                    services,
                    san_owner,
                    key_owner,
                    revoked,
                    require_certificate,
                },
            )
    })
}

fn request_strategy() -> impl Strategy<Value = Request> {
    let identity = prop_oneof![
        3 => (0..POOL).prop_map(Identity::Cert),
        1 => (0..SANS.len()).prop_map(Identity::Principal),
    ];
    (identity, prop::option::weighted(0.9, 0..KEYS))
        .prop_map(|(identity, key)| Request { identity, key })
}

impl World {
    fn fixture(&self) -> Fixture {
        let services: Vec<Svc> = (0..self.services)
            .map(|s| {
                let mut principals: Vec<String> = SANS
                    .iter()
                    .zip(&self.san_owner)
                    .filter(|(_, owner)| **owner == Some(s))
                    .map(|(san, _)| san.to_string())
                    .collect();
                if principals.is_empty() {
                    // Every service needs a principal; this one no certificate has.
                    principals.push(format!("spiffe://prop.test/unused/{s}"));
                }
                let keys = self
                    .key_owner
                    .iter()
                    .enumerate()
                    .filter(|(_, owner)| owner.is_some_and(|(o, _)| o == s))
                    .map(|(k, owner)| {
                        let expired = owner.unwrap().1;
                        let not_after = if expired {
                            "2020-01-01T00:00:00Z"
                        } else {
                            "2099-01-01T00:00:00Z"
                        };
                        (format!("k{k}"), key(k), Some(not_after.to_string()))
                    })
                    .collect();
                Svc {
                    id: format!("svc{s}"),
                    principals,
                    scopes: vec!["read".into()],
                    keys,
                    ..Default::default()
                }
            })
            .collect();
        let revoked: Vec<String> = pool()
            .iter()
            .zip(&self.revoked)
            .filter(|(_, r)| **r)
            .map(|(c, _)| c.serial.clone())
            .collect();
        let mut fixture = Fixture::new(&[]);
        fixture.revocation.serials = revoked;
        let mut file = fixture.registry_file(&services);
        file.identity.require_certificate = self.require_certificate;
        fixture.write(&file);
        fixture
    }

    /// The oracle: the service the request authenticates as, if any.
    fn expected(&self, req: &Request) -> Option<usize> {
        let san = match req.identity {
            Identity::Cert(i) => {
                let cert = &pool()[i];
                if cert.expired || self.revoked[i] {
                    return None;
                }
                cert.san
            }
            Identity::Principal(_) if self.require_certificate => return None,
            Identity::Principal(san) => san,
        };
        let owner = self.san_owner[san]?;
        let (key_owner, expired) = self.key_owner[req.key?]?;
        (key_owner == owner && !expired).then_some(owner)
    }
}

fn build(req: &Request, raw_header: bool) -> Req {
    let mut r = match req.identity {
        Identity::Cert(i) => Req::cert(pool()[i].forwarded.clone()),
        Identity::Principal(san) => Req::principal(SANS[san]),
    };
    if let Some(k) = req.key {
        r = if raw_header {
            r.raw_header("x-api-key", key(k).as_bytes())
        } else {
            r.key(&key(k))
        };
    }
    r
}

fn verdict(d: &Decision<'_>) -> Option<String> {
    match d {
        Decision::Allow(Grant::Issue(g)) => Some(g.service.id.clone()),
        Decision::Allow(Grant::Verify(g)) => panic!("an issue-mode request was verified: {g:?}"),
        Decision::Deny(_) => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn allowed_only_when_san_and_key_name_the_same_live_service(
        world in world_strategy(),
        requests in prop::collection::vec(request_strategy(), 1..12),
    ) {
        let fixture = world.fixture();
        let registry = fixture.load();
        let now = unix_now();
        for req in &requests {
            let want = world.expected(req).map(|s| format!("svc{s}"));
            let got = verdict(&decide(&build(req, false).build(), &registry, now));
            prop_assert_eq!(&got, &want, "request {:?}", req);
            // Envoy's encode_raw_headers delivery decides the same way.
            let raw = verdict(&decide(&build(req, true).build(), &registry, now));
            prop_assert_eq!(&raw, &want, "request {:?} (header_map)", req);
        }
    }
}
