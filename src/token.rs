//! The mesh token: issuing and verifying short-lived JWTs signed with
//! HS256, EdDSA or ES256.
//!
//! One function issues, one verifies; the Check (both modes) and the
//! `token` CLI all go through them, so there is a single definition of what
//! a valid token is. Key material (parsing, signing, JWKs) is `keys`'; this
//! module adds each key's role and schedule ([`TokenKey`]), picks the signer
//! at issue time, and pins verification to exactly the algorithm of the
//! token's `kid`. Verification configures `jsonwebtoken` explicitly and
//! checks the parts it cannot (header allow-list, `kid`, time against an
//! injected clock with the registry's leeway) itself.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Validation;
use serde::{Deserialize, Serialize};

use crate::keys::{self, Algorithm, Key, SignError};
use start::Starts;

mod start;

/// Tokens longer than this are refused before any decoding. Ours are about
/// 600 bytes; 8 KiB leaves room for long principals and scope lists.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// JOSE header parameters that would let a token choose its own key or add
/// processing rules; we refuse tokens that carry any of them.
const FORBIDDEN_HEADER_PARAMS: [&str; 5] = ["crit", "jku", "jwk", "x5u", "x5c"];

/// One `token.keys` entry: its key material, its role and its schedule.
pub struct TokenKey {
    pub key: Key,
    /// Never signs; still verifies (rotation, or a pod that only verifies).
    pub verify_only: bool,
    /// Unix seconds: the key may sign only from then. Verification and the
    /// JWKS do not wait for it, so the key is known before it signs.
    pub not_before: Option<i64>,
    /// Unix seconds: from then the key neither verifies nor is published,
    /// and it stops signing early enough that its tokens expire by then.
    pub not_after: Option<i64>,
}

impl TokenKey {
    /// A key without a schedule.
    pub fn new(key: Key, verify_only: bool) -> Self {
        TokenKey {
            key,
            verify_only,
            not_before: None,
            not_after: None,
        }
    }

    pub fn kid(&self) -> &str {
        self.key.kid()
    }

    /// Whether this key may sign a token issued at `now` that lives `ttl`
    /// seconds: not verify-only, holding a private key, past `not_before`,
    /// and the token expires no later than the key's `not_after`.
    pub fn may_sign(&self, now: i64, ttl: i64) -> bool {
        !self.verify_only
            && self.key.can_sign()
            && self.not_before.is_none_or(|t| t <= now)
            && self.not_after.is_none_or(|t| now.saturating_add(ttl) <= t)
    }

    /// Whether tokens of this key are accepted, and its public key
    /// published, at `now`.
    pub fn is_live(&self, now: i64) -> bool {
        self.not_after.is_none_or(|t| now < t)
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("key", &self.key)
            .field("verify_only", &self.verify_only)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// Why a set of keys cannot sign and verify tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    #[error("no signing key (every key is verify_only)")]
    NoSigningKey,
    #[error(
        "no key may sign now (each is verify_only, before its not_before, or too close to its not_after)"
    )]
    NoSigningKeyNow,
    #[error("kid {0:?} is listed twice")]
    DuplicateKid(String),
    #[error("kid {0:?} holds only a public key: mark it verify_only, or give its private_key_file")]
    CannotSign(String),
}

/// Everything about tokens that the registry configures.
#[derive(Debug)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    pub ttl: Duration,
    pub leeway: Duration,
    /// Lower-case header name the token is injected into (and read from in verify mode).
    pub header: String,
    keys: Vec<TokenKey>,
    by_kid: HashMap<String, usize>,
    /// The prepared starts of issued tokens (see `start`).
    starts: Starts,
    /// One per algorithm, in [`Algorithm::ALL`] order: `jsonwebtoken`
    /// refuses a list mixing algorithm families, and a key's tokens must be
    /// checked against exactly its own algorithm anyway.
    validations: [Validation; 3],
}

