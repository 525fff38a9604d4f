//! The authorization decision, as a pure function.
//!
//! [`decide`] takes a `CheckRequest`, a registry snapshot and the current
//! time and returns a [`Decision`]. It does no I/O, holds no locks and never
//! fails: every problem, including internal ones, is a [`Denial`] with a
//! [`Reason`]. The gRPC layer only translates the decision into a response.

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use subtle::ConstantTimeEq;

use std::sync::Arc;

use crate::identity::{
    self, CertError, CertificateSource, PeerCertificate, San, SanKind, Uncached,
};
use crate::registry::{self, Registry, Service};
use crate::token::{self, Subject, VerifyError};

/// API keys longer than this are refused without hashing. Generated keys
/// are 43 characters.
pub const MAX_API_KEY_LEN: usize = 512;
/// Scope lists longer than this are refused.
pub const MAX_SCOPE_LEN: usize = 4096;

/// The header verify mode sets to the verified token's subject.
pub const SERVICE_ID_HEADER: &str = "x-service-id";

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
    InternalError,
}

/// What the caller is told, by status class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Unauthenticated,
    Forbidden,
    Unavailable,
}

impl Reason {
    pub const ALL: [Reason; 17] = [
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
            Reason::InternalError => "internal_error",
        }
    }

    pub fn outcome(self) -> Outcome {
        match self {
            Reason::ScopeNotAllowed => Outcome::Forbidden,
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

/// Per-route behaviour, from `context_extensions["mode"]`.
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

/// The result of a Check.
#[derive(Debug)]
pub enum Decision<'r> {
    Allow(Allow<'r>),
    Deny(Denial<'r>),
}

impl Decision<'_> {
    pub fn mode(&self) -> Mode {
        match self {
            Decision::Allow(a) => a.mode,
            Decision::Deny(d) => d.mode,
        }
    }
}

/// An allowed request and what to change on it before Envoy forwards it.
#[derive(Debug)]
pub struct Allow<'r> {
    pub mode: Mode,
    /// The caller's registered service id; `None` in verify mode when the
    /// token's subject is not in this registry.
    pub service: Option<&'r str>,
    /// Header to set upstream, replacing any client-sent copy.
    pub set_header: (&'r str, String),
    /// Header to strip before forwarding (the API key), if any.
    pub remove_header: Option<&'r str>,
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
    /// For `token.verified` metrics: the token-level reason in verify mode.
    pub token_error: Option<VerifyError>,
}

fn deny(mode: Mode, reason: Reason, service: Option<&str>) -> Decision<'_> {
    Decision::Deny(Denial {
        mode,
        reason,
        service,
        token_error: None,
    })
}

/// Decides a Check at `now` (Unix seconds) against the registry snapshot.
pub fn decide<'r>(req: &CheckRequest, registry: &'r Registry, now: i64) -> Decision<'r> {
    decide_with(req, registry, now, &Uncached)
}

/// [`decide`], with peer certificates from `certs` (the server passes its
/// cache; the result is the same as parsing each time).
pub fn decide_with<'r>(
    req: &CheckRequest,
    registry: &'r Registry,
    now: i64,
    certs: &dyn CertificateSource,
) -> Decision<'r> {
    let attrs = req.attributes.as_ref();
    let ext = attrs.map(|a| &a.context_extensions);
    let mode = match ext.and_then(|e| e.get("mode")).map(String::as_str) {
        None | Some("issue") => Mode::Issue,
        Some("verify") => Mode::Verify,
        // A route configured with a mode we do not know fails closed.
        Some(_) => return deny(Mode::Issue, Reason::InternalError, None),
    };
    let source = attrs.and_then(|a| a.source.as_ref());
    let certificate = source.map_or("", |s| s.certificate.as_str());
    let principal = source.map_or("", |s| s.principal.as_str());
    let http = attrs
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let route_scope = ext.and_then(|e| e.get("scope")).map_or("", String::as_str);
    let request = Request {
        certificate,
        principal,
        http,
        route_scope,
    };
    match mode {
        Mode::Issue => issue(&request, registry, now, certs),
        Mode::Verify => verify(&request, registry, now, certs),
    }
}

