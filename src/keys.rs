//! Key material for mesh tokens: one [`Key`] per `token.keys` entry.
//!
//! A key is an HS256 secret, or an EdDSA (Ed25519) or ES256 (P-256) key read
//! from PEM. The entry's [`Algorithm`] must match the material: that is
//! checked here, at load, so a key can only ever sign and verify with its own
//! algorithm. This module owns parsing, signing (the signature of a compact
//! JWS), the `jsonwebtoken` [`DecodingKey`] used to verify, the public JWKS
//! and generating new private keys. It imports nothing else from the crate:
//! `token` assembles and verifies tokens, the registry reads the files.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use const_oid::db::{rfc5912, rfc8410};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use jsonwebtoken::DecodingKey;
use pkcs8::PrivateKeyInfo;
use pkcs8::spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};
use ring::hmac;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// HS256 secrets shorter than this are refused (RFC 7518 §3.2: a key of at
/// least the hash output size).
pub const MIN_SECRET_LEN: usize = 32;

/// A token signing algorithm. `HS256` is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Algorithm {
    /// HMAC-SHA256 with a shared secret.
    #[default]
    #[serde(rename = "HS256")]
    Hs256,
    /// Ed25519 (RFC 8037).
    #[serde(rename = "EdDSA")]
    EdDsa,
    /// ECDSA on P-256 with SHA-256 (RFC 7518 §3.4).
    #[serde(rename = "ES256")]
    Es256,
}

impl Algorithm {
    pub const ALL: [Algorithm; 3] = [Algorithm::Hs256, Algorithm::EdDsa, Algorithm::Es256];

    /// The JOSE `alg` value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::Hs256 => "HS256",
            Algorithm::EdDsa => "EdDSA",
            Algorithm::Es256 => "ES256",
        }
    }

    /// The same algorithm as `jsonwebtoken` names it, for a `Validation`
    /// pinned to exactly this key's algorithm.
    pub const fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::Hs256 => jsonwebtoken::Algorithm::HS256,
            Algorithm::EdDsa => jsonwebtoken::Algorithm::EdDSA,
            Algorithm::Es256 => jsonwebtoken::Algorithm::ES256,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not `HS256`, `EdDSA` or `ES256` (exact spelling).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown algorithm (expected HS256, EdDSA or ES256)")]
pub struct UnknownAlgorithm;

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or(UnknownAlgorithm)
    }
}

/// What a secret or key file turned out to hold, to name it in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Secret,
    Ed25519 {
        private: bool,
    },
    P256 {
        private: bool,
    },
    /// An EC key on a curve other than P-256 (named when known).
    OtherCurve(Option<&'static str>),
    Rsa,
    Ed448,
    /// An X25519 or X448 key: key agreement, not signing.
    Xdh,
    Unknown,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |private: bool| if private { "private" } else { "public" };
        match self {
            Found::Secret => f.write_str("a shared secret"),
            Found::Ed25519 { private } => write!(f, "an Ed25519 {} key", part(*private)),
            Found::P256 { private } => write!(f, "a P-256 {} key", part(*private)),
            Found::OtherCurve(Some(curve)) => write!(f, "an EC key on curve {curve}"),
            Found::OtherCurve(None) => f.write_str("an EC key on an unrecognised curve"),
            Found::Rsa => f.write_str("an RSA key"),
            Found::Ed448 => f.write_str("an Ed448 key"),
            Found::Xdh => f.write_str("an X25519/X448 key-agreement key"),
            Found::Unknown => f.write_str("a key of an unrecognised type"),
        }
    }
}

/// Why key material was refused. Messages name what was found, never the
/// key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the HS256 secret is {len} bytes; at least {MIN_SECRET_LEN} are required")]
    SecretTooShort { len: usize },
    #[error(
        "the HS256 secret is a PEM block, not a secret: an EdDSA or ES256 key needs its algorithm and private_key_file or public_key_file"
    )]
    SecretIsPem,
    #[error("the HS256 secret is the DER encoding of {0}, not a secret")]
    SecretIsKey(Found),
    #[error("found {found}, but algorithm is {algorithm}")]
    Mismatch { found: Found, algorithm: Algorithm },
    #[error("not a single PEM block (RFC 7468)")]
    NotPem,
    #[error(
        "expected a `{expected}` PEM block, found `{found}`{}",
        pem_hint(found)
    )]
    UnexpectedPem {
        expected: &'static str,
        found: String,
    },
    #[error(
        "the private key is encrypted: give it unencrypted (`openssl pkcs8 -topk8 -nocrypt`) and protect the file instead"
    )]
    Encrypted,
    #[error(
        "public_key_file holds a private key: a verify-only key needs only its public key (`openssl pkey -pubout`)"
    )]
    PrivateKeyAsPublic,
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("HS256 secrets are not generated here (use gen-secret)")]
    GenerateSecret,
    #[error("the system random number generator failed")]
    Random,
    #[error("cannot encode the new key as PKCS#8 PEM")]
    Encode,
    #[error("cannot encode the public key as SPKI PEM")]
    EncodePublic,
}

/// A hint for the PEM blocks people commonly have instead of PKCS#8/SPKI.
fn pem_hint(label: &str) -> &'static str {
    match label {
        "EC PRIVATE KEY" | "RSA PRIVATE KEY" => {
            " (a traditional format: convert with `openssl pkcs8 -topk8 -nocrypt`)"
        }
        "PUBLIC KEY" => {
            " (a signing key needs its private key; a verify_only key may use public_key_file)"
        }
        "CERTIFICATE" => " (give the public key: `openssl x509 -pubkey -noout`)",
        _ => "",
    }
}

/// Where a key's material comes from. The caller reads files (with a size
/// cap); this module only sees bytes.
#[derive(Clone, Copy)]
pub enum KeySource<'a> {
    /// HS256: the raw secret.
    Secret(&'a [u8]),
    /// EdDSA or ES256: a PKCS#8 PEM private key (`private_key_file`).
    PrivateKeyPem(&'a [u8]),
    /// EdDSA or ES256, verify-only: an SPKI PEM public key (`public_key_file`).
    PublicKeyPem(&'a [u8]),
}

impl fmt::Debug for KeySource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeySource::Secret(_) => "Secret(..)",
            KeySource::PrivateKeyPem(_) => "PrivateKeyPem(..)",
            KeySource::PublicKeyPem(_) => "PublicKeyPem(..)",
        })
    }
}

/// A signature as it goes into a JWS: 32 bytes for HS256, 64 for EdDSA and
/// for ES256 (the fixed-size `r || s` of RFC 7518 §3.4, not DER).
#[derive(Clone, Copy)]
pub struct Signature {
    bytes: [u8; 64],
    len: usize,
}

impl Signature {
    fn new(bytes: &[u8]) -> Self {
        let mut out = Signature {
            bytes: [0; 64],
            len: bytes.len().min(64),
        };
        out.bytes[..out.len].copy_from_slice(&bytes[..out.len]);
        out
    }
}

impl AsRef<[u8]> for Signature {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", URL_SAFE_NO_PAD.encode(self.as_ref()))
    }
}

/// Why a key could not sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("the key holds only a public key and cannot sign")]
    VerifyOnly,
    #[error("the system random number generator failed")]
    Random,
}