impl TokenSettings {
    /// Builds settings; `keys` must have unique kids, at least one key that
    /// is not verify-only, and a private key in every such key.
    pub fn new(
        issuer: String,
        audience: String,
        ttl: Duration,
        leeway: Duration,
        header: String,
        keys: Vec<TokenKey>,
    ) -> Result<Self, KeySetError> {
        if let Some(key) = keys.iter().find(|k| !k.verify_only && !k.key.can_sign()) {
            return Err(KeySetError::CannotSign(key.kid().to_owned()));
        }
        if keys.iter().all(|k| k.verify_only) {
            return Err(KeySetError::NoSigningKey);
        }
        let mut by_kid = HashMap::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            if by_kid.insert(key.kid().to_owned(), i).is_some() {
                return Err(KeySetError::DuplicateKid(key.kid().to_owned()));
            }
        }
        let validations = Algorithm::ALL.map(|a| validation(a, &issuer, &audience));
        let starts = Starts::new(&issuer, &audience);
        Ok(TokenSettings {
            issuer,
            audience,
            ttl,
            leeway,
            header,
            keys,
            by_kid,
            starts,
            validations,
        })
    }

    /// The key a token issued at `now` is signed with: the first that may
    /// sign then ([`TokenKey::may_sign`]). Chosen per token, so a key's
    /// `not_before` takes effect at that second, without a reload.
    pub fn signer(&self, now: i64) -> Option<&TokenKey> {
        self.signer_index(now).map(|i| &self.keys[i])
    }

    fn signer_index(&self, now: i64) -> Option<usize> {
        let ttl = self.ttl_secs();
        self.keys.iter().position(|k| k.may_sign(now, ttl))
    }

    /// The first second from `now` on at which no key may sign (if the
    /// schedule has a gap or an end), so a load can refuse or warn.
    pub fn signing_gap(&self, now: i64) -> Option<i64> {
        let ttl = self.ttl_secs();
        // Signing can only stop where a key stops: right after the last
        // second its tokens would still expire by its not_after.
        let stops = self
            .keys
            .iter()
            .filter_map(|k| k.not_after)
            .map(|t| t.saturating_sub(ttl).saturating_add(1))
            .filter(|&t| t > now);
        std::iter::once(now)
            .chain(stops)
            .filter(|&t| self.signer(t).is_none())
            .min()
    }

    pub fn keys(&self) -> &[TokenKey] {
        &self.keys
    }

    /// The public JWKS at `now` (RFC 7517): every asymmetric key until its
    /// `not_after`, also before its `not_before`; never an HS256 secret.
    pub fn jwks(&self, now: i64) -> serde_json::Value {
        keys::jwks(self.keys.iter().filter(|k| k.is_live(now)).map(|k| &k.key))
    }

    fn ttl_secs(&self) -> i64 {
        i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX)
    }

    fn validation(&self, algorithm: Algorithm) -> &Validation {
        let index = match algorithm {
            Algorithm::Hs256 => 0,
            Algorithm::EdDsa => 1,
            Algorithm::Es256 => 2,
        };
        &self.validations[index]
    }
}

/// `jsonwebtoken` does signature, `iss`, `aud`, presence of required claims
/// and their JSON types, for exactly one algorithm. Time is checked by
/// [`verify`] against the injected clock, so every knob is set here rather
/// than left at a library default.
fn validation(algorithm: Algorithm, issuer: &str, audience: &str) -> Validation {
    let mut v = Validation::new(algorithm.jwt());
    v.algorithms = vec![algorithm.jwt()];
    v.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.validate_aud = true;
    v.validate_exp = false;
    v.validate_nbf = false;
    v.leeway = 0;
    v.reject_tokens_expiring_in_less_than = 0;
    v
}

/// RFC 8705 confirmation: the token is bound to this certificate thumbprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirmation {
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

impl Confirmation {
    pub fn for_certificate_sha256(sha256: &[u8; 32]) -> Self {
        Confirmation {
            x5t_s256: URL_SAFE_NO_PAD.encode(sha256),
        }
    }
}

/// The claims of a mesh token. Numeric dates are integers: a string `exp`
/// fails to deserialize and the token is invalid (CVE-2026-25537).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub principal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

impl Claims {
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split_ascii_whitespace()
    }
}

