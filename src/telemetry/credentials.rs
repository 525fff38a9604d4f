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
//! * `listener_certificate` — the sidecar's own `listen.tls` certificate
//!   (`service` = `"listener"`, `id` = the certificate file name), read from
//!   the listener's live TLS state so a rotation shows at once.
//!
//! All values come from the registry or the static config, never from a
//! request, so the series count is bounded by what the operator configures.

use std::sync::Arc;

use crate::registry::{Registry, Snapshot};

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
    api_keys.chain(token_keys).collect()
}
