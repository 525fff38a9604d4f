//! The authorization decision, as a pure function.
//!
//! [`decide`] takes the parsed request ([`Input`]), a registry snapshot and
//! the current time, and returns a [`Decision`]: a [`Grant`] saying who the
//! caller is and what it may do, or a [`Denial`] with a [`Reason`]. It does
//! no I/O, takes no locks, draws no random numbers and never fails; the
//! expensive facts about the certificate arrive already gathered
//! (`evidence`). Signing the token is a step after it (`token::issue`), and
//! the gRPC layer only translates.

use std::borrow::Cow;

use subtle::ConstantTimeEq;

use crate::evidence::Evidence;
use crate::identity::{CertError, PeerCertificate, San};
use crate::registry::{self, Registry, Service};
use crate::request::{Attributes, Header, Headers, RouteMode};
use crate::token::{self, Subject, VerifyError};
use crate::trust;

/// API keys longer than this are refused without hashing.
pub use crate::registry::MAX_API_KEY_LEN;
/// Scope lists longer than this are refused.
pub const MAX_SCOPE_LEN: usize = 4096;

/// The header verify mode sets to the verified token's subject.
pub use crate::registry::SERVICE_ID_HEADER;

/// Seconds since the Unix epoch: the `now` every decision and token is
/// judged at. A clock before 1970 reads as 0, which fails every validity
/// window closed.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Everything the decision reads about one Check.
#[derive(Debug, Clone, Copy)]
pub struct Input<'q> {
    pub attributes: Attributes<'q>,
    /// The forwarded certificate, parsed and with its trust verdicts
    /// gathered; `None` when Envoy forwarded none.
    pub certificate: Option<Result<&'q Evidence, CertError>>,
}

/// Why a request was refused. The caller only ever sees the HTTP status
/// class; this goes to logs, metrics and Envoy's dynamic metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    MissingIdentity,
    UnknownPrincipal,
    AmbiguousPrincipal,
    MissingApiKey,
    InvalidApiKey,
    ExpiredApiKey,
    IdentityMismatch,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRevoked,
    CertificateUntrusted,
    CertificatePinMismatch,
    MalformedCertificate,
    ScopeNotAllowed,
    InvalidToken,
    ExpiredToken,
    /// Refused before any decision: the caller failed too often lately
    /// (`throttle`). Never returned by [`decide`].
    TooManyFailures,
    /// The request itself could not be read (undecodable or too large).
    MalformedRequest,
    InternalError,
}

/// What the caller is told, by status class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Unauthenticated,
    Forbidden,
    /// Throttled: 429 with `retry-after`.
    TooManyRequests,
    BadRequest,
    Unavailable,
}

impl Reason {
    pub const ALL: [Reason; 19] = [
        Reason::MissingIdentity,
        Reason::UnknownPrincipal,
        Reason::AmbiguousPrincipal,
        Reason::MissingApiKey,
        Reason::InvalidApiKey,
        Reason::ExpiredApiKey,
        Reason::IdentityMismatch,
        Reason::CertificateExpired,
        Reason::CertificateNotYetValid,
        Reason::CertificateRevoked,
        Reason::CertificateUntrusted,
        Reason::CertificatePinMismatch,
        Reason::MalformedCertificate,
        Reason::ScopeNotAllowed,
        Reason::InvalidToken,
        Reason::ExpiredToken,
        Reason::TooManyFailures,
        Reason::MalformedRequest,
        Reason::InternalError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingIdentity => "missing_identity",
            Reason::UnknownPrincipal => "unknown_principal",
            Reason::AmbiguousPrincipal => "ambiguous_principal",
            Reason::MissingApiKey => "missing_api_key",
            Reason::InvalidApiKey => "invalid_api_key",
            Reason::ExpiredApiKey => "expired_api_key",
            Reason::IdentityMismatch => "identity_mismatch",
            Reason::CertificateExpired => "certificate_expired",
            Reason::CertificateNotYetValid => "certificate_not_yet_valid",
            Reason::CertificateRevoked => "certificate_revoked",
            Reason::CertificateUntrusted => "certificate_untrusted",
            Reason::CertificatePinMismatch => "certificate_pin_mismatch",
            Reason::MalformedCertificate => "malformed_certificate",
            Reason::ScopeNotAllowed => "scope_not_allowed",
            Reason::InvalidToken => "invalid_token",
            Reason::ExpiredToken => "expired_token",
            Reason::TooManyFailures => "too_many_failures",
            Reason::MalformedRequest => "malformed_request",
            Reason::InternalError => "internal_error",
        }
    }

    pub fn outcome(self) -> Outcome {
        match self {
            Reason::ScopeNotAllowed => Outcome::Forbidden,
            Reason::TooManyFailures => Outcome::TooManyRequests,
            Reason::MalformedRequest => Outcome::BadRequest,
            Reason::InternalError => Outcome::Unavailable,
            _ => Outcome::Unauthenticated,
        }
    }

    /// The security-alert kind this denial raises, if it is more than a
    /// plain failure (someone holding credentials they should not).
    pub fn alert(self) -> Option<&'static str> {
        match self {
            Reason::IdentityMismatch => Some("identity_mismatch"),
            Reason::CertificateRevoked => Some("certificate_revoked"),
            Reason::CertificateUntrusted => Some("certificate_untrusted"),
            Reason::CertificatePinMismatch => Some("certificate_pin_mismatch"),
            Reason::AmbiguousPrincipal => Some("ambiguous_principal"),
            _ => None,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The alert a token with a bad signature raises: someone is forging tokens
/// or holds an old secret.
pub const INVALID_TOKEN_SIGNATURE: &str = "invalid_token_signature";

/// Which of the two things a Check can do it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Authenticate certificate + API key and issue a token (the default).
    Issue,
    /// Verify an incoming mesh token.
    Verify,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Issue => "issue",
            Mode::Verify => "verify",
        }
    }
}