/// What a caller is issued a token for.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    pub service: &'a str,
    pub principal: &'a str,
    /// Space-separated.
    pub scope: std::borrow::Cow<'a, str>,
    pub certificate_sha256: Option<[u8; 32]>,
}

/// A freshly signed token and the identifiers worth logging about it.
#[derive(Debug, Clone)]
pub struct Issued<'r> {
    pub token: String,
    pub kid: &'r str,
    pub jti: String,
}

/// Why no token could be issued. The Check fails closed on any of them.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("cannot serialize the claims: {0}")]
    Claims(serde_json::Error),
    #[error(
        "no key may sign now (each is verify_only, before its not_before, or too close to its not_after)"
    )]
    NoSigningKey,
    #[error("cannot sign: {0}")]
    Sign(SignError),
}

// By hand: `#[from]` would also make the error its source, and a caller
// printing the chain would print it twice.
impl From<serde_json::Error> for IssueError {
    fn from(error: serde_json::Error) -> Self {
        IssueError::Claims(error)
    }
}

impl From<SignError> for IssueError {
    fn from(error: SignError) -> Self {
        IssueError::Sign(error)
    }
}

/// Signs a token for `subject` at `now` (Unix seconds) with the key that
/// may sign then ([`TokenSettings::signer`]).
///
/// Issuing is on every allowed Check, so it is done by hand: the token's
/// constant start comes prepared (encoded and, for HS256, hashed: see
/// `start`), and the rest is one small JSON buffer, one base64url pass and
/// the signature, in one string. The result is an ordinary compact JWS,
/// verified by [`verify`] (through `jsonwebtoken`) and by independent
/// libraries in the tests.
pub fn issue<'r>(
    settings: &'r TokenSettings,
    subject: &Subject<'_>,
    now: i64,
) -> Result<Issued<'r>, IssueError> {
    let index = settings.signer_index(now).ok_or(IssueError::NoSigningKey)?;
    let key = &settings.keys[index].key;
    let start = settings.starts.get(index, key, subject)?;
    let jti = new_jti();
    let exp = now.saturating_add(settings.ttl.as_secs() as i64);
    let mut json = Vec::with_capacity(192);
    start.write_rest(
        &mut json,
        now,
        exp,
        &jti,
        subject.certificate_sha256.as_ref(),
    )?;
    // The signature is at most 64 bytes: 86 base64url characters.
    let prefix = start.prefix();
    let mut token = String::with_capacity(prefix.len() + json.len().div_ceil(3) * 4 + 88);
    token.push_str(prefix);
    URL_SAFE_NO_PAD.encode_string(&json, &mut token);
    key.sign_token_prepared(start.signing(), &mut token)?;
    Ok(Issued {
        token,
        kid: key.kid(),
        jti,
    })
}

/// 128 random bits from the OS-seeded CSPRNG, base64url.
fn new_jti() -> String {
    let bytes: [u8; 16] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("token is malformed")]
    Malformed,
    #[error("token header is not acceptable (alg, kid or a forbidden parameter)")]
    BadHeader,
    #[error("token is signed with an unknown kid")]
    UnknownKid,
    #[error("token is signed with a key past its not_after")]
    RetiredKey,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token claims are missing, mistyped, or name another issuer or audience")]
    BadClaims,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
}

impl VerifyError {
    /// Bounded label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyError::Malformed => "malformed",
            VerifyError::BadHeader => "bad_header",
            VerifyError::UnknownKid => "unknown_kid",
            VerifyError::RetiredKey => "retired_key",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::BadClaims => "bad_claims",
            VerifyError::Expired => "expired",
            VerifyError::NotYetValid => "not_yet_valid",
        }
    }
}

/// A verified token and the key that signed it.
#[derive(Debug, Clone)]
pub struct Verified<'r> {
    pub claims: Claims,
    pub kid: &'r str,
}

