//! Failed-authentication throttling: a caller that failed `failures` Checks
//! within `window` is refused (429, `too_many_failures`) until that window
//! passes, before any hashing of API keys or checking of signatures.
//!
//! The server asks [`Throttle::admit`] before deciding and records the
//! outcome through the returned [`Admitted`] after; while no caller is
//! tracked, admitting costs one atomic load. A caller is the SHA-256
//! of its forwarded certificate, else its source IP address (the port is
//! ignored: a new connection is not a new caller). Only enforced
//! "unauthenticated" denials (401) count as failures: a scope refusal comes
//! from an authenticated caller, an internal error is not the caller's
//! doing, a report-mode `would_deny` must not block anyone, and a throttled
//! refusal does not extend its own window. A success resets nothing:
//! failures expire only with their window, so interleaving valid requests
//! buys no extra guesses, and one caller's success never touches another's
//! count.
//!
//! Memory is bounded by `max_tracked`: callers live in an LRU map and the
//! least recently seen is forgotten first. Each window is fixed from the
//! caller's first failure in it (one timestamp and a counter per caller,
//! not a timestamp per failure), so a caller may fail up to
//! `2 × failures - 1` times in a span shorter than `window` across two
//! windows; never more. The clock is injected so tests need not wait.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::check::{Decision, Outcome};
use crate::enforcement::Disposition;
use crate::identity::PeerCertificate;
use crate::registry::ThrottleSettings;
use crate::request::Attributes;

/// Where the throttle reads the time.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The system's monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Who is throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller {
    /// SHA-256 of the forwarded certificate's DER.
    Certificate([u8; 32]),
    /// `source.address`, without the port.
    Address(IpAddr),
}

impl Caller {
    /// The caller of a Check: its forwarded certificate's SHA-256, else its
    /// source IP address. `None` when neither is usable (no certificate and
    /// a Unix-socket or unparsable peer): such Checks are not throttled,
    /// since lumping them together would let one caller lock out the rest.
    pub fn of(attributes: &Attributes<'_>) -> Option<Caller> {
        if !attributes.certificate.is_empty()
            && let Some(sha256) = PeerCertificate::forwarded_sha256(attributes.certificate)
        {
            return Some(Caller::Certificate(sha256));
        }
        let (address, _port) = attributes.source_address?;
        address.parse().ok().map(Caller::Address)
    }
}

/// A caller's failures in its current window.
#[derive(Debug, Clone, Copy)]
struct Failures {
    since: Instant,
    count: u32,
}

/// A refused caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// Until its window passes.
    pub retry_after: Duration,
}

impl Throttled {
    /// `retry_after` in whole seconds, rounded up (at least 1), for the
    /// `retry-after` header.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        secs.max(1)
    }
}

/// The failure counts of recent callers. Shared by every Check; outlives
/// registry reloads (a reload reads the settings anew on the next Check).
pub struct Throttle {
    clock: Box<dyn Clock>,
    callers: Mutex<LruCache<Caller, Failures>>,
    /// `callers.len()`, readable without the lock (gauge, disabled path).
    tracked: AtomicUsize,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::with_clock(SystemClock)
    }
}

impl Throttle {
    /// A throttle on the system clock.
    pub fn new() -> Self {
        Throttle::default()
    }

    /// A throttle reading `clock` (tests advance it by hand).
    pub fn with_clock(clock: impl Clock + 'static) -> Self {
        Throttle {
            clock: Box::new(clock),
            // Unbounded here, bounded by `max_tracked` on insert: the bound
            // comes from the registry and may change on reload, and a
            // bounded map would allocate all of its capacity up front.
            callers: Mutex::new(LruCache::unbounded()),
            tracked: AtomicUsize::new(0),
        }
    }

