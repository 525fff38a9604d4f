//! The layout of an issued token's claims, chosen so that most of each token
//! is prepared once instead of on every allowed Check.
//!
//! Claims are written in a fixed order, constants first: `iss`, `aud` (the
//! registry's), `sub`, `principal`, `scope` (the grant's), then `iat`,
//! `nbf`, `exp`, `jti` and `cnf` (the token's own). Everything up to and
//! including `scope` is the same for every token one key signs for one
//! grant, so `header.` plus the base64url of that JSON is encoded once per
//! (key, service, principal, scope), and an HS256 key hashes it once
//! (`keys::Prepared`): about half of a token's SHA-256 blocks, escaping
//! and base64 work. Base64 turns each 3 input bytes into 4 characters
//! regardless of what follows, so the constant JSON is encoded up to a
//! multiple of 3 bytes and the 0–2 bytes left over are encoded with each
//! token's own claims: the token is byte for byte what encoding it whole
//! gives.
//!
//! A sidecar guards one upstream and hears from few callers, each asking
//! for the same scopes, so [`Starts`] keeps the prepared starts of the
//! grants it has seen (per registry snapshot: it lives in `TokenSettings`),
//! bounded and emptied when full, like the evidence memo.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{Confirmation, Subject};
use crate::keys::{Key, Prepared};

/// Prepared starts kept per registry snapshot. Each is about 1 KiB.
const MAX_STARTS: usize = 1024;

/// The prepared starts of the grants seen so far.
pub(super) struct Starts {
    /// `{"iss":…,"aud":…`: the start of every token's claims.
    registry_claims: Vec<u8>,
    hasher: RandomState,
    /// By a keyed hash of (key index, service, principal, scope); an entry
    /// is used only if it is for exactly those (see [`TokenStart::is_for`]).
    entries: Mutex<HashMap<u64, Arc<TokenStart>>>,
}

impl std::fmt::Debug for Starts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.entries.lock().map_or(0, |e| e.len());
        f.debug_struct("Starts").field("kept", &kept).finish()
    }
}

/// The constant start of the tokens one key signs for one grant.
pub(super) struct TokenStart {
    key: usize,
    service: Box<str>,
    principal: Box<str>,
    scope: Box<str>,
    /// `header.` + base64url of the constant claims up to a multiple of 3
    /// bytes, hashed already for HS256.
    signing: Prepared,
    /// The constant claims past that multiple of 3 (0–2 bytes).
    pending: Vec<u8>,
}