/// Verifies `token` at `now` (Unix seconds) against the registry's keys.
pub fn verify<'r>(
    settings: &'r TokenSettings,
    token: &str,
    now: i64,
) -> Result<Verified<'r>, VerifyError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(VerifyError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed);
    };
    let base64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !(base64url(header_b64) && base64url(claims_b64) && base64url(signature_b64)) {
        return Err(VerifyError::Malformed);
    }
    let key = &settings.keys[checked_header(settings, header_b64)?];
    if !key.is_live(now) {
        return Err(VerifyError::RetiredKey);
    }
    let validation = settings.validation(key.key.algorithm());
    let data =
        jsonwebtoken::decode::<Claims>(token, key.key.decoding_key(), validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => VerifyError::BadSignature,
                ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                    VerifyError::Malformed
                }
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    VerifyError::BadHeader
                }
                _ => VerifyError::BadClaims,
            }
        })?;
    let claims = data.claims;
    let leeway = settings.leeway.as_secs() as i64;
    if claims.exp.saturating_add(leeway) <= now {
        return Err(VerifyError::Expired);
    }
    if claims.nbf.saturating_sub(leeway) > now {
        return Err(VerifyError::NotYetValid);
    }
    Ok(Verified {
        claims,
        kid: key.kid(),
    })
}

