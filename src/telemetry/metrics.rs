//! The instruments of the metrics table, created once per pipeline.
//!
//! Instruments are built when the export pipeline starts and never per
//! request (building one costs a lookup and allocations; recording on a
//! ready one costs ~100 ns). Without an export pipeline there are none and
//! recording costs nothing.
//!
//! Every attribute value is bounded: it is a `&'static str` from a closed
//! set (`result`, `reason`, `mode`, `kind`), or an id the *registry* defines
//! (service ids, key ids, kids), or `"unknown"`. Nothing taken from a request
//! (principals, headers, token claims) ever becomes an attribute value, so an
//! attacker cannot grow the series count (the SDK caps each instrument at
//! 2,000 series, after which values fold into an overflow series).

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge};

use std::sync::Arc;

use super::credentials::ExpirySources;
use crate::check::{Decision, Mode, TokenCheck};
use crate::enforcement::Disposition;
use crate::registry::Snapshot;
use crate::throttle::Throttle;

/// `reason` on an allowed Check (and on a successful token verification):
/// the attribute is always present so dashboards can group by it.
pub const NO_REASON: &str = "none";
/// `service` when the caller's service is not known.
pub const UNKNOWN_SERVICE: &str = "unknown";
/// `reason` on `tokens.verified` when a well-formed token fails its
/// certificate binding (`cnf`), which is not a `VerifyError`.
pub const CERTIFICATE_BINDING: &str = "certificate_binding";

/// Check durations are micro- to milliseconds; the SDK's default buckets
/// (0, 5, 10, 25 … seconds) would put every Check in the first one.
const DURATION_BUCKETS: [f64; 14] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5,
];

pub(super) struct Instruments {
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
    _dev_secret: ObservableGauge<u64>,
    _throttle_tracked: ObservableGauge<u64>,
}

impl Instruments {
    /// Creates every instrument on `meter`. The gauges read the serving
    /// snapshot and `expiries` at each collection (on the exporter's thread),
    /// so they always describe what is serving now.
    pub(super) fn new(
        meter: &Meter,
        snapshot: Snapshot,
        expiries: ExpirySources,
        throttle: Arc<Throttle>,
    ) -> Self {
        let services = snapshot.clone();
        let dev_secret = snapshot.clone();
        Instruments {
            _throttle_tracked: meter
                .u64_observable_gauge("service_auth.throttle.tracked")
                .with_description("Callers the failed-authentication throttle is tracking")
                .with_callback(move |observer| {
                    observer.observe(throttle.tracked() as u64, &[]);
                })
                .build(),
            _dev_secret: meter
                .u64_observable_gauge("service_auth.dev_secret.in_use")
                .with_description(
                    "1 while any registry key is the bundled development secret (anyone can forge tokens)",
                )
                .with_callback(move |observer| {
                    if let Some(registry) = dev_secret.load() {
                        observer.observe(u64::from(registry.uses_dev_secret), &[]);
                    }
                })
                .build(),
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
                    if let Some(registry) = services.load() {
                        observer.observe(registry.services().len() as u64, &[]);
                    }
                })
                .build(),
            _credentials_expiry: meter
                .i64_observable_gauge("service_auth.credentials.expiry")
                .with_unit("s")
                .with_description("Seconds until a credential expires (negative: expired)")
                .with_callback(move |observer| {
                    let now = crate::check::unix_now();
                    for expiry in expiries.collect(&snapshot) {
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

    /// Records one Check decision, whether a denial was only reported, the
    /// kid that signed its token (issue mode) and how long it took.
    pub(super) fn record_check(
        &self,
        decision: &Decision<'_>,
        disposition: Disposition,
        kid: Option<&str>,
        elapsed: Duration,
    ) {
        let mode = decision.mode();
        let (result, reason) = match (decision, disposition) {
            (Decision::Allow(_), _) => ("allow", NO_REASON),
            (Decision::Deny(d), Disposition::Enforced) => ("deny", d.reason.as_str()),
            (Decision::Deny(d), Disposition::Reported) => ("would_deny", d.reason.as_str()),
        };
        let service = decision.service().unwrap_or(UNKNOWN_SERVICE).to_owned();
        self.check_duration
            .record(elapsed.as_secs_f64(), &[KeyValue::new("result", result)]);
        if let (Mode::Issue, Decision::Allow(_), Some(kid)) = (mode, decision, kid) {
            self.tokens_issued.add(
                1,
                &[
                    KeyValue::new("service", service.clone()),
                    KeyValue::new("kid", kid.to_owned()),
                ],
            );
        }
        self.checks.add(
            1,
            &[
                KeyValue::new("result", result),
                KeyValue::new("reason", reason),
                KeyValue::new("service", service),
                KeyValue::new("mode", mode.as_str()),
            ],
        );
        if let Some((result, reason)) = decision.token_check().map(token_verification) {
            self.tokens_verified.add(
                1,
                &[
                    KeyValue::new("result", result),
                    KeyValue::new("reason", reason),
                ],
            );
        }
        if let Some(kind) = decision.alert() {
            self.security_alerts.add(1, &[KeyValue::new("kind", kind)]);
        }
    }

    pub(super) fn record_reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.registry_reloads
            .add(1, &[KeyValue::new("result", result)]);
    }
}

/// The `tokens.verified` `(result, reason)` of a verify-mode Check. A token
/// that verified and then failed the route's scope still counts as
/// verified: the token was good, the request was not.
pub fn token_verification(check: TokenCheck) -> (&'static str, &'static str) {
    match check {
        TokenCheck::Verified => ("success", NO_REASON),
        TokenCheck::Rejected(e) => ("failure", e.as_str()),
        TokenCheck::Unbound => ("failure", CERTIFICATE_BINDING),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::VerifyError;

    #[test]
    fn token_verification_outcomes() {
        assert_eq!(
            token_verification(TokenCheck::Rejected(VerifyError::BadSignature)),
            ("failure", "bad_signature")
        );
        assert_eq!(
            token_verification(TokenCheck::Verified),
            ("success", NO_REASON)
        );
        assert_eq!(
            token_verification(TokenCheck::Unbound),
            ("failure", CERTIFICATE_BINDING)
        );
    }
}
