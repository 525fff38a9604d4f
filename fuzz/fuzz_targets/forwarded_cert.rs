//! `attributes.source.certificate`: percent-decoding, PEM, X.509 and SAN
//! extraction on arbitrary strings. Never panics; whatever parses obeys the
//! identity rules (SANs URI-then-DNS, printable ASCII, DNS lower-cased;
//! bounded input size).
#![no_main]

use libfuzzer_sys::fuzz_target;
use service_auth::identity::{MAX_FORWARDED_CERT_LEN, PeerCertificate, SanKind};

fuzz_target!(|data: &str| {
    let Ok(cert) = PeerCertificate::from_forwarded(data) else {
        return;
    };
    assert!(data.len() <= MAX_FORWARDED_CERT_LEN);
    let first_dns = cert.sans.iter().position(|s| s.kind == SanKind::Dns);
    if let Some(i) = first_dns {
        assert!(
            cert.sans[i..].iter().all(|s| s.kind == SanKind::Dns),
            "URI SAN after a DNS SAN"
        );
    }
    for san in &cert.sans {
        assert!(!san.value.is_empty());
        assert!(san.value.bytes().all(|b| b.is_ascii_graphic()), "{san:?}");
        if san.kind == SanKind::Dns {
            assert_eq!(san.value, san.value.to_ascii_lowercase());
        }
    }
    assert!(cert.serial.first() != Some(&0), "serial not normalized");
    use sha2::Digest;
    assert_eq!(
        cert.sha256,
        <[u8; 32]>::from(sha2::Sha256::digest(cert.der()))
    );
});