impl Starts {
    pub(super) fn new(issuer: &str, audience: &str) -> Starts {
        // `Value`'s Display is serde_json's escaping, and cannot fail.
        let registry_claims = format!(
            r#"{{"iss":{},"aud":{}"#,
            serde_json::Value::from(issuer),
            serde_json::Value::from(audience)
        )
        .into_bytes();
        Starts {
            registry_claims,
            hasher: RandomState::new(),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The start of the tokens `key` (number `index` of the settings' keys)
    /// signs for `subject`: kept, or prepared now.
    pub(super) fn get(
        &self,
        index: usize,
        key: &Key,
        subject: &Subject<'_>,
    ) -> Result<Arc<TokenStart>, serde_json::Error> {
        let scope: &str = &subject.scope;
        let id = self
            .hasher
            .hash_one((index, subject.service, subject.principal, scope));
        let kept = self.entries.lock().ok().and_then(|entries| {
            entries
                .get(&id)
                .filter(|s| s.is_for(index, subject))
                .cloned()
        });
        if let Some(start) = kept {
            return Ok(start);
        }
        let start = Arc::new(self.prepare(index, key, subject)?);
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_STARTS {
                entries.clear();
            }
            entries.insert(id, start.clone());
        }
        Ok(start)
    }

    fn prepare(
        &self,
        index: usize,
        key: &Key,
        subject: &Subject<'_>,
    ) -> Result<TokenStart, serde_json::Error> {
        let mut json = self.registry_claims.clone();
        for (name, value) in [
            (r#","sub":"#, subject.service),
            (r#","principal":"#, subject.principal),
            (r#","scope":"#, subject.scope.as_ref()),
        ] {
            json.extend_from_slice(name.as_bytes());
            serde_json::to_writer(&mut json, value)?;
        }
        let pending = json.split_off(json.len() / 3 * 3);
        let mut prefix = format!("{}.", key.header_b64());
        URL_SAFE_NO_PAD.encode_string(&json, &mut prefix);
        Ok(TokenStart {
            key: index,
            service: subject.service.into(),
            principal: subject.principal.into(),
            scope: subject.scope.as_ref().into(),
            signing: key.prepare(&prefix),
            pending,
        })
    }
}

impl TokenStart {
    fn is_for(&self, index: usize, subject: &Subject<'_>) -> bool {
        self.key == index
            && *self.service == *subject.service
            && *self.principal == *subject.principal
            && *self.scope == *subject.scope
    }

    /// What the token starts with: `header.` and the encoded constant claims.
    pub(super) fn prefix(&self) -> &str {
        self.signing.prefix()
    }

    /// For `Key::sign_token_prepared` with the key this start is for.
    pub(super) fn signing(&self) -> &Prepared {
        &self.signing
    }

    /// The claims that follow the encoded prefix: the pending constant
    /// bytes, the token's own claims, and the closing brace. Every string
    /// goes through serde_json's escaping, whatever its source.
    pub(super) fn write_rest(
        &self,
        json: &mut Vec<u8>,
        now: i64,
        exp: i64,
        jti: &str,
        certificate_sha256: Option<&[u8; 32]>,
    ) -> Result<(), serde_json::Error> {
        json.extend_from_slice(&self.pending);
        for (name, value) in [
            (r#","iat":"#, now),
            (r#","nbf":"#, now),
            (r#","exp":"#, exp),
        ] {
            json.extend_from_slice(name.as_bytes());
            serde_json::to_writer(&mut *json, &value)?;
        }
        json.extend_from_slice(br#","jti":"#);
        serde_json::to_writer(&mut *json, jti)?;
        if let Some(sha256) = certificate_sha256 {
            json.extend_from_slice(br#","cnf":"#);
            serde_json::to_writer(&mut *json, &Confirmation::for_certificate_sha256(sha256))?;
        }
        json.push(b'}');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Algorithm, KeySource};

    fn key() -> Key {
        Key::load("k1", Algorithm::Hs256, KeySource::Secret(&[9; 32])).unwrap()
    }

    fn subject(scope: &str) -> Subject<'_> {
        Subject {
            service: "api",
            principal: "spiffe://mesh/api",
            scope: scope.into(),
            certificate_sha256: None,
        }
    }

    /// The prefix and the rest, decoded: one JSON object in the fixed order.
    #[test]
    fn prefix_and_rest_encode_the_whole_claims() {
        let key = key();
        // Issuers of three lengths: 0, 1 and 2 bytes left pending.
        for issuer in ["https://a", "https://ab", "https://abc"] {
            let starts = Starts::new(issuer, "orders \"quoted\"");
            let start = starts.get(0, &key, &subject("read")).unwrap();
            let mut json = Vec::new();
            start
                .write_rest(&mut json, 10, 310, "j", Some(&[1; 32]))
                .unwrap();
            let mut token = start.prefix().to_owned();
            URL_SAFE_NO_PAD.encode_string(&json, &mut token);
            let claims = token.split_once('.').unwrap().1;
            let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
            let x5t = URL_SAFE_NO_PAD.encode([1; 32]);
            assert_eq!(
                claims,
                format!(
                    r#"{{"iss":"{issuer}","aud":"orders \"quoted\"","sub":"api","principal":"spiffe://mesh/api","scope":"read","iat":10,"nbf":10,"exp":310,"jti":"j","cnf":{{"x5t#S256":"{x5t}"}}}}"#
                )
            );
        }
    }

    #[test]
    fn a_start_is_kept_per_key_and_grant() {
        let key = key();
        let starts = Starts::new("https://issuer", "orders");
        let read = starts.get(0, &key, &subject("read")).unwrap();
        assert!(Arc::ptr_eq(
            &read,
            &starts.get(0, &key, &subject("read")).unwrap()
        ));
        let write = starts.get(0, &key, &subject("write")).unwrap();
        assert!(!Arc::ptr_eq(&read, &write));
        assert!(!Arc::ptr_eq(
            &read,
            &starts.get(1, &key, &subject("read")).unwrap()
        ));
        assert_eq!(starts.entries.lock().unwrap().len(), 3);
    }

    #[test]
    fn the_cache_is_bounded() {
        let key = key();
        let starts = Starts::new("https://issuer", "orders");
        let scopes: Vec<String> = (0..MAX_STARTS + 10).map(|i| format!("s{i}")).collect();
        for scope in &scopes {
            starts.get(0, &key, &subject(scope)).unwrap();
        }
        assert!(starts.entries.lock().unwrap().len() <= MAX_STARTS);
    }
}
