//! The instruments of the SPEC's metrics table, created once.
//!
//! Instruments live in a process-wide [`OnceLock`]: they are built when the
//! export pipeline starts and never per request (building one costs a lookup
//! and allocations; recording on a ready one costs ~100 ns). Without an
//! export pipeline the lock stays empty and recording is a single atomic load.
//!
//! Every attribute value is bounded: it is a `&'static str` from a closed
//! set (`result`, `reason`, `mode`, `kind`), or an id the *registry* defines
//! (service ids, key ids, kids), or `"unknown"`. Nothing taken from a request
//! (principals, headers, token claims) ever becomes an attribute value, so an
//! attacker cannot grow the series count (the SDK caps each instrument at
//! 2,000 series, after which values fold into an overflow series).

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge};

use crate::check::{Decision, Mode, Reason};
use crate::server::RegistrySlot;
use crate::token::VerifyError;

/// `reason` on an allowed Check (and on a successful token verification):
/// the attribute is always present so dashboards can group by it.
pub const NO_REASON: &str = "none";
/// `service` when the caller's service is not known.
pub const UNKNOWN_SERVICE: &str = "unknown";
/// `reason` on `tokens.verified` when a well-formed token fails its
/// certificate binding (`cnf`), which is not a `VerifyError`.
pub const CERTIFICATE_BINDING: &str = "certificate_binding";
/// The alert a token with a bad signature raises: someone is forging tokens
/// or holds an old secret.
pub const INVALID_TOKEN_SIGNATURE: &str = "invalid_token_signature";

/// Check durations are micro- to milliseconds; the SDK's default buckets
/// (0, 5, 10, 25 … seconds) would put every Check in the first one.
const DURATION_BUCKETS: [f64; 14] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5,
];

struct Instruments {
    checks: Counter<u64>,
    check_duration: Histogram<f64>,
    tokens_issued: Counter<u64>,
    tokens_verified: Counter<u64>,
    security_alerts: Counter<u64>,
    registry_reloads: Counter<u64>,
    /// Observable gauges report through their callbacks; the handles are
    /// kept so the registrations visibly belong to this struct.
    _registry_services: ObservableGauge<u64>,
    _credentials_expiry: ObservableGauge<i64>,
}

static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

/// Creates every instrument on `meter`. The gauges read the registry
/// snapshot in `registry` at each collection (on the exporter's thread),
/// so they always describe the registry that is serving. A second call
/// keeps the first set.
pub fn install(meter: &Meter, registry: RegistrySlot) {
    INSTRUMENTS.get_or_init(|| build(meter, registry));
}

fn build(meter: &Meter, registry: RegistrySlot) -> Instruments {
    let services_slot = registry.clone();
    Instruments {
        checks: meter
            .u64_counter("service_auth.checks")
            .with_description("Check decisions")
            .build(),
        check_duration: meter
            .f64_histogram("service_auth.check.duration")
            .with_unit("s")
            .with_description("Time to decide a Check, from request decoded to response built")
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build(),
        tokens_issued: meter
            .u64_counter("service_auth.tokens.issued")
            .with_description("Tokens issued by allowed Checks")
            .build(),
        tokens_verified: meter
            .u64_counter("service_auth.tokens.verified")
            .with_description("Incoming tokens verified on verify-mode routes")
            .build(),
        security_alerts: meter
            .u64_counter("service_auth.security.alerts")
            .with_description("Denials that suggest stolen or forged credentials")
            .build(),
        registry_reloads: meter
            .u64_counter("service_auth.registry.reloads")
            .with_description("Registry reload attempts")
            .build(),
        _registry_services: meter
            .u64_observable_gauge("service_auth.registry.services")
            .with_description("Services in the serving registry")
            .with_callback(move |observer| {
                if let Some(shared) = services_slot.get() {
                    observer.observe(shared.load().services().len() as u64, &[]);
                }
            })
            .build(),
        _credentials_expiry: meter
            .i64_observable_gauge("service_auth.credentials.expiry")
            .with_unit("s")
            .with_description("Seconds until a credential expires (negative: expired)")
            .with_callback(move |observer| {
                let now = unix_now();
                let from_registry = registry
                    .get()
                    .map(|shared| super::credentials::expiries(&shared.load()))
                    .unwrap_or_default();
                let listener = super::credentials::listener_expiry();
                for expiry in from_registry.into_iter().chain(listener) {
                    observer.observe(
                        expiry.not_after - now,
                        &[
                            KeyValue::new("kind", expiry.kind),
                            KeyValue::new("service", expiry.service),
                            KeyValue::new("id", expiry.id),
                        ],
                    );
                }
            })
            .build(),
    }
}