/// The parts of a CheckRequest the decision reads.
struct Request<'q> {
    certificate: &'q str,
    principal: &'q str,
    http: Option<&'q HttpRequest>,
    route_scope: &'q str,
}

fn issue<'r>(
    req: &Request<'_>,
    registry: &'r Registry,
    now: i64,
    certs: &dyn CertificateSource,
) -> Decision<'r> {
    let mode = Mode::Issue;
    let peer = match peer_identity(req, registry, now, certs) {
        Ok(peer) => peer,
        Err(reason) => return deny(mode, reason, None),
    };

    // Step 2: the SANs must name exactly one registered service.
    let mut matched: Option<(usize, &San)> = None;
    for san in peer.sans() {
        if let Some(index) = registry.service_for_principal(san.kind, &san.value) {
            match matched {
                None => matched = Some((index, san)),
                Some((first, _)) if first != index => {
                    return deny(mode, Reason::AmbiguousPrincipal, None);
                }
                Some(_) => {}
            }
        }
    }
    let Some((index, san)) = matched else {
        return deny(mode, Reason::UnknownPrincipal, None);
    };
    let service = registry.service_at(index);
    let claimed = Some(service.id.as_str());

    if let Err(reason) = check_trust(service, peer.certificate()) {
        return deny(mode, reason, claimed);
    }

    // Step 3: the API key.
    let api_key = match single_header(req.http, &registry.request.api_key_header) {
        Header::Absent => return deny(mode, Reason::MissingApiKey, claimed),
        Header::Repeated => return deny(mode, Reason::InvalidApiKey, claimed),
        Header::One(v) => v,
    };
    if let Err(reason) = check_api_key(registry, service, api_key, now) {
        return deny(mode, reason, claimed);
    }

    // Step 4: scopes.
    let requested = match requested_scopes(req, registry) {
        Some(requested) => requested,
        None => return deny(mode, Reason::ScopeNotAllowed, claimed),
    };
    if !requested.iter().all(|s| service.allows_scope(s)) {
        return deny(mode, Reason::ScopeNotAllowed, claimed);
    }
    let scope = if requested.is_empty() {
        std::borrow::Cow::Borrowed(service.all_scopes.as_str())
    } else {
        std::borrow::Cow::Owned(requested.join(" "))
    };

    // Step 5: the token.
    let subject = Subject {
        service: &service.id,
        principal: &san.value,
        scope: &scope,
        certificate_sha256: peer.certificate().map(|c| &c.sha256),
    };
    let issued = match token::issue(&registry.token, subject, now) {
        Ok(issued) => issued,
        Err(_) => return deny(mode, Reason::InternalError, claimed),
    };
    Decision::Allow(Allow {
        mode,
        service: claimed,
        set_header: (registry.token.header.as_str(), issued.token),
        remove_header: (!registry.request.forward_api_key)
            .then_some(registry.request.api_key_header.as_str()),
        kid: issued.kid,
        jti: issued.jti,
    })
}

/// Who the peer is: the forwarded certificate if there is one, else Envoy's
/// principal. Identity never comes from request headers.
enum Peer {
    Certificate(Arc<PeerCertificate>),
    Principal(San),
}

impl Peer {
    fn sans(&self) -> &[San] {
        match self {
            Peer::Certificate(cert) => &cert.sans,
            Peer::Principal(san) => std::slice::from_ref(san),
        }
    }

    fn certificate(&self) -> Option<&PeerCertificate> {
        match self {
            Peer::Certificate(cert) => Some(cert),
            Peer::Principal(_) => None,
        }
    }
}