/// What happened to the presented token in verify mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// The token verified (the Check may still fail on the route's scope).
    Verified,
    /// The token itself was refused.
    Rejected(VerifyError),
    /// A good token bound (`cnf`) to a certificate this connection does not have.
    Unbound,
}

/// The result of a Check.
#[derive(Debug)]
pub enum Decision<'r> {
    Allow(Grant<'r>),
    Deny(Denial<'r>),
}

/// An allowed Check.
#[derive(Debug)]
pub enum Grant<'r> {
    /// Authenticated by certificate and API key: issue a token.
    Issue(IssueGrant<'r>),
    /// A valid mesh token was presented.
    Verify(VerifyGrant<'r>),
}

/// Who an issued token describes. Everything borrows from the registry.
#[derive(Debug)]
pub struct IssueGrant<'r> {
    pub service: &'r Service,
    /// The registered principal the certificate (or Envoy) presented.
    pub principal: &'r str,
    pub scopes: Scopes<'r>,
    /// SHA-256 of the forwarded certificate, to bind the token to it.
    pub certificate_sha256: Option<[u8; 32]>,
}

/// The scopes granted.
#[derive(Debug, PartialEq, Eq)]
pub enum Scopes<'r> {
    /// None were asked for: all of the service's scopes.
    All,
    /// Exactly these (the registry's copies, de-duplicated, in request order).
    Requested(Vec<&'r str>),
}

impl IssueGrant<'_> {
    /// The subject to sign a token for.
    pub fn subject(&self) -> Subject<'_> {
        let scope = match &self.scopes {
            Scopes::All => std::borrow::Cow::Borrowed(self.service.all_scopes.as_str()),
            Scopes::Requested(scopes) => std::borrow::Cow::Owned(scopes.join(" ")),
        };
        Subject {
            service: &self.service.id,
            principal: self.principal,
            scope,
            certificate_sha256: self.certificate_sha256,
        }
    }
}

/// A verified mesh token.
#[derive(Debug)]
pub struct VerifyGrant<'r> {
    /// The token's `sub`.
    pub subject: String,
    /// The registered service it names.
    pub service: &'r Service,
    pub kid: &'r str,
    pub jti: String,
}

/// A refused request.
#[derive(Debug, Clone, Copy)]
pub struct Denial<'r> {
    pub mode: Mode,
    pub reason: Reason,
    /// The service the caller authenticated as or claimed, when known.
    pub service: Option<&'r str>,
    /// Verify mode: what happened to the token.
    pub token: Option<TokenCheck>,
}

