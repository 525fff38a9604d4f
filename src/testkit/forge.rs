//! Hand-made tokens: whatever header and claims a test (or an attacker)
//! chooses, signed with HS256 through `jsonwebtoken`'s own primitive, so a
//! forged token's signature would verify if its content were acceptable.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::fixture::{AUDIENCE, ISSUER};

/// Signs `header.claims` (JSON text, however hostile) with HS256 and `secret`.
pub fn forge_hs256(header: &str, claims: &str, secret: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    let signature =
        jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .unwrap_or_else(|e| panic!("HS256 signing: {e}"));
    format!("{input}.{signature}")
}

/// Claims a fixture registry accepts for service `sub` at `now`, edited by
/// `edit` before they are serialized.
pub fn claims_json(sub: &str, now: i64, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut claims = serde_json::json!({
        "iss": ISSUER, "sub": sub, "aud": AUDIENCE,
        "iat": now, "nbf": now, "exp": now + 300, "jti": "j", "scope": "read write",
    });
    edit(&mut claims);
    claims.to_string()
}