/// Step 1: establish the peer identity and check what does not depend on
/// which service it claims (shape, validity window, revocation).
fn peer_identity(
    req: &Request<'_>,
    registry: &Registry,
    now: i64,
    certs: &dyn CertificateSource,
) -> Result<Peer, Reason> {
    if !req.certificate.is_empty() {
        let cert = parse_certificate(certs, req.certificate)?;
        if now < cert.not_before {
            return Err(Reason::CertificateNotYetValid);
        }
        if now > cert.not_after {
            return Err(Reason::CertificateExpired);
        }
        if registry.is_revoked(&cert.serial) {
            return Err(Reason::CertificateRevoked);
        }
        return Ok(Peer::Certificate(cert));
    }
    if !req.principal.is_empty() {
        let kind = identity::principal_kind(req.principal);
        let value = match kind {
            SanKind::Uri => req.principal.to_owned(),
            SanKind::Dns => req.principal.to_ascii_lowercase(),
        };
        return Ok(Peer::Principal(San { kind, value }));
    }
    Err(Reason::MissingIdentity)
}

fn parse_certificate(
    certs: &dyn CertificateSource,
    forwarded: &str,
) -> Result<Arc<PeerCertificate>, Reason> {
    certs.certificate(forwarded).map_err(|e| match e {
        CertError::Malformed => Reason::MalformedCertificate,
        CertError::NotClientCertificate => Reason::CertificateUntrusted,
    })
}

/// Per-service trust: the issuing CA and certificate pins. A service that
/// requires either cannot be authenticated by a bare principal.
fn check_trust(service: &Service, cert: Option<&PeerCertificate>) -> Result<(), Reason> {
    if let Some(anchor) = &service.ca {
        match cert {
            Some(cert) if cert.is_issued_by(anchor) => {}
            _ => return Err(Reason::CertificateUntrusted),
        }
    }
    if !service.pins.is_empty() {
        let Some(cert) = cert else {
            return Err(Reason::CertificatePinMismatch);
        };
        let pinned = service
            .pins
            .iter()
            .fold(subtle::Choice::from(0), |acc, pin| {
                acc | pin.ct_eq(&cert.sha256)
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
    // A comma means the header was sent twice and joined (CVE-2021-32777).
    let well_formed = !key.is_empty()
        && key.len() <= MAX_API_KEY_LEN
        && key.iter().all(|&b| b.is_ascii_graphic() && b != b',');
    if !well_formed {
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

/// The scopes asked for: the caller's scope header plus the route's
/// `context_extensions["scope"]`, de-duplicated. `None` when the header is
/// unusable (sent twice, too long).
fn requested_scopes<'q>(req: &Request<'q>, registry: &Registry) -> Option<Vec<&'q str>> {
    let mut scopes: Vec<&str> = Vec::new();
    let mut add = |list: &'q str| {
        for s in list.split_ascii_whitespace() {
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        }
    };
    if let Some(name) = &registry.request.scope_header {
        match single_header(req.http, name) {
            Header::Absent => {}
            Header::Repeated => return None,
            Header::One(v) => {
                let v = std::str::from_utf8(v)
                    .ok()
                    .filter(|v| v.len() <= MAX_SCOPE_LEN)?;
                add(v);
            }
        }
    }
    add(req.route_scope);
    Some(scopes)
}

fn verify<'r>(
    req: &Request<'_>,
    registry: &'r Registry,
    now: i64,
    certs: &dyn CertificateSource,
) -> Decision<'r> {
    let mode = Mode::Verify;
    let token_deny = |err: VerifyError| {
        let reason = match err {
            VerifyError::Expired => Reason::ExpiredToken,
            _ => Reason::InvalidToken,
        };
        Decision::Deny(Denial {
            mode,
            reason,
            service: None,
            token_error: Some(err),
        })
    };
    let token = match presented_token(req.http, &registry.token.header) {
        Ok(token) => token,
        Err(err) => return token_deny(err),
    };
    let verified = match token::verify(&registry.token, token, now) {
        Ok(v) => v,
        Err(err) => return token_deny(err),
    };
    let claims = verified.claims;
    let service = registry.service(&claims.sub).map(|s| s.id.as_str());

    // RFC 8705: a certificate-bound token is only good on that certificate.
    if let Some(cnf) = &claims.cnf {
        if req.certificate.is_empty() {
            return deny(mode, Reason::InvalidToken, service);
        }
        let cert = match parse_certificate(certs, req.certificate) {
            Ok(cert) => cert,
            Err(reason) => return deny(mode, reason, service),
        };
        let presented = token::Confirmation::for_certificate_sha256(&cert.sha256);
        if !bool::from(presented.x5t_s256.as_bytes().ct_eq(cnf.x5t_s256.as_bytes())) {
            return deny(mode, Reason::InvalidToken, service);
        }
    }
    let granted: Vec<&str> = claims.scopes().collect();
    if !req
        .route_scope
        .split_ascii_whitespace()
        .all(|s| granted.contains(&s))
    {
        return deny(mode, Reason::ScopeNotAllowed, service);
    }
    Decision::Allow(Allow {
        mode,
        service,
        set_header: (SERVICE_ID_HEADER, claims.sub),
        remove_header: None,
        kid: verified.kid,
        jti: claims.jti,
    })
}