impl Denial<'_> {
    /// The denial for an internal failure (fail closed).
    pub fn internal(mode: Mode) -> Denial<'static> {
        Denial::of(mode, Reason::InternalError)
    }

    /// The denial for a request that could not be read. Its route mode is
    /// unknown; it counts as `issue`, the default.
    pub fn malformed() -> Denial<'static> {
        Denial::of(Mode::Issue, Reason::MalformedRequest)
    }

    fn of(mode: Mode, reason: Reason) -> Denial<'static> {
        Denial {
            mode,
            reason,
            service: None,
            token: None,
        }
    }

    /// The refusal of a throttled caller, made before any decision.
    pub fn throttled(mode: Mode) -> Denial<'static> {
        Denial {
            mode,
            reason: Reason::TooManyFailures,
            service: None,
            token: None,
        }
    }

    /// The security-alert kind this denial raises, if any.
    pub fn alert(&self) -> Option<&'static str> {
        match self.token {
            Some(TokenCheck::Rejected(VerifyError::BadSignature)) => Some(INVALID_TOKEN_SIGNATURE),
            _ => self.reason.alert(),
        }
    }
}

impl<'r> Decision<'r> {
    pub fn mode(&self) -> Mode {
        match self {
            Decision::Allow(Grant::Issue(_)) => Mode::Issue,
            Decision::Allow(Grant::Verify(_)) => Mode::Verify,
            Decision::Deny(d) => d.mode,
        }
    }

    /// The caller's registered service, when known.
    pub fn service(&self) -> Option<&'r str> {
        match self {
            Decision::Allow(Grant::Issue(g)) => Some(&g.service.id),
            Decision::Allow(Grant::Verify(g)) => Some(&g.service.id),
            Decision::Deny(d) => d.service,
        }
    }

    /// Verify mode: what happened to the token.
    pub fn token_check(&self) -> Option<TokenCheck> {
        match self {
            Decision::Allow(Grant::Verify(_)) => Some(TokenCheck::Verified),
            Decision::Allow(Grant::Issue(_)) => None,
            Decision::Deny(d) => d.token,
        }
    }

    /// The security-alert kind this decision raises, if any.
    pub fn alert(&self) -> Option<&'static str> {
        match self {
            Decision::Allow(_) => None,
            Decision::Deny(d) => d.alert(),
        }
    }
}

fn deny(mode: Mode, reason: Reason, service: Option<&Service>) -> Decision<'_> {
    Decision::Deny(Denial {
        mode,
        reason,
        service: service.map(|s| s.id.as_str()),
        token: None,
    })
}

/// Decides a Check at `now` (Unix seconds) against the registry snapshot.
pub fn decide<'r>(input: &Input<'_>, registry: &'r Registry, now: i64) -> Decision<'r> {
    match input.attributes.mode {
        RouteMode::Issue => issue(input, registry, now),
        RouteMode::Verify => verify(input, registry, now),
        // A route configured with a mode we do not know fails closed.
        RouteMode::Unknown => Decision::Deny(Denial::internal(Mode::Issue)),
    }
}

fn issue<'r>(input: &Input<'_>, registry: &'r Registry, now: i64) -> Decision<'r> {
    let mode = Mode::Issue;
    let attrs = &input.attributes;
    let peer = match peer_identity(input, registry, now) {
        Ok(peer) => peer,
        Err(reason) => return deny(mode, reason, None),
    };

    // Step 2: the SANs must name exactly one registered service.
    let mut matched: Option<(&Service, usize)> = None;
    for san in peer.sans() {
        if let Some(service) = registry.service_for_principal(san.kind, &san.value) {
            match matched {
                None => {
                    let index = service
                        .principals
                        .iter()
                        .position(|p| *p == san.value)
                        .unwrap_or(0);
                    matched = Some((service, index));
                }
                Some((first, _)) if !std::ptr::eq(first, service) => {
                    return deny(mode, Reason::AmbiguousPrincipal, None);
                }
                Some(_) => {}
            }
        }
    }
    let Some((service, principal)) = matched else {
        return deny(mode, Reason::UnknownPrincipal, None);
    };
    let principal = service.principals.get(principal).map_or("", String::as_str);

    if let Err(reason) = check_trust(service, peer.evidence(), now) {
        return deny(mode, reason, Some(service));
    }

    // Step 3: the API key.
    let api_key = match attrs.headers.single(&registry.request.api_key_header) {
        Header::Absent => return deny(mode, Reason::MissingApiKey, Some(service)),
        Header::Repeated => return deny(mode, Reason::InvalidApiKey, Some(service)),
        Header::One(v) => v,
    };
    if let Err(reason) = check_api_key(registry, service, api_key, now) {
        return deny(mode, reason, Some(service));
    }

    // Step 4: scopes.
    let Some(scopes) = granted_scopes(attrs, registry, service) else {
        return deny(mode, Reason::ScopeNotAllowed, Some(service));
    };

    Decision::Allow(Grant::Issue(IssueGrant {
        service,
        principal,
        scopes,
        certificate_sha256: peer.evidence().map(|e| e.certificate.sha256),
    }))
}

