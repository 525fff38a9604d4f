//! The expensive facts about a forwarded certificate, gathered before the
//! decision and memoized across Checks.
//!
//! Parsing a certificate costs microseconds and validating its chain tens to
//! hundreds of them (a signature per certificate of the path), while Envoy
//! forwards the same few client certificates over and over (callers reuse
//! their connections). So the decision does neither: it reads an
//! [`Evidence`] — the parsed certificate, its reading as an X509-SVID, and a
//! chain [`Verdict`] for every CA bundle the decision may consult — as plain
//! data. Those bundles are
//! the one of the certificate's SPIFFE trust domain (when `trust_domains`
//! lists it) and the `ca_file` bundle of each service its SANs name.
//!
//! An [`EvidenceCache`] keeps evidence per forwarded string. An entry is
//! served while its registry snapshot (`Registry::generation`) is the one
//! deciding and every verdict still holds at `now` (a verdict says for
//! which times it holds: until a certificate of the leaf or the bundle
//! enters or leaves its validity window). Otherwise it is gathered again,
//! keeping the parse and every verdict for a bundle of the same content
//! (`Bundle::id`) that still holds. A hit is therefore indistinguishable from
//! gathering again; what depends on the request or on policy the verdicts do
//! not cover (the leaf's own validity window, revocation, pins, the API key)
//! is checked by the decision on every Check.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::{Arc, Mutex};

use crate::identity::{CertError, PeerCertificate};
use crate::registry::Registry;
use crate::trust::{self, Bundle, SvidError, Verdict};

/// A parsed peer certificate and its chain verdicts under one registry
/// snapshot.
#[derive(Debug)]
pub struct Evidence {
    pub certificate: Arc<PeerCertificate>,
    /// The certificate read as an X509-SVID: its SPIFFE trust domain, none,
    /// or why its URI SANs are not a valid SVID.
    svid: Result<Option<Box<str>>, SvidError>,
    /// Registry snapshot the set of verdicts was chosen under.
    generation: u64,
    /// (bundle id, verdict) for every bundle the decision may consult. Few
    /// entries: the trust domain's, plus one per `ca_file` the SANs lead to.
    verdicts: Vec<([u8; 32], Verdict)>,
}

impl Evidence {
    /// Gathers the verdicts the decision may need for `certificate` under
    /// `registry`, judged at `now` (Unix seconds).
    pub fn gather(certificate: Arc<PeerCertificate>, registry: &Registry, now: i64) -> Evidence {
        Evidence::gather_reusing(certificate, registry, now, &[])
    }

    /// Parses and gathers in one go, without a memo (tools, tests, fuzzing).
    pub fn from_forwarded(
        forwarded: &str,
        registry: &Registry,
        now: i64,
    ) -> Result<Evidence, CertError> {
        let certificate = Arc::new(PeerCertificate::from_forwarded(forwarded)?);
        Ok(Evidence::gather(certificate, registry, now))
    }

    /// Gathers again under `registry` at `now`, reusing every verdict of
    /// `self` that is for a bundle of the same content and still holds.
    fn refresh(&self, registry: &Registry, now: i64) -> Evidence {
        Evidence::gather_reusing(self.certificate.clone(), registry, now, &self.verdicts)
    }

    fn gather_reusing(
        certificate: Arc<PeerCertificate>,
        registry: &Registry,
        now: i64,
        known: &[([u8; 32], Verdict)],
    ) -> Evidence {
        let svid = trust::svid_trust_domain(certificate.uri_sans()).map(|d| d.map(Box::from));
        let mut verdicts: Vec<([u8; 32], Verdict)> = Vec::new();
        let domain = svid.as_ref().ok().and_then(Option::as_deref);
        for bundle in consulted_bundles(&certificate, domain, registry) {
            let id = bundle.id();
            if verdicts.iter().any(|(seen, _)| *seen == id) {
                continue;
            }
            let verdict = known
                .iter()
                .find(|(known, verdict)| *known == id && verdict.holds_at(now))
                .map(|(_, verdict)| *verdict)
                .unwrap_or_else(|| bundle.verify(certificate.der(), now));
            verdicts.push((id, verdict));
        }
        Evidence {
            certificate,
            svid,
            generation: registry.generation,
            verdicts,
        }
    }

    /// The certificate's SPIFFE trust domain (`None` without a `spiffe:`
    /// URI SAN), or why its URI SANs are not a valid X509-SVID.
    pub fn svid_trust_domain(&self) -> Result<Option<&str>, SvidError> {
        self.svid.as_ref().map(Option::as_deref).map_err(|e| *e)
    }

    /// The verdict gathered for `bundle`, if it was.
    pub fn verdict(&self, bundle: &Bundle) -> Option<&Verdict> {
        let id = bundle.id();
        self.verdicts
            .iter()
            .find(|(known, _)| *known == id)
            .map(|(_, verdict)| verdict)
    }

