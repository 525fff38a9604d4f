//! Token key cost per algorithm: signing (what every allowed Check pays)
//! and verifying through `jsonwebtoken` (what verify mode pays), plus the
//! backend comparison behind `keys`' choices (hmac + sha2 vs ring for
//! HS256, ed25519-dalek vs ring for Ed25519, the p256 crate vs ring for
//! P-256; verifying too, for reference,
//! since `jsonwebtoken` verifies with ed25519-dalek and p256).
//! Run: `cargo bench --bench keys`.

use std::hint::black_box;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::Validation;
use service_auth::keys::{Algorithm, Key, KeySource, generate};

/// Claims shaped like a real mesh token (about 600 bytes signed).
fn claims_b64() -> String {
    let claims = serde_json::json!({
        "iss": "https://service-auth.mesh.local",
        "sub": "api_service",
        "aud": "mesh",
        "iat": 1_800_000_000i64,
        "nbf": 1_800_000_000i64,
        "exp": 1_800_000_300i64,
        "jti": "q8yWm0c1yJk3bX2nW9Vt4A",
        "scope": "orders:read orders:write inventory:read",
        "principal": "spiffe://mesh.local/ns/default/sa/api_service",
        "cnf": {"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"},
    });
    URL_SAFE_NO_PAD.encode(claims.to_string())
}

fn keys() -> Vec<Key> {
    let secret = [0x5au8; 32];
    let ed = generate(Algorithm::EdDsa).unwrap();
    let ec = generate(Algorithm::Es256).unwrap();
    vec![
        Key::load("hs", Algorithm::Hs256, KeySource::Secret(&secret)).unwrap(),
        Key::load(
            "ed",
            Algorithm::EdDsa,
            KeySource::PrivateKeyPem(ed.as_bytes()),
        )
        .unwrap(),
        Key::load(
            "ec",
            Algorithm::Es256,
            KeySource::PrivateKeyPem(ec.as_bytes()),
        )
        .unwrap(),
    ]
}

fn sign_and_verify(c: &mut Criterion) {
    let claims = claims_b64();
    let mut sign = c.benchmark_group("sign");
    for key in keys() {
        let input = format!("{}.{claims}", key.header_b64());
        sign.bench_function(key.algorithm().as_str(), |b| {
            b.iter(|| key.sign(black_box(input.as_bytes())).unwrap())
        });
    }
    sign.finish();

    let mut verify = c.benchmark_group("verify (jsonwebtoken::decode)");
    for key in keys() {
        let mut token = format!("{}.{claims}", key.header_b64());
        key.sign_token(&mut token).unwrap();
        let mut validation = Validation::new(key.algorithm().jwt());
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        verify.bench_function(key.algorithm().as_str(), |b| {
            b.iter(|| {
                jsonwebtoken::decode::<serde_json::Value>(
                    black_box(&token),
                    key.decoding_key(),
                    &validation,
                )
                .unwrap()
            })
        });
    }
    verify.finish();
}

fn backends(c: &mut Criterion) {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    use ring::signature::{
        ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair,
        Ed25519KeyPair, KeyPair, UnparsedPublicKey,
    };
    let message = format!("{}.{}", "e".repeat(60), claims_b64());
    let message = message.as_bytes();
    let rng = ring::rand::SystemRandom::new();
    let mut group = c.benchmark_group("backend");

    // HS256: natively both use SHA-NI where the CPU has it; without it
    // (and under valgrind) `sha2` runs portable code, ring assembly.
    let secret = [0x5au8; 32];
    let hmac_key = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&secret).unwrap();
    group.bench_function("HMAC-SHA256 sign, hmac + sha2", |b| {
        use hmac::Mac;
        b.iter(|| {
            let mut mac = hmac_key.clone();
            mac.update(black_box(message));
            mac.finalize().into_bytes()
        })
    });
    let ring_hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    group.bench_function("HMAC-SHA256 sign, ring", |b| {
        b.iter(|| ring::hmac::sign(&ring_hmac, black_box(message)))
    });

    let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ring_ed = Ed25519KeyPair::from_pkcs8(ed.as_ref()).unwrap();
    let dalek = ed25519_dalek::SigningKey::from_pkcs8_der(ed.as_ref()).unwrap();
    group.bench_function("Ed25519 sign, ed25519-dalek", |b| {
        use ed25519_dalek::Signer;
        b.iter(|| dalek.sign(black_box(message)))
    });
    group.bench_function("Ed25519 sign, ring", |b| {
        b.iter(|| ring_ed.sign(black_box(message)))
    });
    let signature = ring_ed.sign(message);
    let dalek_public = dalek.verifying_key();
    let dalek_signature = ed25519_dalek::Signature::from_slice(signature.as_ref()).unwrap();
    group.bench_function("Ed25519 verify, ed25519-dalek", |b| {
        use ed25519_dalek::Verifier;
        b.iter(|| dalek_public.verify(black_box(message), &dalek_signature))
    });
    let ring_public = UnparsedPublicKey::new(&ED25519, ring_ed.public_key().as_ref().to_vec());
    group.bench_function("Ed25519 verify, ring", |b| {
        b.iter(|| ring_public.verify(black_box(message), signature.as_ref()))
    });

    let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ring_ec =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec.as_ref(), &rng).unwrap();
    let p256 = p256::ecdsa::SigningKey::from_pkcs8_der(ec.as_ref()).unwrap();
    group.bench_function("P-256 sign, p256 (RFC 6979)", |b| {
        use p256::ecdsa::signature::Signer;
        b.iter(|| -> p256::ecdsa::Signature { p256.sign(black_box(message)) })
    });
    group.bench_function("P-256 sign, ring", |b| {
        b.iter(|| ring_ec.sign(&rng, black_box(message)).unwrap())
    });
    let signature = ring_ec.sign(&rng, message).unwrap();
    let p256_public = *p256.verifying_key();
    let p256_signature = p256::ecdsa::Signature::from_slice(signature.as_ref()).unwrap();
    group.bench_function("P-256 verify, p256", |b| {
        use p256::ecdsa::signature::Verifier;
        b.iter(|| p256_public.verify(black_box(message), &p256_signature))
    });
    let ring_public = UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_FIXED,
        ring_ec.public_key().as_ref().to_vec(),
    );
    group.bench_function("P-256 verify, ring", |b| {
        b.iter(|| ring_public.verify(black_box(message), signature.as_ref()))
    });
    group.finish();
}

criterion_group!(benches, sign_and_verify, backends);
criterion_main!(benches);
