//! Who the peer is, according to its certificate.
//!
//! Envoy forwards the caller's leaf certificate as URL-encoded PEM. This module
//! turns that untrusted string into a [`PeerCertificate`]: the SANs that may
//! name a service (URI first, then DNS; never the CN), the facts the decision
//! checks against policy (validity window, serial and issuer, thumbprint), and
//! nothing else. Whether those facts are *acceptable* is `check`'s business
//! (with `trust` judging chains); this module only refuses what is malformed
//! or cannot be a client certificate.

use std::borrow::Cow;

use sha2::{Digest, Sha256};
use x509_parser::prelude::*;

/// Forwarded certificates longer than this are refused before any decoding.
/// The length is that of the URL-encoded string Envoy sends (a
/// percent-encoded character takes three bytes): about 15,000 bytes of PEM. A leaf
/// with a few dozen SANs is about 4 KiB of URL-encoded PEM; this leaves
/// room while bounding the work an attacker can ask for.
pub const MAX_FORWARDED_CERT_LEN: usize = 16 * 1024;

/// The kind of a subject alternative name. Type matters: a DNS SAN never
/// matches a URI principal with the same text (CVE-2022-21656).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SanKind {
    Uri,
    Dns,
}

/// One identity-bearing SAN from the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct San {
    pub kind: SanKind,
    /// URI SANs verbatim; DNS SANs lower-cased (DNS is case-insensitive).
    pub value: String,
}

impl San {
    /// The one place a name is put in the form names are compared in:
    /// certificate SANs, Envoy's `source.principal` and registry principals
    /// all go through here.
    pub fn new(kind: SanKind, value: &str) -> San {
        let value = match kind {
            SanKind::Uri => value.to_owned(),
            SanKind::Dns => value.to_ascii_lowercase(),
        };
        San { kind, value }
    }

    /// A principal string (configured, or Envoy's `source.principal`),
    /// classified by [`principal_kind`].
    pub fn from_principal(principal: &str) -> San {
        San::new(principal_kind(principal), principal)
    }
}

/// Why a forwarded certificate was refused before any policy applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("certificate is malformed")]
    Malformed,
    #[error("certificate cannot authenticate a client (CA certificate or no clientAuth usage)")]
    NotClientCertificate,
}

/// The facts about a peer certificate that the decision needs.
#[derive(Debug)]
pub struct PeerCertificate {
    der: Vec<u8>,
    /// Identity SANs: all URI SANs (in certificate order), then all DNS SANs.
    pub sans: Vec<San>,
    /// Serial number, big-endian, without leading zero bytes.
    pub serial: Vec<u8>,
    /// The issuer's DER `Name`: a serial is only unique per issuer, so
    /// revocation lists are matched on both.
    pub issuer: Vec<u8>,
    /// Validity window, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// SHA-256 of the DER encoding: the RFC 8705 `x5t#S256` thumbprint and
    /// what `certificate_sha256` pins are compared with.
    pub sha256: [u8; 32],
}

impl PeerCertificate {
    /// Parses the value of `attributes.source.certificate`.
    pub fn from_forwarded(forwarded: &str) -> Result<Self, CertError> {
        if forwarded.len() > MAX_FORWARDED_CERT_LEN {
            return Err(CertError::Malformed);
        }
        let pem = percent_decode_strict(forwarded.as_bytes()).ok_or(CertError::Malformed)?;
        Self::from_pem(&pem)
    }

    /// Parses exactly one PEM `CERTIFICATE` block (surrounding whitespace allowed).
    pub fn from_pem(pem: &[u8]) -> Result<Self, CertError> {
        let (rest, block) = parse_x509_pem(pem).map_err(|_| CertError::Malformed)?;
        if block.label != "CERTIFICATE" || !rest.iter().all(u8::is_ascii_whitespace) {
            return Err(CertError::Malformed);
        }
        Self::from_der(block.contents)
    }

    /// Parses a DER certificate.
    pub fn from_der(der: Vec<u8>) -> Result<Self, CertError> {
        let (rest, cert) = X509Certificate::from_der(&der).map_err(|_| CertError::Malformed)?;
        if !rest.is_empty() {
            return Err(CertError::Malformed);
        }
        reject_non_client(&cert)?;
        let sans = identity_sans(&cert)?;
        let validity = cert.validity();
        let serial = normalize_serial(cert.raw_serial()).to_vec();
        let issuer = cert.issuer().as_raw().to_vec();
        let not_before = validity.not_before.timestamp();
        let not_after = validity.not_after.timestamp();
        let sha256 = Sha256::digest(&der).into();
        Ok(PeerCertificate {
            sans,
            serial,
            issuer,
            not_before,
            not_after,
            sha256,
            der,
        })
    }