/// Who the peer is: the forwarded certificate if there is one, else Envoy's
/// principal. Identity never comes from request headers.
enum Peer<'q> {
    Certificate(&'q Evidence),
    Principal(San),
}

impl Peer<'_> {
    fn sans(&self) -> &[San] {
        match self {
            Peer::Certificate(e) => &e.certificate.sans,
            Peer::Principal(san) => std::slice::from_ref(san),
        }
    }

    fn evidence(&self) -> Option<&Evidence> {
        match self {
            Peer::Certificate(e) => Some(e),
            Peer::Principal(_) => None,
        }
    }
}

impl<'q> Input<'q> {
    /// The SANs this Check presented, in the form the decision compared
    /// them: the forwarded certificate's identity SANs, else Envoy's
    /// `source.principal`; none when neither is there. What an operator
    /// reads to tell what to register after an `unknown_principal` denial.
    pub fn presented_sans(&self) -> Cow<'q, [San]> {
        match self.certificate {
            Some(Ok(evidence)) => Cow::Borrowed(&evidence.certificate.sans),
            Some(Err(_)) => Cow::Borrowed(&[]),
            None if self.attributes.principal.is_empty() => Cow::Borrowed(&[]),
            None => Cow::Owned(vec![San::from_principal(self.attributes.principal)]),
        }
    }
}

/// Step 1: establish the peer identity and check what does not depend on
/// which service it claims (shape, validity window, revocation, trust
/// domain).
fn peer_identity<'q>(input: &Input<'q>, registry: &Registry, now: i64) -> Result<Peer<'q>, Reason> {
    if let Some(certificate) = input.certificate {
        let evidence = certificate.map_err(cert_reason)?;
        check_certificate(&evidence.certificate, registry, now)?;
        check_trust_domain(evidence, registry, now)?;
        return Ok(Peer::Certificate(evidence));
    }
    // Envoy's principal is only its guess at the peer (first URI SAN, else
    // DNS SAN, else the subject): without `require_certificate: false` the
    // certificate factor must be there.
    let principal = input.attributes.principal;
    if !principal.is_empty() && !registry.require_certificate {
        // Without a certificate no chain can be checked: a SPIFFE ID cannot
        // be vouched for by its trust domain.
        if registry.has_trust_domains() && trust::has_spiffe_scheme(principal) {
            return Err(Reason::CertificateUntrusted);
        }
        return Ok(Peer::Principal(San::from_principal(principal)));
    }
    Err(Reason::MissingIdentity)
}

/// The checks on a certificate that depend on time and the registry, not
/// on a service: validity window and revocation.
fn check_certificate(cert: &PeerCertificate, registry: &Registry, now: i64) -> Result<(), Reason> {
    if now < cert.not_before {
        return Err(Reason::CertificateNotYetValid);
    }
    if now > cert.not_after {
        return Err(Reason::CertificateExpired);
    }
    if registry.is_revoked(cert) {
        return Err(Reason::CertificateRevoked);
    }
    Ok(())
}

/// With `trust_domains`: a certificate with a `spiffe://` SAN must be an
/// X509-SVID (exactly one URI SAN, a valid SPIFFE ID) of a listed trust
/// domain, and chain to that domain's bundle now. A certificate without a
/// SPIFFE ID is left to the services' own `ca_file`.
fn check_trust_domain(evidence: &Evidence, registry: &Registry, now: i64) -> Result<(), Reason> {
    if !registry.has_trust_domains() {
        return Ok(());
    }
    match evidence.svid_trust_domain() {
        Ok(None) => Ok(()),
        Ok(Some(domain)) => match registry.trust_domain(domain) {
            Some(bundle) if evidence.trusted_by(bundle, now) => Ok(()),
            _ => Err(Reason::CertificateUntrusted),
        },
        Err(_) => Err(Reason::CertificateUntrusted),
    }
}

