//! Credentials that expire, for the `service_auth.credentials.expiry` gauge.
//!
//! The gauge's `kind` attribute names where a credential comes from:
//!
//! * `api_key` — every registry API key with a `not_after`
//!   (`service` = its service id, `id` = the key id). Keys without one never
//!   expire and are not reported.
//! * `signing_key` — reported only for signing keys that carry an expiry
//!   date. HS256 secrets in the registry have none today, so this kind does
//!   not appear yet; a key format with an expiry adds its entries here.
//! * `listener_certificate` — the sidecar's own `listen.tls` certificate
//!   (`service` = `"listener"`, `id` = the certificate file name), read from
//!   the listener's live TLS state so a rotation shows at once.
//!
//! All values come from the registry or the static config, never from a
//! request, so the series count is bounded by what the operator configures.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use crate::listener::TlsState;
use crate::registry::Registry;

/// The listener's TLS state, once `listen.tls` is configured.
static LISTENER: OnceLock<(Arc<TlsState>, String)> = OnceLock::new();

/// Reports the listener certificate's expiry from now on; `id` names it.
pub fn track_listener_certificate(state: Arc<TlsState>, id: String) {
    let _ = LISTENER.set((state, id));
}

/// The listener certificate's expiry, when `listen.tls` is on.
pub fn listener_expiry() -> Option<Expiry> {
    let (state, id) = LISTENER.get()?;
    Some(Expiry {
        kind: "listener_certificate",
        service: "listener".to_owned(),
        id: id.clone(),
        not_after: state.not_after.load(Ordering::Relaxed),
    })
}

/// One credential and when it stops working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    pub kind: &'static str,
    pub service: String,
    pub id: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// Every expiring credential in `registry`.
pub fn expiries(registry: &Registry) -> Vec<Expiry> {
    registry
        .services()
        .iter()
        .flat_map(|service| {
            service.api_keys.iter().filter_map(|key| {
                key.not_after.map(|not_after| Expiry {
                    kind: "api_key",
                    service: service.id.clone(),
                    id: key.id.clone(),
                    not_after,
                })
            })
        })
        .collect()
}