/// Signing state, built once per key. Each backend is the faster of the
/// maintained ones in the tree, as measured by `benches/keys.rs`.
enum Signer {
    /// HMAC state already keyed: each token clones it instead of
    /// re-deriving the inner and outer pads. ring rather than the `hmac`
    /// crate: its assembly SHA-256 uses SHA-NI where the CPU has it and
    /// AVX/SSSE3 where it does not, where `sha2` falls back to portable
    /// code that takes 1.6 times the instructions (the signature is the
    /// largest part of an allowed Check's own work; docs/performance.md).
    Hs256(hmac::Key),
    /// ed25519-dalek (deterministic, RFC 8032): measured 10-30 % faster than
    /// ring here. Zeroized on drop.
    EdDsa(ed25519_dalek::SigningKey),
    /// ring: several times faster than the p256 crate (assembly field
    /// arithmetic). It hedges the nonce: fresh CSPRNG output mixed with the
    /// key and the message digest, so a weak RNG alone does not leak the key.
    Es256(EcdsaKeyPair, SystemRandom),
}

/// The start shared by many signing inputs, prepared once by
/// [`Key::prepare`]: for an HS256 key the HMAC state after it, so that
/// [`Key::sign_prepared`] hashes only the rest of an input that starts with
/// it. EdDSA and ES256 sign whole messages; for them it is just the bytes.
/// `Debug` shows no key material.
pub struct Prepared {
    key: u64,
    prefix: Box<str>,
    hmac: Option<hmac::Context>,
}

impl Prepared {
    /// The start it was prepared for.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The public half of an asymmetric key, as the JWKS publishes it.
enum PublicKey {
    Ed25519([u8; 32]),
    /// Affine coordinates, big-endian, 32 bytes each.
    P256 {
        x: [u8; 32],
        y: [u8; 32],
    },
}

/// One token key: its `kid`, algorithm, signing material (if this pod holds
/// it) and verifying key. `Debug` shows no key material.
pub struct Key {
    /// Random: tells this key's [`Prepared`] states from any other key's,
    /// even one loaded with the same kid.
    id: u64,
    kid: String,
    algorithm: Algorithm,
    header_b64: String,
    signer: Option<Signer>,
    public: Option<PublicKey>,
    decoding: DecodingKey,
}

impl Key {
    /// Loads a key for `algorithm` from `source`, refusing material that is
    /// not of that algorithm (naming what it is), HS256 secrets that are
    /// short or are really a key, and a private key given as a public one.
    pub fn load(
        kid: impl Into<String>,
        algorithm: Algorithm,
        source: KeySource<'_>,
    ) -> Result<Key, KeyError> {
        let (signer, public, decoding) = match source {
            KeySource::Secret(secret) => {
                if algorithm != Algorithm::Hs256 {
                    return Err(KeyError::Mismatch {
                        found: Found::Secret,
                        algorithm,
                    });
                }
                check_secret(secret)?;
                (
                    Some(Signer::Hs256(hmac::Key::new(hmac::HMAC_SHA256, secret))),
                    None,
                    DecodingKey::from_secret(secret),
                )
            }
            KeySource::PrivateKeyPem(pem) => match (algorithm, parse_private(pem)?) {
                (Algorithm::EdDsa, Parsed::Ed25519Private(key)) => {
                    let public = key.verifying_key().to_bytes();
                    (
                        Some(Signer::EdDsa(key)),
                        Some(PublicKey::Ed25519(public)),
                        DecodingKey::from_ed_der(&public),
                    )
                }
                (Algorithm::Es256, Parsed::P256Private(key)) => {
                    let point = p256_point(&key.public_key());
                    let scalar = Zeroizing::new(key.to_bytes());
                    let rng = SystemRandom::new();
                    let pair = EcdsaKeyPair::from_private_key_and_public_key(
                        &ECDSA_P256_SHA256_FIXED_SIGNING,
                        &scalar,
                        &point,
                        &rng,
                    )
                    .map_err(|_| KeyError::Malformed("P-256 private key"))?;
                    (
                        Some(Signer::Es256(pair, rng)),
                        Some(p256_public(&point)),
                        DecodingKey::from_ec_der(&point),
                    )
                }
                (algorithm, parsed) => {
                    return Err(KeyError::Mismatch {
                        found: parsed.found(),
                        algorithm,
                    });
                }
            },
            KeySource::PublicKeyPem(pem) => match (algorithm, parse_public(pem)?) {
                (Algorithm::EdDsa, Parsed::Ed25519Public(key)) => {
                    let public = key.to_bytes();
                    (
                        None,
                        Some(PublicKey::Ed25519(public)),
                        DecodingKey::from_ed_der(&public),
                    )
                }
                (Algorithm::Es256, Parsed::P256Public(key)) => {
                    let point = p256_point(&key);
                    (
                        None,
                        Some(p256_public(&point)),
                        DecodingKey::from_ec_der(&point),
                    )
                }
                (algorithm, parsed) => {
                    return Err(KeyError::Mismatch {
                        found: parsed.found(),
                        algorithm,
                    });
                }
            },
        };
        let kid = kid.into();
        let header = serde_json::json!({"alg": algorithm.as_str(), "typ": "JWT", "kid": kid});
        Ok(Key {
            header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
            id: rand::random(),
            kid,
            algorithm,
            signer,
            public,
            decoding,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// False for a key loaded from a public key alone.
    pub fn can_sign(&self) -> bool {
        self.signer.is_some()
    }

    /// The base64url JOSE header `{"alg":…,"kid":…,"typ":"JWT"}`, the same
    /// for every token this key signs.
    pub fn header_b64(&self) -> &str {
        &self.header_b64
    }

    /// The key `jsonwebtoken` verifies this key's tokens with. Verify with a
    /// `Validation` whose only algorithm is [`Algorithm::jwt`] of this key.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// Prepares `prefix`, the start of many signing inputs to come, for
    /// [`Key::sign_prepared`]: an HS256 key hashes it now, once.
    pub fn prepare(&self, prefix: &str) -> Prepared {
        let hmac = match &self.signer {
            Some(Signer::Hs256(key)) => {
                let mut context = hmac::Context::with_key(key);
                context.update(prefix.as_bytes());
                Some(context)
            }
            _ => None,
        };
        Prepared {
            key: self.id,
            prefix: prefix.into(),
            hmac,
        }
    }

    /// Signs `signing_input` (the JWS `header.claims`, both base64url).
    pub fn sign(&self, signing_input: &[u8]) -> Result<Signature, SignError> {
        self.sign_with(None, signing_input)
    }

    /// Signs exactly as [`Key::sign`] does. When `prepared` is this key's
    /// and `signing_input` starts with its prefix, HS256 hashes only the
    /// rest of the input.
    pub fn sign_prepared(
        &self,
        prepared: &Prepared,
        signing_input: &[u8],
    ) -> Result<Signature, SignError> {
        self.sign_with(Some(prepared), signing_input)
    }

    fn sign_with(
        &self,
        prepared: Option<&Prepared>,
        signing_input: &[u8],
    ) -> Result<Signature, SignError> {
        match &self.signer {
            None => Err(SignError::VerifyOnly),
            Some(Signer::Hs256(key)) => {
                let resumed = prepared.filter(|p| p.key == self.id).and_then(|p| {
                    let rest = signing_input.strip_prefix(p.prefix.as_bytes())?;
                    Some((p.hmac.clone()?, rest))
                });
                let tag = match resumed {
                    Some((mut context, rest)) => {
                        context.update(rest);
                        context.sign()
                    }
                    None => hmac::sign(key, signing_input),
                };
                Ok(Signature::new(tag.as_ref()))
            }
            Some(Signer::EdDsa(key)) => {
                use ed25519_dalek::Signer as _;
                Ok(Signature::new(&key.sign(signing_input).to_bytes()))
            }
            Some(Signer::Es256(pair, rng)) => pair
                .sign(rng, signing_input)
                .map(|s| Signature::new(s.as_ref()))
                .map_err(|_| SignError::Random),
        }
    }

    /// Completes a token in place: `token` holds `header.claims`; appends
    /// `.` and the base64url signature over it.
    pub fn sign_token(&self, token: &mut String) -> Result<(), SignError> {
        self.sign_token_with(None, token)
    }

    /// [`Key::sign_token`] through [`Key::sign_prepared`].
    pub fn sign_token_prepared(
        &self,
        prepared: &Prepared,
        token: &mut String,
    ) -> Result<(), SignError> {
        self.sign_token_with(Some(prepared), token)
    }

    fn sign_token_with(
        &self,
        prepared: Option<&Prepared>,
        token: &mut String,
    ) -> Result<(), SignError> {
        let signature = self.sign_with(prepared, token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, token);
        Ok(())
    }

    /// The public JWK (RFC 7517, RFC 8037 for Ed25519); `None` for HS256,
    /// whose secret is never published.
    pub fn jwk(&self) -> Option<serde_json::Value> {
        let mut jwk = match self.public.as_ref()? {
            PublicKey::Ed25519(x) => serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(x),
            }),
            PublicKey::P256 { x, y } => serde_json::json!({
                "kty": "EC",
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(x),
                "y": URL_SAFE_NO_PAD.encode(y),
            }),
        };
        if let Some(fields) = jwk.as_object_mut() {
            fields.insert("kid".into(), self.kid.clone().into());
            fields.insert("alg".into(), self.algorithm.as_str().into());
            fields.insert("use".into(), "sig".into());
        }
        Some(jwk)
    }
}

impl Key {
    /// The public key as SPKI PEM (for a verify-only pod's
    /// `public_key_file`); `None` for HS256.
    pub fn public_key_pem(&self) -> Option<String> {
        use pkcs8::EncodePublicKey;
        let pem = match self.public.as_ref()? {
            PublicKey::Ed25519(x) => ed25519_dalek::VerifyingKey::from_bytes(x)
                .ok()?
                .to_public_key_pem(pkcs8::LineEnding::LF),
            PublicKey::P256 { x, y } => {
                let point = p256::EncodedPoint::from_affine_coordinates(x.into(), y.into(), false);
                p256::PublicKey::from_sec1_bytes(point.as_bytes())
                    .ok()?
                    .to_public_key_pem(pkcs8::LineEnding::LF)
            }
        };
        pem.ok()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("can_sign", &self.can_sign())
            .finish_non_exhaustive()
    }
}

/// The JWKS document `{"keys":[…]}` of the asymmetric keys among `keys`
/// (HS256 keys are skipped). The caller chooses which keys are published.
pub fn jwks<'a>(keys: impl IntoIterator<Item = &'a Key>) -> serde_json::Value {
    let keys: Vec<serde_json::Value> = keys.into_iter().filter_map(Key::jwk).collect();
    serde_json::json!({ "keys": keys })
}

/// A new private key for `algorithm` from the OS CSPRNG, as PKCS#8 PEM (for
/// `private_key_file`). HS256 secrets are not made here.
pub fn generate(algorithm: Algorithm) -> Result<Zeroizing<String>, KeyError> {
    use ring::rand::SecureRandom;
    let rng = SystemRandom::new();
    let der = match algorithm {
        Algorithm::Hs256 => return Err(KeyError::GenerateSecret),
        // PKCS#8 v1 (the seed alone), as OpenSSL writes it: OpenSSL 3.0 and
        // Python's cryptography cannot read the v2 form ring would generate.
        Algorithm::EdDsa => {
            let mut seed = Zeroizing::new([0u8; 32]);
            rng.fill(&mut seed[..]).map_err(|_| KeyError::Random)?;
            let pair = ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: *seed,
                public_key: None,
            };
            return pair
                .to_pkcs8_pem(pkcs8::LineEnding::LF)
                .map_err(|_| KeyError::Encode);
        }
        Algorithm::Es256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map(|doc| Zeroizing::new(doc.as_ref().to_vec()))
            .map_err(|_| KeyError::Random)?,
    };
    pem_rfc7468::encode_string("PRIVATE KEY", pem_rfc7468::LineEnding::LF, &der)
        .map(Zeroizing::new)
        .map_err(|_| KeyError::Encode)
}

