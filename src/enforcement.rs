//! Report mode: whether a denied Check is refused or only reported.
//!
//! `check::decide` says what the policy makes of a Check; this module says
//! what is done about a denial. Under `enforcement: report` a denial is
//! answered OK without a token and counted as `would_deny`, so a team can
//! put the sidecar in front of a live service and watch what it would refuse
//! before it refuses anything. The setting comes from the route
//! (`context_extensions["enforcement"]`), else the caller's service, else
//! the registry.
//!
//! Some denials are never softened: an internal error (fail closed), a
//! malformed request and a throttled caller are refused in every mode. They
//! are about the request or the sidecar's own protection, not about the
//! policy on trial; and the throttle acts before the caller's service is
//! known (see `throttle`).

use crate::check::{Decision, Reason};
use crate::config::Enforcement;
use crate::registry::Registry;
use crate::request::Attributes;

/// What is done about a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// As decided: allowed, or refused.
    Enforced,
    /// A denial answered OK, without a token, and reported as `would_deny`.
    Reported,
}

/// The enforcement that applies to a Check whose caller authenticated as or
/// claimed `service` (when known): the route's, else the service's, else
/// the registry's.
pub fn effective(
    attributes: &Attributes<'_>,
    registry: &Registry,
    service: Option<&str>,
) -> Enforcement {
    attributes
        .route_enforcement
        .or_else(|| {
            service
                .and_then(|id| registry.service(id))
                .and_then(|s| s.enforcement)
        })
        .unwrap_or(registry.enforcement)
}

/// Whether a denial for `reason` may be only reported.
pub fn reportable(reason: Reason) -> bool {
    !matches!(
        reason,
        Reason::InternalError | Reason::TooManyFailures | Reason::MalformedRequest
    )
}

/// What is done about `decision`: a reportable denial under `report` is
/// [`Disposition::Reported`]; everything else stands.
pub fn disposition(
    decision: &Decision<'_>,
    attributes: &Attributes<'_>,
    registry: &Registry,
) -> Disposition {
    match decision {
        Decision::Deny(denial)
            if reportable(denial.reason)
                && effective(attributes, registry, denial.service) == Enforcement::Report =>
        {
            Disposition::Reported
        }
        _ => Disposition::Enforced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_policy_denials_are_reportable() {
        let never: Vec<Reason> = Reason::ALL
            .into_iter()
            .filter(|r| !reportable(*r))
            .collect();
        assert_eq!(
            never,
            [
                Reason::TooManyFailures,
                Reason::MalformedRequest,
                Reason::InternalError
            ]
        );
    }
}