/// The token from the token header or `authorization: Bearer`. Both present
/// with different values, or either repeated, is refused: which one would
/// the upstream believe?
fn presented_token<'q>(
    http: Option<&'q HttpRequest>,
    header: &str,
) -> Result<&'q str, VerifyError> {
    let own = match single_header(http, header) {
        Header::Repeated => return Err(VerifyError::Malformed),
        Header::One(v) => Some(v),
        Header::Absent => None,
    };
    let bearer = match single_header(http, "authorization") {
        Header::Repeated => return Err(VerifyError::Malformed),
        Header::One(v) => match v.strip_prefix(b"Bearer ") {
            Some(t) => Some(t),
            None => return Err(VerifyError::Malformed),
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

/// A credential header as Envoy delivered it.
#[derive(Debug, PartialEq, Eq)]
enum Header<'q> {
    Absent,
    One(&'q [u8]),
    Repeated,
}

/// Looks a (lower-case) header up in both places Envoy may put it:
/// `headers` (joined with `,` when repeated) and `header_map` (one entry per
/// occurrence, raw bytes when `encode_raw_headers` is on).
fn single_header<'q>(http: Option<&'q HttpRequest>, name: &str) -> Header<'q> {
    let Some(http) = http else {
        return Header::Absent;
    };
    let mut found = http.headers.get(name).map(|v| v.as_bytes());
    if let Some(map) = &http.header_map {
        for h in &map.headers {
            if h.key.eq_ignore_ascii_case(name) {
                if found.is_some() {
                    return Header::Repeated;
                }
                found = Some(if h.raw_value.is_empty() {
                    h.value.as_bytes()
                } else {
                    &h.raw_value
                });
            }
        }
    }
    found.map_or(Header::Absent, Header::One)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};

    fn http(headers: &[(&str, &str)], raw: &[(&str, &[u8])]) -> HttpRequest {
        HttpRequest {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            header_map: (!raw.is_empty()).then(|| HeaderMap {
                headers: raw
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: k.to_string(),
                        raw_value: v.to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn headers_are_read_from_both_maps() {
        let h = http(&[("x-api-key", "a")], &[]);
        assert_eq!(single_header(Some(&h), "x-api-key"), Header::One(b"a"));
        let h = http(&[], &[("x-api-key", b"b")]);
        assert_eq!(single_header(Some(&h), "x-api-key"), Header::One(b"b"));
        let h = http(&[], &[("X-Api-Key", b"b"), ("x-api-key", b"c")]);
        assert_eq!(single_header(Some(&h), "x-api-key"), Header::Repeated);
        let h = http(&[("x-api-key", "a")], &[("x-api-key", b"a")]);
        assert_eq!(single_header(Some(&h), "x-api-key"), Header::Repeated);
        assert_eq!(single_header(Some(&h), "other"), Header::Absent);
        assert_eq!(single_header(None, "x-api-key"), Header::Absent);
    }

    #[test]
    fn reason_strings_and_classes() {
        let names: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
        assert_eq!(Reason::ScopeNotAllowed.outcome(), Outcome::Forbidden);
        assert_eq!(Reason::InternalError.outcome(), Outcome::Unavailable);
        assert_eq!(Reason::IdentityMismatch.outcome(), Outcome::Unauthenticated);
    }
}
