//! Credentials that expire, for the `service_auth.credentials.expiry` gauge.
//!
//! The gauge's `kind` attribute names where a credential comes from:
//!
//! * `api_key` — every registry API key with a `not_after`
//!   (`service` = its service id, `id` = the key id). Keys without one never
//!   expire and are not reported.
//! * `signing_key` — every `token.keys` entry with a `not_after`
//!   (`service` = `"token"`, `id` = its kid), whatever its algorithm and
//!   whether it signs or only verifies. Keys without one are not reported.
//! * `ca` — every certificate (root or intermediate) of every CA bundle in
//!   use: `service` = the id of the service whose `ca_file` it is, or
//!   `trust_domain:<name>` for a `trust_domains` bundle; `id` = the
//!   certificate's subject. Two certificates of one bundle with the same
//!   subject (a rotation in progress) report the one that expires first.
//! * `listener_certificate` — the sidecar's own `listen.tls` certificate
//!   (`service` = `"listener"`, `id` = the certificate file name), read from
//!   the listener's live TLS state so a rotation shows at once.
//!
//! All values come from the registry or the static config, never from a
//! request, so the series count is bounded by what the operator configures.

use std::sync::Arc;

use crate::registry::{Registry, Snapshot};
use crate::trust::Bundle;

/// One credential and when it stops working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    pub kind: &'static str,
    pub service: String,
    pub id: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// A credential outside the registry (the listener's certificate) that
/// reports its expiry when asked. Owners hand one in at start; telemetry
/// knows nothing else about them.
pub type ExpirySource = Arc<dyn Fn() -> Option<Expiry> + Send + Sync>;

/// The registry's credentials plus any extra sources.
#[derive(Clone, Default)]
pub struct ExpirySources(pub Vec<ExpirySource>);

impl ExpirySources {
    /// Every expiring credential, now.
    pub fn collect(&self, snapshot: &Snapshot) -> Vec<Expiry> {
        let mut all = snapshot.load().map(|r| expiries(&r)).unwrap_or_default();
        all.extend(self.0.iter().filter_map(|source| source()));
        all
    }
}

/// Every expiring credential in `registry`.
pub fn expiries(registry: &Registry) -> Vec<Expiry> {
    let api_keys = registry.services().iter().flat_map(|service| {
        service.api_keys.iter().filter_map(|key| {
            key.not_after.map(|not_after| Expiry {
                kind: "api_key",
                service: service.id.clone(),
                id: key.id.clone(),
                not_after,
            })
        })
    });
    let token_keys = registry.token.keys().iter().filter_map(|key| {
        key.not_after.map(|not_after| Expiry {
            kind: "signing_key",
            service: "token".to_owned(),
            id: key.kid().to_owned(),
            not_after,
        })
    });
    let mut all: Vec<Expiry> = api_keys.chain(token_keys).collect();
    for (name, bundle) in registry.trust_domains() {
        push_ca(&mut all, &format!("trust_domain:{name}"), bundle);
    }
    for service in registry.services() {
        if let Some(bundle) = &service.ca {
            push_ca(&mut all, &service.id, bundle);
        }
    }
    all
}

/// The certificates of `bundle`, one series per subject.
fn push_ca(all: &mut Vec<Expiry>, owner: &str, bundle: &Bundle) {
    let start = all.len();
    for cert in bundle.certificates() {
        let same = all[start..].iter_mut().find(|e| e.id == cert.subject);
        match same {
            Some(e) => e.not_after = e.not_after.min(cert.not_after),
            None => all.push(Expiry {
                kind: "ca",
                service: owner.to_owned(),
                id: cert.subject.clone(),
                not_after: cert.not_after,
            }),
        }
    }
}