    /// The SHA-256 of a forwarded certificate's DER (what [`Self::sha256`]
    /// would be) without parsing it as X.509: one percent-decode, one PEM
    /// decode and one hash, cheap enough to name the caller before any
    /// decision work (the throttle). `None` when it is not one PEM
    /// certificate block.
    pub fn forwarded_sha256(forwarded: &str) -> Option<[u8; 32]> {
        if forwarded.len() > MAX_FORWARDED_CERT_LEN {
            return None;
        }
        let pem = percent_decode_strict(forwarded.as_bytes())?;
        let (rest, block) = parse_x509_pem(&pem).ok()?;
        if block.label != "CERTIFICATE" || !rest.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        Some(Sha256::digest(&block.contents).into())
    }

    /// The certificate in DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The URI SANs, in certificate order (what the X509-SVID rules read).
    pub fn uri_sans(&self) -> impl Iterator<Item = &str> {
        self.sans
            .iter()
            .take_while(|san| san.kind == SanKind::Uri)
            .map(|san| san.value.as_str())
    }
}

/// CA certificates and leaves whose extended key usage excludes client
/// authentication must not authenticate a caller, even if Envoy let them in.
fn reject_non_client(cert: &X509Certificate<'_>) -> Result<(), CertError> {
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => return Err(CertError::NotClientCertificate),
        Ok(_) => {}
        Err(_) => return Err(CertError::Malformed),
    }
    match cert.extended_key_usage() {
        Ok(Some(eku)) if !(eku.value.client_auth || eku.value.any) => {
            Err(CertError::NotClientCertificate)
        }
        Ok(_) => Ok(()),
        Err(_) => Err(CertError::Malformed),
    }
}

/// URI SANs, then DNS SANs. A SAN carrying NUL, control or non-ASCII bytes
/// makes the whole certificate malformed (CVE-2025-66220): such a name is an
/// attack on some parser, never a legitimate identity.
fn identity_sans(cert: &X509Certificate<'_>) -> Result<Vec<San>, CertError> {
    let Some(ext) = cert
        .subject_alternative_name()
        .map_err(|_| CertError::Malformed)?
    else {
        return Ok(Vec::new());
    };
    let names = &ext.value.general_names;
    let mut sans = Vec::with_capacity(names.len());
    for kind in [SanKind::Uri, SanKind::Dns] {
        for name in names {
            let value = match (kind, name) {
                (SanKind::Uri, GeneralName::URI(v)) => *v,
                (SanKind::Dns, GeneralName::DNSName(v)) => *v,
                _ => continue,
            };
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(CertError::Malformed);
            }
            sans.push(San::new(kind, value));
        }
    }
    Ok(sans)
}

/// Percent-decodes, refusing `%` not followed by two hex digits (the lenient
/// decoders pass those through, which would let two spellings of one
/// certificate exist).
pub fn percent_decode_strict(input: &[u8]) -> Option<Cow<'_, [u8]>> {
    if !input.contains(&b'%') {
        return Some(Cow::Borrowed(input));
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            let hex = input.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    Some(Cow::Owned(out))
}

/// Serial numbers compare as integers: strip leading zero bytes so that
/// `00:4f:1a` and `4f1a` are the same serial.
pub fn normalize_serial(raw: &[u8]) -> &[u8] {
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    &raw[start..]
}

/// Classifies a configured or Envoy-supplied principal string: URIs have a
/// scheme, everything else is a DNS name.
pub fn principal_kind(principal: &str) -> SanKind {
    if principal.contains("://") {
        SanKind::Uri
    } else {
        SanKind::Dns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_percent_decoding() {
        assert_eq!(&*percent_decode_strict(b"a%20b").unwrap(), b"a b");
        assert_eq!(&*percent_decode_strict(b"plain").unwrap(), b"plain");
        assert!(percent_decode_strict(b"a%2").is_none());
        assert!(percent_decode_strict(b"a%zz").is_none());
        assert!(percent_decode_strict(b"%").is_none());
    }

    #[test]
    fn serials_normalize() {
        assert_eq!(normalize_serial(&[0, 0, 0x4f, 0x1a]), &[0x4f, 0x1a]);
        assert_eq!(normalize_serial(&[0]), &[] as &[u8]);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for input in [
            "",
            "%",
            "-----BEGIN CERTIFICATE-----",
            "not a cert",
            "%00%01",
        ] {
            assert_eq!(
                PeerCertificate::from_forwarded(input).unwrap_err(),
                CertError::Malformed,
                "{input:?}"
            );
        }
        let huge = "A".repeat(200 * 1024);
        assert_eq!(
            PeerCertificate::from_forwarded(&huge).unwrap_err(),
            CertError::Malformed
        );
    }

    #[test]
    fn principal_kinds() {
        assert_eq!(principal_kind("spiffe://mesh/ns/a"), SanKind::Uri);
        assert_eq!(principal_kind("api.mesh.local"), SanKind::Dns);
    }
}