fn cert_reason(e: CertError) -> Reason {
    match e {
        CertError::Malformed => Reason::MalformedCertificate,
        CertError::NotClientCertificate => Reason::CertificateUntrusted,
    }
}

/// Per-service trust: the service's CA bundle and certificate pins. A
/// service that requires either cannot be authenticated by a bare principal.
fn check_trust(service: &Service, evidence: Option<&Evidence>, now: i64) -> Result<(), Reason> {
    if let Some(bundle) = &service.ca {
        match evidence {
            Some(e) if e.trusted_by(bundle, now) => {}
            _ => return Err(Reason::CertificateUntrusted),
        }
    }
    if !service.pins.is_empty() {
        let Some(e) = evidence else {
            return Err(Reason::CertificatePinMismatch);
        };
        let pinned = service
            .pins
            .iter()
            .fold(subtle::Choice::from(0), |acc, pin| {
                acc | pin.ct_eq(&e.certificate.sha256)
            });
        if !bool::from(pinned) {
            return Err(Reason::CertificatePinMismatch);
        }
    }
    Ok(())
}

/// The key must be well-formed, match one of *this* service's keys (compared
/// in constant time, all keys visited) and be unexpired. A key that belongs
/// to another service is an identity mismatch, not a plain failure.
fn check_api_key(
    registry: &Registry,
    service: &Service,
    key: &[u8],
    now: i64,
) -> Result<(), Reason> {
    if registry::check_api_key_shape(key).is_err() {
        return Err(Reason::InvalidApiKey);
    }
    let hash = registry::hash_api_key(key);
    let mut matched = None;
    for k in &service.api_keys {
        if bool::from(k.sha256.ct_eq(&hash)) {
            matched = Some(k);
        }
    }
    match matched {
        Some(k) if k.not_after.is_some_and(|t| now > t) => Err(Reason::ExpiredApiKey),
        Some(_) => Ok(()),
        None if registry.key_owner(&hash).is_some() => Err(Reason::IdentityMismatch),
        None => Err(Reason::InvalidApiKey),
    }
}

/// The scopes to grant: the caller's scope header plus the route's
/// `context_extensions["scope"]`, de-duplicated, each one allowed for the
/// service. `None` when one is not allowed or the header is unusable (sent
/// twice, too long, not UTF-8).
fn granted_scopes<'r>(
    attrs: &Attributes<'_>,
    registry: &Registry,
    service: &'r Service,
) -> Option<Scopes<'r>> {
    let mut scopes: Vec<&'r str> = Vec::new();
    let mut add = |list: &str| -> Option<()> {
        for s in list.split_ascii_whitespace() {
            let allowed = service.scope(s)?;
            if !scopes.contains(&allowed) {
                scopes.push(allowed);
            }
        }
        Some(())
    };
    if let Some(name) = &registry.request.scope_header {
        match attrs.headers.single(name) {
            Header::Absent => {}
            Header::Repeated => return None,
            Header::One(v) => {
                let v = std::str::from_utf8(v)
                    .ok()
                    .filter(|v| v.len() <= MAX_SCOPE_LEN)?;
                add(v)?;
            }
        }
    }
    add(attrs.route_scope)?;
    Some(if scopes.is_empty() {
        Scopes::All
    } else {
        Scopes::Requested(scopes)
    })
}