/// A new key pair for `algorithm`: the private key as PKCS#8 PEM (for
/// `private_key_file`) and its public key as SPKI PEM (for a verify-only
/// `public_key_file`). The public half comes from loading the private key,
/// which also proves the new key loads.
pub fn generate_pair(algorithm: Algorithm) -> Result<(Zeroizing<String>, String), KeyError> {
    let private = generate(algorithm)?;
    let key = Key::load(
        "new",
        algorithm,
        KeySource::PrivateKeyPem(private.as_bytes()),
    )?;
    let public = key.public_key_pem().ok_or(KeyError::EncodePublic)?;
    Ok((private, public))
}

/// A parsed key file, or what it holds when that is not a key we sign with.
enum Parsed {
    Ed25519Private(ed25519_dalek::SigningKey),
    Ed25519Public(ed25519_dalek::VerifyingKey),
    P256Private(p256::SecretKey),
    P256Public(p256::PublicKey),
    Other(Found),
}

impl Parsed {
    fn found(&self) -> Found {
        match self {
            Parsed::Ed25519Private(_) => Found::Ed25519 { private: true },
            Parsed::Ed25519Public(_) => Found::Ed25519 { private: false },
            Parsed::P256Private(_) => Found::P256 { private: true },
            Parsed::P256Public(_) => Found::P256 { private: false },
            Parsed::Other(found) => *found,
        }
    }
}

/// Decodes one PEM block (RFC 7468, strict), allowing surrounding whitespace.
fn decode_pem(pem: &[u8]) -> Result<(String, Zeroizing<Vec<u8>>), KeyError> {
    let (label, der) = pem_rfc7468::decode_vec(pem.trim_ascii()).map_err(|_| KeyError::NotPem)?;
    Ok((label.to_owned(), Zeroizing::new(der)))
}

