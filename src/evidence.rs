//! The expensive facts about a forwarded certificate, gathered before the
//! decision and memoized across Checks.
//!
//! Parsing a certificate costs microseconds and verifying a CA signature
//! tens of them, while Envoy forwards the same few client certificates over
//! and over (callers reuse their connections). So the decision does neither:
//! it reads an [`Evidence`] — the parsed certificate plus the trust verdict
//! for every CA the registry could ask about — as plain data. An
//! [`EvidenceCache`] keeps evidence per forwarded string; a verdict belongs
//! to the registry snapshot it was computed under (`Registry::generation`)
//! and is recomputed for a new one. A hit is indistinguishable from
//! gathering again: everything that depends on time or on the request
//! (validity window, revocation, pins, API key) is still checked by the
//! decision on every Check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::identity::{CertError, PeerCertificate, TrustAnchor};
use crate::registry::Registry;

/// A parsed peer certificate and its trust verdicts under one registry snapshot.
#[derive(Debug)]
pub struct Evidence {
    pub certificate: Arc<PeerCertificate>,
    /// Registry snapshot the verdicts were computed under.
    generation: u64,
    /// (anchor id, issued by it) for the CA of every service the
    /// certificate's SANs name. Few entries: one per named service.
    verdicts: Vec<([u8; 32], bool)>,
}

impl Evidence {
    /// Gathers the trust verdicts the decision may need for `certificate`
    /// under `registry`: the CA of each service one of its SANs names.
    pub fn gather(certificate: Arc<PeerCertificate>, registry: &Registry) -> Evidence {
        let mut verdicts: Vec<([u8; 32], bool)> = Vec::new();
        for san in &certificate.sans {
            let anchor = registry
                .service_for_principal(san.kind, &san.value)
                .and_then(|service| service.ca.as_ref());
            if let Some(anchor) = anchor
                && !verdicts.iter().any(|(id, _)| *id == anchor.id)
            {
                verdicts.push((anchor.id, certificate.is_issued_by(anchor)));
            }
        }
        Evidence {
            certificate,
            generation: registry.generation,
            verdicts,
        }
    }

    /// Parses and gathers in one go, without a memo (tools, tests, fuzzing).
    pub fn from_forwarded(forwarded: &str, registry: &Registry) -> Result<Evidence, CertError> {
        let certificate = Arc::new(PeerCertificate::from_forwarded(forwarded)?);
        Ok(Evidence::gather(certificate, registry))
    }

    /// Whether `anchor` issued the certificate. An anchor that was not
    /// gathered is untrusted: the decision fails closed.
    pub fn issued_by(&self, anchor: &TrustAnchor) -> bool {
        self.verdicts
            .iter()
            .any(|(id, verdict)| *id == anchor.id && *verdict)
    }
}

/// Evidence keyed by the exact forwarded string. When full, the cache is
/// emptied: crude, but O(1), bounded, and only an attacker cycling through
/// many valid certificates would notice. Failures are not cached.
pub struct EvidenceCache {
    entries: Mutex<HashMap<Box<str>, Arc<Evidence>>>,
    capacity: usize,
}

impl EvidenceCache {
    pub fn new(capacity: usize) -> Self {
        EvidenceCache {
            entries: Mutex::new(HashMap::with_capacity(capacity.min(1024))),
            capacity,
        }
    }

    /// The evidence for `forwarded` under `registry`, from the memo when it
    /// holds an entry for this snapshot.
    pub fn resolve(
        &self,
        forwarded: &str,
        registry: &Registry,
    ) -> Result<Arc<Evidence>, CertError> {
        let hit = self
            .entries
            .lock()
            .ok()
            .and_then(|m| m.get(forwarded).cloned());
        let evidence = match hit {
            Some(e) if e.generation == registry.generation => return Ok(e),
            // Same certificate, new policy: keep the parse, redo the verdicts.
            Some(e) => Arc::new(Evidence::gather(e.certificate.clone(), registry)),
            None => Arc::new(Evidence::from_forwarded(forwarded, registry)?),
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