    /// Whether the certificate chains to `bundle` at `now`. A bundle that
    /// was not gathered, or a verdict that does not answer for `now`, is
    /// untrusted: the decision fails closed.
    pub fn trusted_by(&self, bundle: &Bundle, now: i64) -> bool {
        self.verdict(bundle)
            .is_some_and(|v| v.holds_at(now) && v.is_trusted())
    }

    /// True when this evidence can answer for `registry` at `now`.
    fn answers_for(&self, registry: &Registry, now: i64) -> bool {
        self.generation == registry.generation && self.verdicts.iter().all(|(_, v)| v.holds_at(now))
    }
}

/// The bundles the decision may consult for `certificate`: its SPIFFE trust
/// domain's (`domain`), when `trust_domains` lists it, and the `ca_file`
/// bundle of every service one of its SANs names.
fn consulted_bundles<'r>(
    certificate: &'r PeerCertificate,
    domain: Option<&str>,
    registry: &'r Registry,
) -> impl Iterator<Item = &'r Bundle> {
    let domain = domain.and_then(|td| registry.trust_domain(td));
    let services = certificate.sans.iter().filter_map(|san| {
        registry
            .service_for_principal(san.kind, &san.value)
            .and_then(|service| service.ca.as_deref())
    });
    domain.into_iter().chain(services)
}

/// Evidence keyed by the exact forwarded string. When full, the cache is
/// emptied: crude, but O(1), bounded, and only an attacker cycling through
/// many valid certificates would notice. Failures are not cached.
pub struct EvidenceCache {
    entries: Mutex<HashMap<Box<str>, Arc<Evidence>, TailHash>>,
    capacity: usize,
}

/// How many trailing bytes of a forwarded certificate its memo key hashes.
const KEY_TAIL: usize = 128;

/// Hashes a key by its length and last [`KEY_TAIL`] bytes (keyed SipHash,
/// as std's default). The tail of a PEM certificate is its signature, which
/// tells certificates apart; hashing all ~1.5 KiB on every Check was the
/// memo's largest cost. Equality still compares whole strings.
#[derive(Clone, Default)]
struct TailHash(RandomState);

struct TailHasher<H>(H);

impl BuildHasher for TailHash {
    type Hasher = TailHasher<<RandomState as BuildHasher>::Hasher>;

    fn build_hasher(&self) -> Self::Hasher {
        TailHasher(self.0.build_hasher())
    }
}

impl<H: Hasher> Hasher for TailHasher<H> {
    fn write(&mut self, bytes: &[u8]) {
        self.0.write_usize(bytes.len());
        self.0.write(&bytes[bytes.len().saturating_sub(KEY_TAIL)..]);
    }

    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

impl EvidenceCache {
    pub fn new(capacity: usize) -> Self {
        EvidenceCache {
            entries: Mutex::new(HashMap::with_capacity_and_hasher(
                capacity.min(1024),
                TailHash::default(),
            )),
            capacity,
        }
    }

    /// The evidence for `forwarded` under `registry` at `now` (Unix
    /// seconds), from the memo when its entry answers for both.
    pub fn resolve(
        &self,
        forwarded: &str,
        registry: &Registry,
        now: i64,
    ) -> Result<Arc<Evidence>, CertError> {
        let hit = self
            .entries
            .lock()
            .ok()
            .and_then(|m| m.get(forwarded).cloned());
        let evidence = match hit {
            Some(e) if e.answers_for(registry, now) => return Ok(e),
            // Same certificate, new policy or time: keep the parse and the
            // verdicts that still hold, redo the rest.
            Some(e) => Arc::new(e.refresh(registry, now)),
            None => Arc::new(Evidence::from_forwarded(forwarded, registry, now)?),
        };
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= self.capacity {
                entries.clear();
            }
            entries.insert(forwarded.into(), evidence.clone());
        }
        Ok(evidence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_with_the_same_tail_stay_distinct() {
        let tail = "x".repeat(KEY_TAIL);
        let (a, b) = (format!("a{tail}"), format!("b{tail}"));
        let hash = TailHash::default();
        assert_eq!(hash.hash_one(a.as_str()), hash.hash_one(b.as_str()));
        assert_ne!(hash.hash_one(a.as_str()), hash.hash_one(&tail[1..]));
        let mut map: HashMap<Box<str>, u8, TailHash> = HashMap::with_hasher(hash);
        map.insert(a.as_str().into(), 1);
        map.insert(b.as_str().into(), 2);
        assert_eq!(
            (map.get(a.as_str()), map.get(b.as_str())),
            (Some(&1), Some(&2))
        );
        assert_eq!(map.get(tail.as_str()), None);
    }
}