fn verify<'r>(input: &Input<'_>, registry: &'r Registry, now: i64) -> Decision<'r> {
    let mode = Mode::Verify;
    let attrs = &input.attributes;
    let refuse = |reason: Reason, service: Option<&'r str>, token: TokenCheck| {
        Decision::Deny(Denial {
            mode,
            reason,
            service,
            token: Some(token),
        })
    };
    let token_refused = |err: VerifyError| {
        let reason = match err {
            VerifyError::Expired => Reason::ExpiredToken,
            _ => Reason::InvalidToken,
        };
        refuse(reason, None, TokenCheck::Rejected(err))
    };
    let token = match presented_token(&attrs.headers, &registry.token.header) {
        Ok(token) => token,
        Err(err) => return token_refused(err),
    };
    let verified = match token::verify(&registry.token, token, now) {
        Ok(v) => v,
        Err(err) => return token_refused(err),
    };
    let claims = verified.claims;
    let Some(service) = registry.service(&claims.sub) else {
        return refuse(
            Reason::InvalidToken,
            None,
            TokenCheck::Rejected(VerifyError::BadClaims),
        );
    };
    let id = Some(service.id.as_str());

    // RFC 8705: a certificate-bound token is only good on that certificate,
    // and only while that certificate would still authenticate its service
    // now (a revocation must not wait out the token's lifetime).
    if let Some(cnf) = &claims.cnf {
        let evidence = match input.certificate {
            None => return refuse(Reason::InvalidToken, id, TokenCheck::Unbound),
            Some(Err(e)) => return refuse(cert_reason(e), id, TokenCheck::Unbound),
            Some(Ok(evidence)) => evidence,
        };
        let presented = token::Confirmation::for_certificate_sha256(&evidence.certificate.sha256);
        if !bool::from(presented.x5t_s256.as_bytes().ct_eq(cnf.x5t_s256.as_bytes())) {
            return refuse(Reason::InvalidToken, id, TokenCheck::Unbound);
        }
        let still_good = check_certificate(&evidence.certificate, registry, now)
            .and_then(|()| check_trust_domain(evidence, registry, now))
            .and_then(|()| check_trust(service, Some(evidence), now));
        if let Err(reason) = still_good {
            return refuse(reason, id, TokenCheck::Unbound);
        }
    }
    let granted: Vec<&str> = claims.scopes().collect();
    if !attrs
        .route_scope
        .split_ascii_whitespace()
        .all(|s| granted.contains(&s))
    {
        return refuse(Reason::ScopeNotAllowed, id, TokenCheck::Verified);
    }
    Decision::Allow(Grant::Verify(VerifyGrant {
        subject: claims.sub,
        service,
        kid: verified.kid,
        jti: claims.jti,
    }))
}

/// The token from the token header or `authorization: Bearer`. Both present
/// with different values, or either repeated, is refused: which one would
/// the upstream believe?
fn presented_token<'q>(headers: &Headers<'q>, header: &str) -> Result<&'q str, VerifyError> {
    let own = match headers.single(header) {
        Header::Repeated => return Err(VerifyError::Malformed),
        Header::One(v) => Some(v),
        Header::Absent => None,
    };
    let bearer = match headers.single("authorization") {
        Header::Repeated => return Err(VerifyError::Malformed),
        // The auth scheme is case-insensitive (RFC 9110).
        Header::One(v) => match v.split_at_checked(7) {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case(b"bearer ") => Some(t),
            _ => return Err(VerifyError::Malformed),
        },
        Header::Absent => None,
    };
    let token = match (own, bearer) {
        (Some(a), Some(b)) if a != b => return Err(VerifyError::Malformed),
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => return Err(VerifyError::Malformed),
    };
    std::str::from_utf8(token).map_err(|_| VerifyError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_strings_and_classes() {
        let names: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
        assert_eq!(Reason::ScopeNotAllowed.outcome(), Outcome::Forbidden);
        assert_eq!(Reason::InternalError.outcome(), Outcome::Unavailable);
        assert_eq!(Reason::IdentityMismatch.outcome(), Outcome::Unauthenticated);
    }

    #[test]
    fn alert_kinds_are_the_documented_names() {
        let alerts: Vec<(Reason, Option<&str>)> =
            Reason::ALL.iter().map(|r| (*r, r.alert())).collect();
        let expected = [
            (Reason::IdentityMismatch, "identity_mismatch"),
            (Reason::CertificateRevoked, "certificate_revoked"),
            (Reason::CertificateUntrusted, "certificate_untrusted"),
            (Reason::CertificatePinMismatch, "certificate_pin_mismatch"),
            (Reason::AmbiguousPrincipal, "ambiguous_principal"),
        ];
        for (reason, alert) in alerts {
            let want = expected.iter().find(|(r, _)| *r == reason).map(|(_, a)| *a);
            assert_eq!(alert, want, "{reason}");
        }
        let forged = Denial {
            mode: Mode::Verify,
            reason: Reason::InvalidToken,
            service: None,
            token: Some(TokenCheck::Rejected(VerifyError::BadSignature)),
        };
        assert_eq!(forged.alert(), Some("invalid_token_signature"));
        let expired = Denial {
            token: Some(TokenCheck::Rejected(VerifyError::Expired)),
            reason: Reason::ExpiredToken,
            ..forged
        };
        assert_eq!(expired.alert(), None);
    }
}