fn parse_private(pem: &[u8]) -> Result<Parsed, KeyError> {
    let (label, der) = decode_pem(pem)?;
    match label.as_str() {
        "PRIVATE KEY" => {}
        "ENCRYPTED PRIVATE KEY" => return Err(KeyError::Encrypted),
        _ => {
            return Err(KeyError::UnexpectedPem {
                expected: "PRIVATE KEY",
                found: label,
            });
        }
    }
    let info = PrivateKeyInfo::try_from(der.as_slice())
        .map_err(|_| KeyError::Malformed("PKCS#8 private key"))?;
    Ok(match classify(&info.algorithm, true) {
        Found::Ed25519 { .. } => Parsed::Ed25519Private(
            ed25519_dalek::SigningKey::from_pkcs8_der(&der)
                .map_err(|_| KeyError::Malformed("Ed25519 private key"))?,
        ),
        Found::P256 { .. } => Parsed::P256Private(
            p256::SecretKey::from_pkcs8_der(&der)
                .map_err(|_| KeyError::Malformed("P-256 private key"))?,
        ),
        other => Parsed::Other(other),
    })
}

fn parse_public(pem: &[u8]) -> Result<Parsed, KeyError> {
    let (label, der) = decode_pem(pem)?;
    if label.ends_with("PRIVATE KEY") {
        return Err(KeyError::PrivateKeyAsPublic);
    }
    if label != "PUBLIC KEY" {
        return Err(KeyError::UnexpectedPem {
            expected: "PUBLIC KEY",
            found: label,
        });
    }
    let info = SubjectPublicKeyInfoRef::try_from(der.as_slice())
        .map_err(|_| KeyError::Malformed("SPKI public key"))?;
    Ok(match classify(&info.algorithm, false) {
        Found::Ed25519 { .. } => {
            let key = ed25519_dalek::VerifyingKey::from_public_key_der(&der)
                .map_err(|_| KeyError::Malformed("Ed25519 public key"))?;
            // A small-order point "verifies" signatures it never made.
            if key.is_weak() {
                return Err(KeyError::Malformed("Ed25519 public key (small order)"));
            }
            Parsed::Ed25519Public(key)
        }
        Found::P256 { .. } => Parsed::P256Public(
            p256::PublicKey::from_public_key_der(&der)
                .map_err(|_| KeyError::Malformed("P-256 public key"))?,
        ),
        other => Parsed::Other(other),
    })
}

/// Names a key by its algorithm identifier (RFC 5480, RFC 8410).
fn classify(algorithm: &AlgorithmIdentifierRef<'_>, private: bool) -> Found {
    let oid = algorithm.oid;
    if oid == rfc8410::ID_ED_25519 {
        Found::Ed25519 { private }
    } else if oid == rfc5912::ID_EC_PUBLIC_KEY {
        match algorithm.parameters_oid() {
            Ok(curve) if curve == rfc5912::SECP_256_R_1 => Found::P256 { private },
            Ok(curve) if curve == rfc5912::SECP_384_R_1 => Found::OtherCurve(Some("P-384")),
            Ok(curve) if curve == rfc5912::SECP_521_R_1 => Found::OtherCurve(Some("P-521")),
            _ => Found::OtherCurve(None),
        }
    } else if oid == rfc5912::RSA_ENCRYPTION || oid == rfc5912::ID_RSASSA_PSS {
        Found::Rsa
    } else if oid == rfc8410::ID_ED_448 {
        Found::Ed448
    } else if oid == rfc8410::ID_X_25519 || oid == rfc8410::ID_X_448 {
        Found::Xdh
    } else {
        Found::Unknown
    }
}

/// The SEC1 uncompressed point `04 || x || y`: what ring and `jsonwebtoken`
/// take for a P-256 public key.
fn p256_point(key: &p256::PublicKey) -> [u8; 65] {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let mut point = [0u8; 65];
    let encoded = key.to_encoded_point(false);
    // Always 65 bytes for an uncompressed P-256 point (not the identity,
    // which `PublicKey` cannot hold).
    if let Some(bytes) = point.get_mut(..encoded.len()) {
        bytes.copy_from_slice(encoded.as_bytes());
    }
    point
}

fn p256_public(point: &[u8; 65]) -> PublicKey {
    let mut x = [0u8; 32];
    let mut y = [0u8; 32];
    x.copy_from_slice(&point[1..33]);
    y.copy_from_slice(&point[33..65]);
    PublicKey::P256 { x, y }
}

/// Refuses HS256 secrets that are short or are really a key: a PEM block,
/// or the DER (raw or base64) of a public or private key. A public key used
/// as an HMAC secret is how algorithm-confusion forgeries start.
fn check_secret(secret: &[u8]) -> Result<(), KeyError> {
    if secret.windows(10).any(|w| w == b"-----BEGIN") {
        return Err(KeyError::SecretIsPem);
    }
    if let Some(found) = der_key(secret) {
        return Err(KeyError::SecretIsKey(found));
    }
    let compact: Zeroizing<Vec<u8>> = Zeroizing::new(
        secret
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect(),
    );
    if let Ok(decoded) = STANDARD.decode(compact.as_slice()) {
        let decoded = Zeroizing::new(decoded);
        if let Some(found) = der_key(&decoded) {
            return Err(KeyError::SecretIsKey(found));
        }
    }
    if secret.len() < MIN_SECRET_LEN {
        return Err(KeyError::SecretTooShort { len: secret.len() });
    }
    Ok(())
}