/// Parses the JOSE header ourselves: a known string `kid`, then exactly
/// that key's `alg` (so an HS256 token naming an EdDSA key's kid, or any
/// other algorithm, is refused before a signature is checked), and none of
/// the parameters that delegate trust. Returns the key index.
fn checked_header(settings: &TokenSettings, header_b64: &str) -> Result<usize, VerifyError> {
    let raw = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| VerifyError::Malformed)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&raw).map_err(|_| VerifyError::Malformed)?;
    if FORBIDDEN_HEADER_PARAMS
        .iter()
        .any(|p| header.contains_key(*p))
    {
        return Err(VerifyError::BadHeader);
    }
    let kid = header
        .get("kid")
        .and_then(|v| v.as_str())
        .ok_or(VerifyError::BadHeader)?;
    let index = settings
        .by_kid
        .get(kid)
        .copied()
        .ok_or(VerifyError::UnknownKid)?;
    let alg = header.get("alg").and_then(|v| v.as_str());
    if alg != Some(settings.keys[index].key.algorithm().as_str()) {
        return Err(VerifyError::BadHeader);
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn settings(keys: Vec<TokenKey>) -> TokenSettings {
        TokenSettings::new(
            "https://issuer".into(),
            "orders".into(),
            Duration::from_secs(300),
            Duration::from_secs(30),
            "x-service-jwt".into(),
            keys,
        )
        .unwrap()
    }

    fn key(kid: &str, verify_only: bool) -> TokenKey {
        let secret = format!("{kid}-secret-0123456789abcdef0123456789");
        let key = Key::load(
            kid,
            Algorithm::Hs256,
            keys::KeySource::Secret(secret.as_bytes()),
        );
        TokenKey::new(key.unwrap(), verify_only)
    }

    fn ed25519(kid: &str) -> TokenKey {
        let pem = keys::generate(Algorithm::EdDsa).unwrap();
        let source = keys::KeySource::PrivateKeyPem(pem.as_bytes());
        TokenKey::new(Key::load(kid, Algorithm::EdDsa, source).unwrap(), false)
    }

    fn subject() -> Subject<'static> {
        Subject {
            service: "api",
            principal: "spiffe://mesh/api",
            scope: "read write".into(),
            certificate_sha256: Some([7; 32]),
        }
    }

    fn sign_raw(header: &str, claims: &str, secret: &[u8]) -> String {
        use hmac_sign::sign;
        let h = URL_SAFE_NO_PAD.encode(header);
        let c = URL_SAFE_NO_PAD.encode(claims);
        let input = format!("{h}.{c}");
        let sig = sign(secret, input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// HMAC through jsonwebtoken's own primitive, so hand-built tokens carry
    /// signatures that would verify if their content were acceptable.
    mod hmac_sign {
        pub fn sign(secret: &[u8], input: &[u8]) -> Vec<u8> {
            use base64::Engine;
            let key = jsonwebtoken::EncodingKey::from_secret(secret);
            let sig =
                jsonwebtoken::crypto::sign(input, &key, jsonwebtoken::Algorithm::HS256).unwrap();
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(sig)
                .unwrap()
        }
    }

    #[test]
    fn issued_token_verifies_with_all_claims() {
        let s = settings(vec![key("k1", false)]);
        let issued = issue(&s, &subject(), NOW).unwrap();
        assert_eq!(issued.kid, "k1");
        assert!(URL_SAFE_NO_PAD.decode(&issued.jti).unwrap().len() >= 16);
        let v = verify(&s, &issued.token, NOW).unwrap();
        assert_eq!(v.claims.sub, "api");
        assert_eq!(v.claims.aud, "orders");
        assert_eq!(v.claims.iss, "https://issuer");
        assert_eq!(v.claims.exp - v.claims.iat, 300);
        assert_eq!(v.claims.nbf, NOW);
        assert_eq!(v.claims.scope, "read write");
        assert_eq!(v.claims.principal, "spiffe://mesh/api");
        assert_eq!(
            v.claims.cnf.unwrap().x5t_s256,
            URL_SAFE_NO_PAD.encode([7u8; 32])
        );
        let header = jsonwebtoken::decode_header(&issued.token).unwrap();
        assert_eq!(header.kid.as_deref(), Some("k1"));
        assert_eq!(header.typ.as_deref(), Some("JWT"));
    }

    #[test]
    fn jti_is_unique() {
        let s = settings(vec![key("k1", false)]);
        let a = issue(&s, &subject(), NOW).unwrap();
        let b = issue(&s, &subject(), NOW).unwrap();
        assert_ne!(a.jti, b.jti);
    }

    #[test]
    fn first_non_verify_only_key_signs_and_all_verify() {
        let old = settings(vec![key("old", false)]);
        let token = issue(&old, &subject(), NOW).unwrap().token;
        let rotated = settings(vec![key("new", false), key("old", true)]);
        assert_eq!(rotated.signer(NOW).unwrap().kid(), "new");
        assert_eq!(verify(&rotated, &token, NOW).unwrap().kid, "old");
        let removed = settings(vec![key("new", false)]);
        assert_eq!(
            verify(&removed, &token, NOW).unwrap_err(),
            VerifyError::UnknownKid
        );
    }

    #[test]
    fn no_signing_key_or_duplicate_kid_is_refused() {
        let r = TokenSettings::new(
            "i".into(),
            "a".into(),
            Duration::from_secs(1),
            Duration::ZERO,
            "h".into(),
            vec![key("a", true)],
        );
        assert_eq!(r.unwrap_err(), KeySetError::NoSigningKey);
        let r = TokenSettings::new(
            "i".into(),
            "a".into(),
            Duration::from_secs(1),
            Duration::ZERO,
            "h".into(),
            vec![key("a", false), key("a", true)],
        );
        assert_eq!(r.unwrap_err(), KeySetError::DuplicateKid("a".into()));
    }

    #[test]
    fn not_before_switches_the_signer_at_that_second() {
        let mut new = ed25519("new");
        new.not_before = Some(NOW + 60);
        let s = settings(vec![new, key("old", false)]);
        assert_eq!(s.signer(NOW + 59).unwrap().kid(), "old");
        assert_eq!(s.signer(NOW + 60).unwrap().kid(), "new");
        assert_eq!(issue(&s, &subject(), NOW + 59).unwrap().kid, "old");
        let issued = issue(&s, &subject(), NOW + 60).unwrap();
        assert_eq!(issued.kid, "new");
        // Tokens of either key verify at any time, also before not_before.
        assert_eq!(verify(&s, &issued.token, NOW + 60).unwrap().kid, "new");
        let old = issue(&s, &subject(), NOW).unwrap().token;
        assert_eq!(verify(&s, &old, NOW + 61).unwrap().kid, "old");
        assert_eq!(s.signing_gap(NOW), None);
    }

    #[test]
    fn a_key_stops_signing_so_its_tokens_expire_by_its_not_after() {
        let mut old = key("old", false);
        old.not_after = Some(NOW + 1000);
        let s = settings(vec![old, key("next", false)]);
        // ttl is 300 s: the last token "old" signs expires at its not_after.
        assert_eq!(s.signer(NOW + 700).unwrap().kid(), "old");
        assert_eq!(s.signer(NOW + 701).unwrap().kid(), "next");
        let last = issue(&s, &subject(), NOW + 700).unwrap().token;
        assert!(verify(&s, &last, NOW + 999).is_ok());
        assert_eq!(
            verify(&s, &last, NOW + 1000).unwrap_err(),
            VerifyError::RetiredKey
        );
    }

    #[test]
    fn a_schedule_without_a_signer_is_found_and_fails_closed() {
        let mut only = key("only", false);
        only.not_after = Some(NOW + 1000);
        let mut later = ed25519("later");
        later.not_before = Some(NOW + 2000);
        let s = settings(vec![later, only]);
        assert_eq!(s.signing_gap(NOW), Some(NOW + 701));
        assert_eq!(s.signing_gap(NOW + 2000), None);
        assert!(matches!(
            issue(&s, &subject(), NOW + 701).unwrap_err(),
            IssueError::NoSigningKey
        ));
        // Not yet active at all: the gap is now.
        let mut future = key("future", false);
        future.not_before = Some(NOW + 10);
        assert_eq!(settings(vec![future]).signing_gap(NOW), Some(NOW));
    }

    #[test]
    fn jwks_holds_live_asymmetric_keys_only() {
        let mut retiring = ed25519("retiring");
        retiring.verify_only = true;
        retiring.not_after = Some(NOW + 10);
        let mut ahead = ed25519("ahead");
        ahead.not_before = Some(NOW + 3600);
        let s = settings(vec![ahead, key("hs", false), retiring]);
        let kids = |now| -> Vec<String> {
            s.jwks(now)["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(kids(NOW), ["ahead", "retiring"]);
        assert_eq!(kids(NOW + 10), ["ahead"]);
    }

    #[test]
    fn a_public_key_cannot_be_a_signing_key() {
        let pem = keys::generate(Algorithm::EdDsa).unwrap();
        let private = Key::load(
            "p",
            Algorithm::EdDsa,
            keys::KeySource::PrivateKeyPem(pem.as_bytes()),
        );
        let public = private.unwrap().public_key_pem().unwrap();
        let source = keys::KeySource::PublicKeyPem(public.as_bytes());
        let verify_only = || Key::load("p", Algorithm::EdDsa, source).unwrap();
        let r = TokenSettings::new(
            "i".into(),
            "a".into(),
            Duration::from_secs(1),
            Duration::ZERO,
            "h".into(),
            vec![key("k", false), TokenKey::new(verify_only(), false)],
        );
        assert_eq!(r.unwrap_err(), KeySetError::CannotSign("p".into()));
        assert!(
            settings(vec![key("k", false), TokenKey::new(verify_only(), true)])
                .signer(NOW)
                .is_some()
        );
    }

    #[test]
    fn time_checks_use_the_configured_leeway_exactly() {
        let s = settings(vec![key("k1", false)]);
        let token = issue(&s, &subject(), NOW).unwrap().token;
        // exp = NOW + 300; valid while now < exp + 30.
        assert!(verify(&s, &token, NOW + 329).is_ok());
        assert_eq!(
            verify(&s, &token, NOW + 330).unwrap_err(),
            VerifyError::Expired
        );
        // nbf = NOW; valid from nbf - 30.
        assert!(verify(&s, &token, NOW - 30).is_ok());
        assert_eq!(
            verify(&s, &token, NOW - 31).unwrap_err(),
            VerifyError::NotYetValid
        );
    }

    #[test]
    fn hostile_tokens_are_refused() {
        let s = settings(vec![key("k1", false)]);
        let secret = b"k1-secret-0123456789abcdef0123456789";
        let good_claims = format!(
            r#"{{"iss":"https://issuer","sub":"api","aud":"orders","iat":{NOW},"nbf":{NOW},"exp":{},"jti":"x"}}"#,
            NOW + 300
        );
        let cases: Vec<(String, VerifyError)> = vec![
            (
                sign_raw(r#"{"alg":"none","kid":"k1"}"#, &good_claims, secret),
                VerifyError::BadHeader,
            ),
            (
                sign_raw(r#"{"alg":"HS512","kid":"k1"}"#, &good_claims, secret),
                VerifyError::BadHeader,
            ),
            (
                sign_raw(r#"{"alg":"RS256","kid":"k1"}"#, &good_claims, secret),
                VerifyError::BadHeader,
            ),
            (
                sign_raw(r#"{"alg":"HS256"}"#, &good_claims, secret),
                VerifyError::BadHeader,
            ),
            (
                sign_raw(r#"{"alg":"HS256","kid":7}"#, &good_claims, secret),
                VerifyError::BadHeader,
            ),
            (
                sign_raw(r#"{"alg":"HS256","kid":"nope"}"#, &good_claims, secret),
                VerifyError::UnknownKid,
            ),
            (
                sign_raw(r#"{"alg":"HS256","kid":"../../k1"}"#, &good_claims, secret),
                VerifyError::UnknownKid,
            ),
            (
                sign_raw(
                    r#"{"alg":"HS256","kid":"k1","crit":["exp"]}"#,
                    &good_claims,
                    secret,
                ),
                VerifyError::BadHeader,
            ),
            (
                sign_raw(
                    r#"{"alg":"HS256","kid":"k1","jku":"https://x"}"#,
                    &good_claims,
                    secret,
                ),
                VerifyError::BadHeader,
            ),
            (
                sign_raw(
                    r#"{"alg":"HS256","kid":"k1"}"#,
                    &good_claims,
                    b"another-secret-0123456789abcdef0123",
                ),
                VerifyError::BadSignature,
            ),
            (
                sign_raw(
                    r#"{"alg":"HS256","kid":"k1"}"#,
                    &good_claims.replace(r#""sub":"api","#, ""),
                    secret,
                ),
                VerifyError::BadClaims,
            ),
            (
                sign_raw(
                    r#"{"alg":"HS256","kid":"k1"}"#,
                    &good_claims.replace(
                        &format!(r#""exp":{}"#, NOW + 300),
                        &format!(r#""exp":"{}""#, NOW + 300),
                    ),
                    secret,
                ),
                VerifyError::BadClaims,
            ),
            (
                sign_raw(
                    r#"{"alg":"HS256","kid":"k1"}"#,
                    &good_claims.replace("https://issuer", "https://evil"),
                    secret,
                ),
                VerifyError::BadClaims,
            ),
            (
                sign_raw(
                    r#"{"alg":"HS256","kid":"k1"}"#,
                    &good_claims.replace("orders", "billing"),
                    secret,
                ),
                VerifyError::BadClaims,
            ),
            ("a.b".into(), VerifyError::Malformed),
            ("a.b.c.d".into(), VerifyError::Malformed),
            ("!!!.b.c".into(), VerifyError::Malformed),
            ("x".repeat(1024 * 1024), VerifyError::Malformed),
        ];
        for (token, want) in cases {
            assert_eq!(verify(&s, &token, NOW).unwrap_err(), want, "{token:.120}");
        }
        // The well-formed control case verifies, so the cases above fail for their named reason.
        assert!(
            verify(
                &s,
                &sign_raw(r#"{"alg":"HS256","kid":"k1"}"#, &good_claims, secret),
                NOW
            )
            .is_ok()
        );
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let s = settings(vec![key("k1", false)]);
        let token = issue(&s, &subject(), NOW).unwrap().token;
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        claims["sub"] = "admin".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            parts[2]
        );
        assert_eq!(
            verify(&s, &forged, NOW).unwrap_err(),
            VerifyError::BadSignature
        );
        let mut sig = parts[2].to_string();
        sig.replace_range(0..1, if sig.starts_with('A') { "B" } else { "A" });
        let forged = format!("{}.{}.{}", parts[0], parts[1], sig);
        assert_eq!(
            verify(&s, &forged, NOW).unwrap_err(),
            VerifyError::BadSignature
        );
        // A truncated signature is refused; whether as undecodable base64 or
        // as a wrong signature depends on where the cut falls.
        assert!(matches!(
            verify(&s, &token[..token.len() - 5], NOW).unwrap_err(),
            VerifyError::BadSignature | VerifyError::Malformed
        ));
    }
}