/// Records one Check decision and how long it took.
pub fn record_check(decision: &Decision<'_>, elapsed: Duration) {
    let Some(m) = INSTRUMENTS.get() else {
        return;
    };
    let mode = decision.mode();
    let (result, reason, service) = match decision {
        Decision::Allow(a) => ("allow", NO_REASON, a.service),
        Decision::Deny(d) => ("deny", d.reason.as_str(), d.service),
    };
    let service = service.unwrap_or(UNKNOWN_SERVICE).to_owned();
    m.checks.add(
        1,
        &[
            KeyValue::new("result", result),
            KeyValue::new("reason", reason),
            KeyValue::new("service", service.clone()),
            KeyValue::new("mode", mode.as_str()),
        ],
    );
    m.check_duration
        .record(elapsed.as_secs_f64(), &[KeyValue::new("result", result)]);

    if let (Decision::Allow(a), Mode::Issue) = (decision, mode) {
        m.tokens_issued.add(
            1,
            &[
                KeyValue::new("service", service),
                KeyValue::new("kid", a.kid.to_owned()),
            ],
        );
    }
    if let Some((result, reason)) = token_verification(decision) {
        m.tokens_verified.add(
            1,
            &[
                KeyValue::new("result", result),
                KeyValue::new("reason", reason),
            ],
        );
    }
    if let Some(kind) = alert(decision) {
        m.security_alerts.add(1, &[KeyValue::new("kind", kind)]);
    }
}

/// Records one registry reload attempt.
pub fn record_reload(success: bool) {
    if let Some(m) = INSTRUMENTS.get() {
        let result = if success { "success" } else { "failure" };
        m.registry_reloads
            .add(1, &[KeyValue::new("result", result)]);
    }
}

/// The `tokens.verified` outcome of a verify-mode Check, as
/// `(result, reason)`. A token that verified and then failed the route's
/// scope still counts as verified: the token was good, the request was not.
pub fn token_verification(decision: &Decision<'_>) -> Option<(&'static str, &'static str)> {
    match decision {
        Decision::Allow(a) if a.mode == Mode::Verify => Some(("success", NO_REASON)),
        Decision::Deny(d) if d.mode == Mode::Verify => Some(match (d.token_error, d.reason) {
            (Some(e), _) => ("failure", e.as_str()),
            (None, Reason::ScopeNotAllowed) => ("success", NO_REASON),
            (None, _) => ("failure", CERTIFICATE_BINDING),
        }),
        _ => None,
    }
}

/// The security-alert kind a decision raises, if any.
pub fn alert(decision: &Decision<'_>) -> Option<&'static str> {
    let Decision::Deny(d) = decision else {
        return None;
    };
    if d.token_error == Some(VerifyError::BadSignature) {
        return Some(INVALID_TOKEN_SIGNATURE);
    }
    d.reason.alert()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Denial;

    fn denial(mode: Mode, reason: Reason, token_error: Option<VerifyError>) -> Decision<'static> {
        Decision::Deny(Denial {
            mode,
            reason,
            service: None,
            token_error,
        })
    }

    #[test]
    fn token_verification_outcomes() {
        let bad_sig = denial(
            Mode::Verify,
            Reason::InvalidToken,
            Some(VerifyError::BadSignature),
        );
        assert_eq!(
            token_verification(&bad_sig),
            Some(("failure", "bad_signature"))
        );
        let scope = denial(Mode::Verify, Reason::ScopeNotAllowed, None);
        assert_eq!(token_verification(&scope), Some(("success", NO_REASON)));
        let cnf = denial(Mode::Verify, Reason::InvalidToken, None);
        assert_eq!(
            token_verification(&cnf),
            Some(("failure", CERTIFICATE_BINDING))
        );
        let issue = denial(Mode::Issue, Reason::InvalidApiKey, None);
        assert_eq!(token_verification(&issue), None);
    }

    #[test]
    fn alerts_cover_stolen_credentials_and_forged_tokens() {
        let forged = denial(
            Mode::Verify,
            Reason::InvalidToken,
            Some(VerifyError::BadSignature),
        );
        assert_eq!(alert(&forged), Some(INVALID_TOKEN_SIGNATURE));
        let expired = denial(
            Mode::Verify,
            Reason::ExpiredToken,
            Some(VerifyError::Expired),
        );
        assert_eq!(alert(&expired), None);
        for reason in Reason::ALL {
            assert_eq!(alert(&denial(Mode::Issue, reason, None)), reason.alert());
        }
    }
}