/// What `bytes` holds if it is exactly a DER SPKI or PKCS#8 key.
fn der_key(bytes: &[u8]) -> Option<Found> {
    if let Ok(info) = SubjectPublicKeyInfoRef::try_from(bytes) {
        return Some(classify(&info.algorithm, false));
    }
    if let Ok(info) = PrivateKeyInfo::try_from(bytes) {
        return Some(classify(&info.algorithm, true));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Validation, decode};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-hs";

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!("../tests/fixtures/keys/", $name)).as_slice()
        };
    }

    /// A fresh key pair of `algorithm`: private PKCS#8 PEM (ours) and the
    /// SPKI PEM of its public key, encoded by RustCrypto.
    fn pair(algorithm: Algorithm) -> (Zeroizing<String>, String) {
        use pkcs8::EncodePublicKey;
        let private = generate(algorithm).unwrap();
        let public = match algorithm {
            Algorithm::EdDsa => ed25519_dalek::SigningKey::from_pkcs8_pem(&private)
                .unwrap()
                .verifying_key()
                .to_public_key_pem(pkcs8::LineEnding::LF),
            Algorithm::Es256 => p256::SecretKey::from_pkcs8_pem(&private)
                .unwrap()
                .public_key()
                .to_public_key_pem(pkcs8::LineEnding::LF),
            Algorithm::Hs256 => unreachable!(),
        }
        .unwrap();
        (private, public)
    }

    fn load(algorithm: Algorithm, source: KeySource<'_>) -> Result<Key, KeyError> {
        Key::load("k1", algorithm, source)
    }

    /// One signing key of each algorithm.
    fn signing_keys() -> Vec<Key> {
        let ed = generate(Algorithm::EdDsa).unwrap();
        let ec = generate(Algorithm::Es256).unwrap();
        vec![
            load(Algorithm::Hs256, KeySource::Secret(SECRET)).unwrap(),
            load(Algorithm::EdDsa, KeySource::PrivateKeyPem(ed.as_bytes())).unwrap(),
            load(Algorithm::Es256, KeySource::PrivateKeyPem(ec.as_bytes())).unwrap(),
        ]
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Claims {
        sub: String,
        exp: i64,
    }

    /// A token assembled as `token` does: header, `.`, claims, signed in place.
    fn token(key: &Key) -> String {
        let claims = serde_json::json!({"sub": "api", "exp": 4_000_000_000i64});
        let mut token = format!("{}.", key.header_b64());
        URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut token);
        key.sign_token(&mut token).unwrap();
        token
    }

    /// A token with an arbitrary header, HMAC-signed with `secret`.
    fn hmac_token(header: &str, secret: &[u8]) -> String {
        let claims = serde_json::json!({"sub": "admin", "exp": 4_000_000_000i64});
        let mut token = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        // The `hmac` crate, independent of ring's HMAC that `Key` signs with.
        use ::hmac::Mac;
        let mut mac = <::hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(secret).unwrap();
        mac.update(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes(), &mut token);
        token
    }

    #[test]
    fn a_prepared_start_changes_no_signature() {
        let prefix = "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJodHRwczovL2lzc3Vlci";
        let inputs: [&[u8]; 4] = [
            b"eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJodHRwczovL2lzc3VlciIsInN1YiI6ImFwaSJ9",
            prefix.as_bytes(),
            // Shorter than the prefix, and a different start: signed whole.
            b"eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJodHRw",
            b"another start entirely",
        ];
        for key in signing_keys() {
            let prepared = key.prepare(prefix);
            assert_eq!(prepared.prefix(), prefix);
            for input in inputs {
                let plain = key.sign(input).unwrap();
                let resumed = key.sign_prepared(&prepared, input).unwrap();
                match key.algorithm() {
                    // Deterministic: the very same bytes.
                    Algorithm::Hs256 | Algorithm::EdDsa => {
                        assert_eq!(resumed.as_ref(), plain.as_ref())
                    }
                    // Hedged nonces: check it verifies instead.
                    Algorithm::Es256 => assert!(
                        jsonwebtoken::crypto::verify(
                            &URL_SAFE_NO_PAD.encode(resumed),
                            input,
                            key.decoding_key(),
                            jsonwebtoken::Algorithm::ES256,
                        )
                        .unwrap()
                    ),
                }
            }
        }
        // HS256 agrees with an independent HMAC, and another key's state
        // (here: the same kid, another secret) is never resumed.
        let key = load(Algorithm::Hs256, KeySource::Secret(SECRET)).unwrap();
        let other = load(Algorithm::Hs256, KeySource::Secret(&[7; 32])).unwrap();
        use ::hmac::Mac;
        let mut mac = <::hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(SECRET).unwrap();
        mac.update(inputs[0]);
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        for prepared in [key.prepare(prefix), other.prepare(prefix)] {
            let signature = key.sign_prepared(&prepared, inputs[0]).unwrap();
            assert_eq!(signature.as_ref(), expected);
        }
    }

    fn pinned(algorithms: &[jsonwebtoken::Algorithm]) -> Validation {
        let mut v = Validation::new(algorithms[0]);
        v.algorithms = algorithms.to_vec();
        v.required_spec_claims.clear();
        v.validate_aud = false;
        v
    }

    const EVERY_JWT_ALGORITHM: [jsonwebtoken::Algorithm; 12] = {
        use jsonwebtoken::Algorithm::*;
        [
            HS256, HS384, HS512, ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA,
        ]
    };

    #[test]
    fn each_algorithm_verifies_with_its_own_algorithm_only() {
        for key in signing_keys() {
            let token = token(&key);
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.alg, key.algorithm().jwt());
            assert_eq!(header.kid.as_deref(), Some("k1"));
            assert_eq!(header.typ.as_deref(), Some("JWT"));
            let data = decode::<Claims>(
                &token,
                key.decoding_key(),
                &pinned(&[key.algorithm().jwt()]),
            )
            .unwrap_or_else(|e| panic!("{:?}: {e}", key.algorithm()));
            assert_eq!(data.claims.sub, "api");
            for other in EVERY_JWT_ALGORITHM {
                if other != key.algorithm().jwt() {
                    assert!(
                        decode::<Claims>(&token, key.decoding_key(), &pinned(&[other])).is_err(),
                        "{:?} token accepted as {other:?}",
                        key.algorithm()
                    );
                }
            }
        }
    }

    #[test]
    fn a_decoding_key_refuses_tokens_of_another_algorithm_even_if_allowed() {
        // Defence in depth: even a Validation that trusted the token's own
        // `alg` (pinned to the signer's algorithm, not the key's) does not
        // verify another algorithm's token with this key.
        let keys = signing_keys();
        for verifier in &keys {
            for signer in &keys {
                let trusting = pinned(&[signer.algorithm().jwt()]);
                let result = decode::<Claims>(&token(signer), verifier.decoding_key(), &trusting);
                assert_eq!(
                    result.is_ok(),
                    std::ptr::eq(signer, verifier),
                    "{:?} token, {:?} key",
                    signer.algorithm(),
                    verifier.algorithm()
                );
            }
        }
    }

    #[test]
    fn hmac_over_the_public_key_does_not_verify_under_an_asymmetric_kid() {
        use pkcs8::EncodePublicKey;
        for algorithm in [Algorithm::EdDsa, Algorithm::Es256] {
            let (private, public_pem) = pair(algorithm);
            let key = load(algorithm, KeySource::PrivateKeyPem(private.as_bytes())).unwrap();
            let jwk = key.jwk().unwrap();
            let raw: Vec<u8> = match algorithm {
                Algorithm::EdDsa => URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap(),
                _ => [
                    vec![4],
                    URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap(),
                    URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap(),
                ]
                .concat(),
            };
            let der = match algorithm {
                Algorithm::EdDsa => ed25519_dalek::VerifyingKey::from_public_key_pem(&public_pem)
                    .unwrap()
                    .to_public_key_der(),
                _ => p256::PublicKey::from_public_key_pem(&public_pem)
                    .unwrap()
                    .to_public_key_der(),
            }
            .unwrap();
            let jwk_text = jwk.to_string();
            let secrets: [&[u8]; 4] = [
                &raw,
                public_pem.as_bytes(),
                der.as_bytes(),
                jwk_text.as_bytes(),
            ];
            for secret in secrets {
                let forged = hmac_token(r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#, secret);
                // Pinned, as `token` verifies...
                let pinned_to_key = pinned(&[algorithm.jwt()]);
                assert!(decode::<Claims>(&forged, key.decoding_key(), &pinned_to_key).is_err());
                // ...and even under a Validation that trusts the header's HS256.
                let trusting = pinned(&[jsonwebtoken::Algorithm::HS256]);
                assert!(decode::<Claims>(&forged, key.decoding_key(), &trusting).is_err());
            }
            // The control: the same forgery verifies where HS256 with that
            // secret is expected, so the refusals above are about the key.
            let forged = hmac_token(r#"{"alg":"HS256","kid":"k1"}"#, public_pem.as_bytes());
            let as_secret = DecodingKey::from_secret(public_pem.as_bytes());
            assert!(
                decode::<Claims>(
                    &forged,
                    &as_secret,
                    &pinned(&[jsonwebtoken::Algorithm::HS256])
                )
                .is_ok()
            );
        }
    }

    #[test]
    fn every_cross_pair_of_material_and_algorithm_is_refused() {
        let (ed_private, ed_public) = pair(Algorithm::EdDsa);
        let (ec_private, ec_public) = pair(Algorithm::Es256);
        let materials: [(KeySource<'_>, Found); 5] = [
            (KeySource::Secret(SECRET), Found::Secret),
            (
                KeySource::PrivateKeyPem(ed_private.as_bytes()),
                Found::Ed25519 { private: true },
            ),
            (
                KeySource::PublicKeyPem(ed_public.as_bytes()),
                Found::Ed25519 { private: false },
            ),
            (
                KeySource::PrivateKeyPem(ec_private.as_bytes()),
                Found::P256 { private: true },
            ),
            (
                KeySource::PublicKeyPem(ec_public.as_bytes()),
                Found::P256 { private: false },
            ),
        ];
        for (source, found) in materials {
            let own = match found {
                Found::Secret => Algorithm::Hs256,
                Found::Ed25519 { .. } => Algorithm::EdDsa,
                _ => Algorithm::Es256,
            };
            for algorithm in Algorithm::ALL {
                let result = load(algorithm, source);
                if algorithm == own {
                    let key = result.unwrap();
                    assert_eq!(key.algorithm(), algorithm);
                    assert_eq!(
                        key.can_sign(),
                        !matches!(source, KeySource::PublicKeyPem(_))
                    );
                } else {
                    assert_eq!(
                        result.unwrap_err(),
                        KeyError::Mismatch { found, algorithm },
                        "{source:?} as {algorithm}"
                    );
                }
            }
        }
        assert_eq!(
            load(
                Algorithm::Es256,
                KeySource::PrivateKeyPem(ed_private.as_bytes())
            )
            .unwrap_err()
            .to_string(),
            "found an Ed25519 private key, but algorithm is ES256"
        );
    }

    #[test]
    fn keys_of_other_types_are_named_and_refused() {
        let private = [
            (fixture!("p384.pem"), Found::OtherCurve(Some("P-384"))),
            (fixture!("rsa.pem"), Found::Rsa),
            (fixture!("x25519.pem"), Found::Xdh),
            (fixture!("ed448.pem"), Found::Ed448),
        ];
        let public = [
            (fixture!("p384.pub"), Found::OtherCurve(Some("P-384"))),
            (fixture!("rsa.pub"), Found::Rsa),
        ];
        for algorithm in Algorithm::ALL {
            for (pem, found) in private {
                assert_eq!(
                    load(algorithm, KeySource::PrivateKeyPem(pem)).unwrap_err(),
                    KeyError::Mismatch { found, algorithm }
                );
            }
            for (pem, found) in public {
                assert_eq!(
                    load(algorithm, KeySource::PublicKeyPem(pem)).unwrap_err(),
                    KeyError::Mismatch { found, algorithm }
                );
            }
        }
        let p384 = load(
            Algorithm::Es256,
            KeySource::PrivateKeyPem(fixture!("p384.pem")),
        );
        assert_eq!(
            p384.unwrap_err().to_string(),
            "found an EC key on curve P-384, but algorithm is ES256"
        );
    }

    #[test]
    fn openssl_keys_load_and_match_their_public_halves() {
        for (algorithm, private, public) in [
            (
                Algorithm::EdDsa,
                fixture!("ed25519.pem"),
                fixture!("ed25519.pub"),
            ),
            (Algorithm::Es256, fixture!("p256.pem"), fixture!("p256.pub")),
        ] {
            let signer = load(algorithm, KeySource::PrivateKeyPem(private)).unwrap();
            let verifier = load(algorithm, KeySource::PublicKeyPem(public)).unwrap();
            assert!(signer.can_sign() && !verifier.can_sign());
            assert_eq!(signer.jwk(), verifier.jwk());
            let token = token(&signer);
            decode::<Claims>(&token, verifier.decoding_key(), &pinned(&[algorithm.jwt()])).unwrap();
            // With CRLF line endings and surrounding blank lines too.
            let crlf = String::from_utf8(private.to_vec())
                .unwrap()
                .replace('\n', "\r\n");
            let padded = format!("\n\n{crlf}\n");
            assert!(load(algorithm, KeySource::PrivateKeyPem(padded.as_bytes())).is_ok());
        }
    }

    #[test]
    fn unusable_pem_blocks_are_refused_with_a_reason() {
        let sec1 = load(
            Algorithm::Es256,
            KeySource::PrivateKeyPem(fixture!("p256-sec1.pem")),
        );
        let err = sec1.unwrap_err();
        assert_eq!(
            err,
            KeyError::UnexpectedPem {
                expected: "PRIVATE KEY",
                found: "EC PRIVATE KEY".into()
            }
        );
        assert!(err.to_string().contains("openssl pkcs8 -topk8 -nocrypt"));
        assert_eq!(
            load(
                Algorithm::Es256,
                KeySource::PrivateKeyPem(fixture!("p256-encrypted.pem"))
            )
            .unwrap_err(),
            KeyError::Encrypted
        );
        // A verify-only pod must hold no signing material.
        for private in [
            fixture!("p256.pem"),
            fixture!("p256-sec1.pem"),
            fixture!("p256-encrypted.pem"),
        ] {
            assert_eq!(
                load(Algorithm::Es256, KeySource::PublicKeyPem(private)).unwrap_err(),
                KeyError::PrivateKeyAsPublic
            );
        }
        assert_eq!(
            load(
                Algorithm::Es256,
                KeySource::PrivateKeyPem(fixture!("p256.pub"))
            )
            .unwrap_err(),
            KeyError::UnexpectedPem {
                expected: "PRIVATE KEY",
                found: "PUBLIC KEY".into()
            }
        );
        // One block: text before it is allowed (RFC 7468 §5.2; OpenSSL's
        // pkcs12 export writes "Bag Attributes"), a second block is not.
        let p256 = std::str::from_utf8(fixture!("p256.pem")).unwrap();
        let p256_pub = std::str::from_utf8(fixture!("p256.pub")).unwrap();
        let preamble = format!("Bag Attributes\n    localKeyID: 01\n{p256}");
        assert!(
            load(
                Algorithm::Es256,
                KeySource::PrivateKeyPem(preamble.as_bytes())
            )
            .is_ok()
        );
        let two = format!("{p256}{p256_pub}");
        assert_eq!(
            load(Algorithm::Es256, KeySource::PrivateKeyPem(two.as_bytes())).unwrap_err(),
            KeyError::NotPem
        );
        let cert = b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        assert_eq!(
            load(Algorithm::EdDsa, KeySource::PublicKeyPem(cert)).unwrap_err(),
            KeyError::UnexpectedPem {
                expected: "PUBLIC KEY",
                found: "CERTIFICATE".into()
            }
        );
    }

    #[test]
    fn hs256_secrets_that_are_keys_or_short_are_refused() {
        use pkcs8::EncodePublicKey;
        let (ed_private, ed_public) = pair(Algorithm::EdDsa);
        let ed_der = ed25519_dalek::VerifyingKey::from_public_key_pem(&ed_public)
            .unwrap()
            .to_public_key_der()
            .unwrap();
        let ec_der = pem_rfc7468::decode_vec(fixture!("p256.pub")).unwrap().1;
        let private_der = pem_rfc7468::decode_vec(fixture!("p256.pem")).unwrap().1;
        let rsa_der = pem_rfc7468::decode_vec(fixture!("rsa.pub")).unwrap().1;
        let ec_b64 = STANDARD.encode(&ec_der);
        let cases: Vec<(&[u8], KeyError)> = vec![
            (ed_public.as_bytes(), KeyError::SecretIsPem),
            (ed_private.as_bytes(), KeyError::SecretIsPem),
            (fixture!("p256.pub"), KeyError::SecretIsPem),
            (fixture!("rsa.pub"), KeyError::SecretIsPem),
            (
                ed_der.as_bytes(),
                KeyError::SecretIsKey(Found::Ed25519 { private: false }),
            ),
            (
                &ec_der,
                KeyError::SecretIsKey(Found::P256 { private: false }),
            ),
            (
                &private_der,
                KeyError::SecretIsKey(Found::P256 { private: true }),
            ),
            (&rsa_der, KeyError::SecretIsKey(Found::Rsa)),
            (
                ec_b64.as_bytes(),
                KeyError::SecretIsKey(Found::P256 { private: false }),
            ),
            (b"short", KeyError::SecretTooShort { len: 5 }),
            (&[7u8; 31], KeyError::SecretTooShort { len: 31 }),
        ];
        for (secret, want) in cases {
            assert_eq!(
                load(Algorithm::Hs256, KeySource::Secret(secret)).unwrap_err(),
                want
            );
        }
        // Secrets as gen-secret makes them, raw random bytes, and 32 exactly.
        let base64url = URL_SAFE_NO_PAD.encode([0xfbu8; 32]);
        for secret in [base64url.as_bytes(), &[0x30u8; 32], SECRET] {
            assert!(load(Algorithm::Hs256, KeySource::Secret(secret)).is_ok());
        }
    }

    #[test]
    fn garbage_and_truncated_pem_are_errors() {
        fn source(private: bool, pem: &[u8]) -> KeySource<'_> {
            if private {
                KeySource::PrivateKeyPem(pem)
            } else {
                KeySource::PublicKeyPem(pem)
            }
        }
        let (ed_private, ed_public) = pair(Algorithm::EdDsa);
        let inputs: [(Algorithm, &[u8], bool); 5] = [
            (Algorithm::EdDsa, ed_private.as_bytes(), true),
            (Algorithm::EdDsa, ed_public.as_bytes(), false),
            (Algorithm::Es256, fixture!("p256.pem"), true),
            (Algorithm::Es256, fixture!("p256.pub"), false),
            (Algorithm::Es256, fixture!("rsa.pem"), true),
        ];
        for (algorithm, pem, private) in inputs {
            // Every strict prefix of the PEM text, except trailing whitespace.
            let full = pem.trim_ascii_end().len();
            for len in 0..full {
                assert!(
                    load(algorithm, source(private, &pem[..len])).is_err(),
                    "prefix {len}"
                );
            }
            // Every strict prefix of the DER inside a well-formed PEM block.
            let (label, der) = pem_rfc7468::decode_vec(pem).unwrap();
            for len in 0..der.len() {
                let rewrapped =
                    pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, &der[..len])
                        .unwrap();
                assert!(
                    load(algorithm, source(private, rewrapped.as_bytes())).is_err(),
                    "DER prefix {len}"
                );
            }
        }
        for garbage in [&b""[..], b"-----BEGIN", b"\xff\xfe\x00", &[b'A'; 4096]] {
            for algorithm in Algorithm::ALL {
                assert!(load(algorithm, KeySource::PrivateKeyPem(garbage)).is_err());
                assert!(load(algorithm, KeySource::PublicKeyPem(garbage)).is_err());
            }
        }
    }

    #[test]
    fn flipped_bytes_never_panic() {
        // Every single-byte corruption of the DER is either refused or, if it
        // still parses, yields a key of the declared algorithm.
        for (algorithm, pem) in [
            (Algorithm::EdDsa, fixture!("ed25519.pem")),
            (Algorithm::EdDsa, fixture!("ed25519.pub")),
            (Algorithm::Es256, fixture!("p256.pem")),
            (Algorithm::Es256, fixture!("p256.pub")),
        ] {
            let (label, der) = pem_rfc7468::decode_vec(pem).unwrap();
            for i in 0..der.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut bad = der.clone();
                    bad[i] ^= flip;
                    let pem = pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, &bad)
                        .unwrap();
                    let source = if label == "PUBLIC KEY" {
                        KeySource::PublicKeyPem(pem.as_bytes())
                    } else {
                        KeySource::PrivateKeyPem(pem.as_bytes())
                    };
                    if let Ok(key) = load(algorithm, source) {
                        assert_eq!(key.algorithm(), algorithm);
                    }
                }
            }
        }
    }

    #[test]
    fn jwk_matches_an_independent_derivation() {
        use ring::signature::KeyPair;
        // Ed25519: the public key as ring derives it from the PKCS#8.
        let pem = generate(Algorithm::EdDsa).unwrap();
        let key = load(Algorithm::EdDsa, KeySource::PrivateKeyPem(pem.as_bytes())).unwrap();
        let der = pem_rfc7468::decode_vec(pem.as_bytes()).unwrap().1;
        let ring_pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).unwrap();
        let jwk = key.jwk().unwrap();
        assert_eq!(
            jwk,
            serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA", "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(ring_pair.public_key().as_ref()),
            })
        );
        // P-256: ring's uncompressed point is 04 || x || y.
        let pem = generate(Algorithm::Es256).unwrap();
        let key = load(Algorithm::Es256, KeySource::PrivateKeyPem(pem.as_bytes())).unwrap();
        let der = pem_rfc7468::decode_vec(pem.as_bytes()).unwrap().1;
        let rng = SystemRandom::new();
        let ring_pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng).unwrap();
        let point = ring_pair.public_key().as_ref();
        assert_eq!(
            key.jwk().unwrap(),
            serde_json::json!({
                "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            })
        );
        // And jsonwebtoken's own JWK parser turns it into a key that verifies.
        for key in signing_keys()
            .iter()
            .filter(|k| k.algorithm() != Algorithm::Hs256)
        {
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk().unwrap()).unwrap();
            let from_jwk = DecodingKey::from_jwk(&jwk).unwrap();
            decode::<Claims>(&token(key), &from_jwk, &pinned(&[key.algorithm().jwt()])).unwrap();
        }
    }

    /// RFC 8037 A.1–A.4 (Ed25519 is deterministic, so the signature is known)
    /// and the RFC 7515 A.3 P-256 key.
    #[test]
    fn rfc_known_answers() {
        use pkcs8::EncodePrivateKey;
        let seed = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .unwrap();
        let pem = ed25519_dalek::SigningKey::from_bytes(&seed.try_into().unwrap())
            .to_pkcs8_pem(pkcs8::LineEnding::LF)
            .unwrap();
        let key = load(Algorithm::EdDsa, KeySource::PrivateKeyPem(pem.as_bytes())).unwrap();
        assert_eq!(
            key.jwk().unwrap()["x"],
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
        let signature = key
            .sign(b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc")
            .unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(signature),
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );

        let d = URL_SAFE_NO_PAD
            .decode("jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI")
            .unwrap();
        let pem = p256::SecretKey::from_slice(&d)
            .unwrap()
            .to_pkcs8_pem(pkcs8::LineEnding::LF)
            .unwrap();
        let key = load(Algorithm::Es256, KeySource::PrivateKeyPem(pem.as_bytes())).unwrap();
        let jwk = key.jwk().unwrap();
        assert_eq!(jwk["x"], "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU");
        assert_eq!(jwk["y"], "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0");
    }

    #[test]
    fn es256_signatures_are_fixed_size_r_s_verified_by_p256() {
        use p256::ecdsa::signature::Verifier;
        let (private, public) = pair(Algorithm::Es256);
        let key = load(
            Algorithm::Es256,
            KeySource::PrivateKeyPem(private.as_bytes()),
        )
        .unwrap();
        let verifying =
            p256::ecdsa::VerifyingKey::from(p256::PublicKey::from_public_key_pem(&public).unwrap());
        for message in [&b""[..], b"a.b", &[0x2e; 1000]] {
            let signature = key.sign(message).unwrap();
            assert_eq!(signature.as_ref().len(), 64);
            let parsed = p256::ecdsa::Signature::from_slice(signature.as_ref()).unwrap();
            verifying.verify(message, &parsed).unwrap();
        }
    }

    #[test]
    fn jwks_publishes_asymmetric_public_keys_only() {
        let (ed_private, ed_public) = pair(Algorithm::EdDsa);
        let keys = [
            Key::load("hs", Algorithm::Hs256, KeySource::Secret(SECRET)).unwrap(),
            Key::load(
                "ed",
                Algorithm::EdDsa,
                KeySource::PrivateKeyPem(ed_private.as_bytes()),
            )
            .unwrap(),
            Key::load(
                "ed-pub",
                Algorithm::EdDsa,
                KeySource::PublicKeyPem(ed_public.as_bytes()),
            )
            .unwrap(),
            Key::load(
                "ec",
                Algorithm::Es256,
                KeySource::PublicKeyPem(fixture!("p256.pub")),
            )
            .unwrap(),
        ];
        assert!(keys[0].jwk().is_none());
        let document = jwks(&keys);
        let published: Vec<&str> = document["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(published, ["ed", "ed-pub", "ec"]);
        for jwk in document["keys"].as_array().unwrap() {
            assert!(jwk.get("d").is_none() && jwk.get("k").is_none());
            assert_eq!(jwk["use"], "sig");
        }
        assert_eq!(document["keys"][0]["x"], document["keys"][1]["x"]);
        let text = document.to_string();
        assert!(!text.contains(std::str::from_utf8(SECRET).unwrap()));
        assert_eq!(jwks(&keys[..1]), serde_json::json!({"keys": []}));
    }

    #[test]
    fn generated_keys_load_back_and_differ() {
        for algorithm in [Algorithm::EdDsa, Algorithm::Es256] {
            let a = generate(algorithm).unwrap();
            let b = generate(algorithm).unwrap();
            assert!(a.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            assert_ne!(a, b);
            // PKCS#8 v1, without the optional public key, as OpenSSL writes
            // it: OpenSSL 3.0 and Python's cryptography refuse v2 Ed25519 keys.
            let der = pem_rfc7468::decode_vec(a.as_bytes()).unwrap().1;
            let info = PrivateKeyInfo::try_from(der.as_slice()).unwrap();
            assert_eq!(info.version(), pkcs8::Version::V1);
            let key = load(algorithm, KeySource::PrivateKeyPem(a.as_bytes())).unwrap();
            assert!(key.can_sign());
        }
        assert_eq!(
            generate(Algorithm::Hs256).unwrap_err(),
            KeyError::GenerateSecret
        );
    }

    #[test]
    fn verify_only_keys_cannot_sign() {
        let key = load(
            Algorithm::EdDsa,
            KeySource::PublicKeyPem(fixture!("ed25519.pub")),
        )
        .unwrap();
        assert_eq!(key.sign(b"a.b").unwrap_err(), SignError::VerifyOnly);
        let mut token = String::from("a.b");
        assert_eq!(
            key.sign_token(&mut token).unwrap_err(),
            SignError::VerifyOnly
        );
        assert_eq!(token, "a.b");
    }

    #[test]
    fn small_order_ed25519_public_keys_are_refused() {
        use pkcs8::EncodePublicKey;
        // The identity point (y = 1), encoded as an SPKI.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = ed25519_dalek::VerifyingKey::from_bytes(&identity).unwrap();
        let pem = weak.to_public_key_pem(pkcs8::LineEnding::LF).unwrap();
        assert!(matches!(
            load(Algorithm::EdDsa, KeySource::PublicKeyPem(pem.as_bytes())),
            Err(KeyError::Malformed(_))
        ));
    }

    #[test]
    fn header_is_precomputed_per_key() {
        for key in signing_keys() {
            let header: serde_json::Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(key.header_b64()).unwrap()).unwrap();
            assert_eq!(
                header,
                serde_json::json!({"alg": key.algorithm().as_str(), "typ": "JWT", "kid": "k1"})
            );
        }
    }

    #[test]
    fn debug_and_errors_show_no_key_material() {
        let pem = fixture!("ed25519.pem");
        let der = pem_rfc7468::decode_vec(pem).unwrap().1;
        let seed_b64 = STANDARD.encode(&der[der.len() - 32..]);
        let key = load(Algorithm::EdDsa, KeySource::PrivateKeyPem(pem)).unwrap();
        let hs = load(Algorithm::Hs256, KeySource::Secret(SECRET)).unwrap();
        let shown = format!("{key:?} {hs:?} {:?}", KeySource::Secret(SECRET));
        assert!(shown.contains("k1"));
        assert!(!shown.contains(&seed_b64[..8]));
        assert!(!shown.contains("0123456789abcdef"));
        // An HS256 entry given a key file names the key, not its bytes.
        let err = load(Algorithm::Hs256, KeySource::PrivateKeyPem(pem)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "found an Ed25519 private key, but algorithm is HS256"
        );
    }

    #[test]
    fn algorithm_names_are_exact() {
        for algorithm in Algorithm::ALL {
            let json = serde_json::to_string(&algorithm).unwrap();
            assert_eq!(json, format!("\"{}\"", algorithm.as_str()));
            assert_eq!(serde_json::from_str::<Algorithm>(&json).unwrap(), algorithm);
            assert_eq!(algorithm.as_str().parse::<Algorithm>().unwrap(), algorithm);
        }
        for bad in ["eddsa", "ES384", "none", "RS256", "hs256", ""] {
            assert!(bad.parse::<Algorithm>().is_err());
            assert!(serde_json::from_str::<Algorithm>(&format!("\"{bad}\"")).is_err());
        }
        assert_eq!(Algorithm::default(), Algorithm::Hs256);
    }

    #[test]
    fn keys_are_shareable_across_threads() {
        fn check<T: Send + Sync>() {}
        check::<Key>();
    }
}