    /// Callers currently tracked.
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    /// Before deciding: refuses a caller that has used up its failures in
    /// its current window. `settings` is the serving registry's `throttle`;
    /// `None` turns throttling off (and forgets every caller).
    pub fn admit<'q>(
        &self,
        attributes: &Attributes<'q>,
        settings: Option<&ThrottleSettings>,
    ) -> Result<Admitted<'_, 'q>, Throttled> {
        let pass = |settings: Option<&ThrottleSettings>, caller| {
            Ok(Admitted {
                throttle: self,
                attributes: *attributes,
                settings: settings.copied(),
                caller,
            })
        };
        let Some(settings) = settings else {
            if self.tracked() > 0 {
                let mut callers = self.lock();
                callers.clear();
                self.tracked.store(0, Ordering::Relaxed);
            }
            return pass(None, None);
        };
        // Nobody tracked, nobody to refuse: naming the caller (a SHA-256 of
        // its certificate) waits until it fails, if it does.
        if self.tracked() == 0 {
            return pass(Some(settings), None);
        }
        let Some(caller) = Caller::of(attributes) else {
            return pass(Some(settings), None);
        };
        let now = self.clock.now();
        // `get` also marks the caller as recently seen.
        if let Some(f) = self.lock().get(&caller) {
            let ends = f.since + settings.window;
            if f.count >= settings.failures.get() && now < ends {
                return Err(Throttled {
                    retry_after: ends - now,
                });
            }
        }
        pass(Some(settings), Some(caller))
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<Caller, Failures>> {
        // The map holds plain counters: one a panicking thread left behind
        // is still usable.
        self.callers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fail(&self, caller: Caller, settings: &ThrottleSettings) {
        let now = self.clock.now();
        let mut callers = self.lock();
        match callers.get_mut(&caller) {
            Some(f) if now < f.since + settings.window => f.count = f.count.saturating_add(1),
            Some(f) => {
                *f = Failures {
                    since: now,
                    count: 1,
                }
            }
            None => {
                callers.push(
                    caller,
                    Failures {
                        since: now,
                        count: 1,
                    },
                );
            }
        }
        while callers.len() > settings.max_tracked.get() {
            callers.pop_lru();
        }
        self.tracked.store(callers.len(), Ordering::Relaxed);
    }
}

/// A Check the throttle let through. Hand it the outcome with
/// [`Admitted::record`].
#[must_use = "record the outcome, or failures are never counted"]
pub struct Admitted<'t, 'q> {
    throttle: &'t Throttle,
    attributes: Attributes<'q>,
    /// `None`: throttling is off.
    settings: Option<ThrottleSettings>,
    /// The caller, when admitting it needed its name.
    caller: Option<Caller>,
}

impl Admitted<'_, '_> {
    /// After answering: counts the Check against its caller when it was
    /// refused as unauthenticated (and not only reported).
    pub fn record(self, decision: &Decision<'_>, disposition: Disposition) {
        let Some(settings) = self.settings else {
            return;
        };
        if !counts_as_failure(decision, disposition) {
            return;
        }
        if let Some(caller) = self.caller.or_else(|| Caller::of(&self.attributes)) {
            self.throttle.fail(caller, &settings);
        }
    }
}

/// An enforced 401: the caller could not authenticate.
fn counts_as_failure(decision: &Decision<'_>, disposition: Disposition) -> bool {
    disposition == Disposition::Enforced
        && matches!(decision, Decision::Deny(d) if d.reason.outcome() == Outcome::Unauthenticated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{Denial, Mode, Reason};
    use crate::wire::CheckView;
    use envoy_types::pb::envoy::config::core::v3::address::Address;
    use envoy_types::pb::envoy::config::core::v3::{SocketAddress, socket_address};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    use std::num::{NonZeroU32, NonZeroUsize};
    use std::sync::Arc;

    /// A clock tests move by hand.
    #[derive(Clone)]
    struct Manual(Arc<Mutex<Instant>>);

    impl Manual {
        fn new() -> Self {
            Manual(Arc::new(Mutex::new(Instant::now())))
        }
        fn advance(&self, by: Duration) {
            *self.0.lock().unwrap() += by;
        }
    }

    impl Clock for Manual {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    fn settings(failures: u32, window_secs: u64, max_tracked: usize) -> ThrottleSettings {
        ThrottleSettings {
            failures: NonZeroU32::new(failures).unwrap(),
            window: Duration::from_secs(window_secs),
            max_tracked: NonZeroUsize::new(max_tracked).unwrap(),
        }
    }

    fn from(ip: &str) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    address: Some(envoy_types::pb::envoy::config::core::v3::Address {
                        address: Some(Address::SocketAddress(SocketAddress {
                            address: ip.into(),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(40_000)),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    fn deny(reason: Reason) -> Decision<'static> {
        Decision::Deny(Denial {
            mode: Mode::Issue,
            reason,
            service: None,
            token: None,
        })
    }

    fn caller_of(req: &CheckRequest) -> Option<Caller> {
        let bytes = prost::Message::encode_to_vec(req);
        let view = CheckView::decode(&bytes).unwrap();
        Caller::of(&Attributes::from_view(&view))
    }

    /// One Check from `req` that, when let through, ends as `decision`.
    fn check(
        throttle: &Throttle,
        req: &CheckRequest,
        settings: &ThrottleSettings,
        decision: &Decision<'_>,
    ) -> Result<(), Throttled> {
        let bytes = prost::Message::encode_to_vec(req);
        let view = CheckView::decode(&bytes).unwrap();
        let attributes = Attributes::from_view(&view);
        let admitted = throttle.admit(&attributes, Some(settings))?;
        admitted.record(decision, Disposition::Enforced);
        Ok(())
    }

    #[test]
    fn the_failure_after_the_limit_is_refused_until_the_window_passes() {
        let clock = Manual::new();
        let throttle = Throttle::with_clock(clock.clone());
        let s = settings(3, 60, 100);
        let attacker = from("10.0.0.1");
        let bad = deny(Reason::InvalidApiKey);
        for _ in 0..3 {
            assert_eq!(check(&throttle, &attacker, &s, &bad), Ok(()));
        }
        clock.advance(Duration::from_millis(20_500));
        let refused = check(&throttle, &attacker, &s, &bad).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_millis(39_500));
        assert_eq!(refused.retry_after_secs(), 40);
        // Refusals do not extend the window.
        clock.advance(Duration::from_secs(39));
        assert!(check(&throttle, &attacker, &s, &bad).is_err());
        clock.advance(Duration::from_millis(500));
        assert_eq!(check(&throttle, &attacker, &s, &bad), Ok(()));
        // A new window: two more failures are allowed before the refusal.
        assert_eq!(check(&throttle, &attacker, &s, &bad), Ok(()));
        assert_eq!(check(&throttle, &attacker, &s, &bad), Ok(()));
        assert!(check(&throttle, &attacker, &s, &bad).is_err());
    }

    #[test]
    fn callers_are_counted_apart_and_successes_reset_nothing() {
        let throttle = Throttle::with_clock(Manual::new());
        let s = settings(2, 60, 100);
        let attacker = from("10.0.0.1");
        let other = from("10.0.0.2");
        let bad = deny(Reason::InvalidApiKey);
        let good = deny(Reason::ScopeNotAllowed); // 403: authenticated
        check(&throttle, &attacker, &s, &bad).unwrap();
        // Neither the other caller's success nor the attacker's own resets the count.
        check(&throttle, &other, &s, &good).unwrap();
        check(&throttle, &attacker, &s, &good).unwrap();
        check(&throttle, &attacker, &s, &bad).unwrap();
        assert!(check(&throttle, &attacker, &s, &bad).is_err());
        assert_eq!(check(&throttle, &other, &s, &bad), Ok(()));
        assert_eq!(throttle.tracked(), 2);
    }

    #[test]
    fn only_enforced_unauthenticated_denials_count() {
        let throttle = Throttle::with_clock(Manual::new());
        let s = settings(1, 60, 100);
        let req = from("10.0.0.1");
        let bytes = prost::Message::encode_to_vec(&req);
        let view = CheckView::decode(&bytes).unwrap();
        let attributes = Attributes::from_view(&view);
        for (decision, disposition) in [
            (deny(Reason::InvalidApiKey), Disposition::Reported),
            (deny(Reason::ScopeNotAllowed), Disposition::Enforced),
            (deny(Reason::InternalError), Disposition::Enforced),
        ] {
            let admitted = throttle.admit(&attributes, Some(&s)).unwrap();
            admitted.record(&decision, disposition);
        }
        assert_eq!(throttle.tracked(), 0);
        let admitted = throttle.admit(&attributes, Some(&s)).unwrap();
        admitted.record(&deny(Reason::IdentityMismatch), Disposition::Enforced);
        assert!(throttle.admit(&attributes, Some(&s)).is_err());
    }

    #[test]
    fn the_least_recently_seen_caller_is_forgotten_first() {
        let throttle = Throttle::with_clock(Manual::new());
        let s = settings(1, 60, 2);
        let bad = deny(Reason::InvalidApiKey);
        let (a, b, c) = (from("10.0.0.1"), from("10.0.0.2"), from("10.0.0.3"));
        check(&throttle, &a, &s, &bad).unwrap();
        check(&throttle, &b, &s, &bad).unwrap();
        // `a` is seen again (and refused), so `b` is the least recent.
        assert!(check(&throttle, &a, &s, &bad).is_err());
        check(&throttle, &c, &s, &bad).unwrap();
        assert_eq!(throttle.tracked(), 2);
        assert!(check(&throttle, &a, &s, &bad).is_err());
        assert_eq!(check(&throttle, &b, &s, &bad), Ok(()), "b was forgotten");
    }

    #[test]
    fn turning_the_throttle_off_forgets_everyone() {
        let throttle = Throttle::with_clock(Manual::new());
        let s = settings(1, 60, 100);
        let req = from("10.0.0.1");
        check(&throttle, &req, &s, &deny(Reason::InvalidApiKey)).unwrap();
        let bytes = prost::Message::encode_to_vec(&req);
        let view = CheckView::decode(&bytes).unwrap();
        let attributes = Attributes::from_view(&view);
        assert!(throttle.admit(&attributes, None).is_ok());
        assert_eq!(throttle.tracked(), 0);
        assert!(throttle.admit(&attributes, Some(&s)).is_ok());
    }

    #[test]
    fn callers_are_ip_addresses_without_ports_when_no_certificate() {
        let a = from("10.0.0.1");
        assert_eq!(
            caller_of(&a),
            Some(Caller::Address("10.0.0.1".parse().unwrap()))
        );
        assert_eq!(caller_of(&from("not-an-ip")), None);
        assert_eq!(caller_of(&CheckRequest::default()), None);
    }
}
