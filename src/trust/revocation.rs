//! Issuer-scoped revocation: CRLs and configured serials.

use std::collections::{HashMap, HashSet};
use std::fmt;

use x509_parser::certificate::X509Certificate;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;

use super::{Bundle, printable_name};

/// Why a CRL cannot be loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    #[error("no CRL in the input")]
    Empty,
    #[error("PEM is truncated or malformed")]
    Pem,
    #[error("PEM block is not an X509 CRL")]
    NotCrl,
    #[error("more than one PEM block: one CRL per file")]
    Multiple,
    #[error("not a valid DER certificate revocation list")]
    Malformed,
}

/// A parsed certificate revocation list.
#[derive(Clone)]
pub struct Crl {
    der: Vec<u8>,
    issuer_raw: Vec<u8>,
    issuer: String,
    serials: Vec<Vec<u8>>,
    this_update: i64,
    next_update: Option<i64>,
}

impl fmt::Debug for Crl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crl")
            .field("issuer", &self.issuer)
            .field("revoked", &self.serials.len())
            .field("this_update", &self.this_update)
            .field("next_update", &self.next_update)
            .finish()
    }
}

impl Crl {
    /// Parses one CRL, PEM (`X509 CRL`) or DER. Capping the input size is
    /// the caller's job.
    pub fn parse(bytes: &[u8]) -> Result<Crl, CrlError> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        let der = match first {
            None => return Err(CrlError::Empty),
            Some(b'-') => {
                let mut blocks = Pem::iter_from_buffer(bytes);
                let block = blocks
                    .next()
                    .ok_or(CrlError::Empty)?
                    .map_err(|_| CrlError::Pem)?;
                if blocks.next().is_some() {
                    return Err(CrlError::Multiple);
                }
                if block.label != "X509 CRL" {
                    return Err(CrlError::NotCrl);
                }
                block.contents
            }
            Some(_) => bytes.to_vec(),
        };
        let (rest, crl) = x509_parser::parse_x509_crl(&der).map_err(|_| CrlError::Malformed)?;
        if !rest.is_empty() {
            return Err(CrlError::Malformed);
        }
        let issuer_raw = crl.issuer().as_raw().to_vec();
        let issuer = printable_name(crl.issuer());
        let serials = crl
            .iter_revoked_certificates()
            .map(|r| normalize_serial(r.raw_serial()).to_vec())
            .collect();
        let this_update = crl.last_update().timestamp();
        let next_update = crl.next_update().map(|t| t.timestamp());
        Ok(Crl {
            issuer_raw,
            issuer,
            serials,
            this_update,
            next_update,
            der,
        })
    }

    /// The issuer's DER `Name` (SEQUENCE header included), comparable with
    /// x509-parser's `X509Name::as_raw()` of a certificate's issuer.
    pub fn issuer_raw(&self) -> &[u8] {
        &self.issuer_raw
    }

    /// Printable issuer DN, for logs.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Revoked serials, big-endian without leading zero bytes.
    pub fn revoked_serials(&self) -> &[Vec<u8>] {
        &self.serials
    }

    /// `thisUpdate`, Unix seconds.
    pub fn this_update(&self) -> i64 {
        self.this_update
    }

    /// `nextUpdate`, Unix seconds (a CRL past it is stale).
    pub fn next_update(&self) -> Option<i64> {
        self.next_update
    }

    /// `None` when no certificate of `bundle` has this CRL's issuer as
    /// subject; otherwise whether the CRL's signature verifies with the key
    /// of one of them (a rotated CA may appear twice under one name).
    pub fn verify_with(&self, bundle: &Bundle) -> Option<bool> {
        let mut issuers = bundle.certificates_named(&self.issuer_raw).peekable();
        issuers.peek()?;
        let Ok((_, crl)) = x509_parser::parse_x509_crl(&self.der) else {
            return Some(false);
        };
        Some(issuers.any(|der| {
            X509Certificate::from_der(der)
                .is_ok_and(|(_, ca)| crl.verify_signature(ca.public_key()).is_ok())
        }))
    }
}

/// Revoked certificates: configured serials revoke under any issuer, CRL
/// serials only under the CRL's issuer.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    global: HashSet<Vec<u8>>,
    by_issuer: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
}

impl Revocations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Revokes `serial` whoever issued it (leading zero bytes ignored).
    pub fn revoke_serial(&mut self, serial: &[u8]) {
        self.global.insert(normalize_serial(serial).to_vec());
    }

    /// Revokes the CRL's serials for certificates of the CRL's issuer. Check
    /// the CRL's signature ([`Crl::verify_with`]) before adding it.
    pub fn add_crl(&mut self, crl: &Crl) {
        self.by_issuer
            .entry(crl.issuer_raw.clone())
            .or_default()
            .extend(crl.serials.iter().cloned());
    }

    /// Whether the certificate with this issuer (DER `Name`, as
    /// [`Crl::issuer_raw`]) and serial (raw DER contents or normalized) is
    /// revoked.
    pub fn is_revoked(&self, leaf_issuer_raw: &[u8], serial: &[u8]) -> bool {
        // Most registries revoke nothing: answer that without hashing.
        if self.is_empty() {
            return false;
        }
        let serial = normalize_serial(serial);
        self.global.contains(serial)
            || self
                .by_issuer
                .get(leaf_issuer_raw)
                .is_some_and(|s| s.contains(serial))
    }

    pub fn is_empty(&self) -> bool {
        self.global.is_empty() && self.by_issuer.is_empty()
    }
}

/// A serial without its leading zero bytes: DER prefixes `00` when the high
/// bit is set, configuration usually does not.
fn normalize_serial(raw: &[u8]) -> &[u8] {
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    &raw[start..]
}

/// Parses a configured serial (`4f1a`, `4F:1A`, `0x4f1a`, odd digit counts
/// allowed) into normalized big-endian bytes.
pub fn parse_serial(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let mut digits: String = s.chars().filter(|&c| c != ':').collect();
    if digits.is_empty() {
        return None;
    }
    if digits.len() % 2 == 1 {
        digits.insert(0, '0');
    }
    let bytes = hex::decode(digits).ok()?;
    Some(normalize_serial(&bytes).to_vec())
}

#[cfg(test)]
mod tests {
    use super::super::test_pki::*;
    use super::*;
    use rcgen::SerialNumber;

    #[test]
    fn crl_revokes_only_its_issuers_certificates() {
        let (root, inter) = mesh();
        let other = Ca::root("other root").intermediate("other intermediate");
        let serial: &[u8] = &[0x4f, 0x1a];
        let mine = inter.leaf_with(|p| p.serial_number = Some(SerialNumber::from_slice(serial)));
        let theirs = other.leaf_with(|p| p.serial_number = Some(SerialNumber::from_slice(serial)));
        let crl = Crl::parse(inter.crl(&[serial]).as_bytes()).unwrap();
        assert_eq!(crl.issuer(), "CN=mesh intermediate");
        assert_eq!(crl.next_update(), Some(NOW + 7 * DAY));
        assert_eq!(crl.verify_with(&bundle(&[&root, &inter])), Some(true));
        assert_eq!(crl.verify_with(&bundle(&[&root])), None);

        let mut revoked = Revocations::new();
        revoked.add_crl(&crl);
        assert!(revoked.is_revoked(&issuer_raw(&mine), &raw_serial(&mine)));
        assert!(!revoked.is_revoked(&issuer_raw(&theirs), &raw_serial(&theirs)));
        // A configured serial applies whoever issued it.
        revoked.revoke_serial(&parse_serial("4F:1A").unwrap());
        assert!(revoked.is_revoked(&issuer_raw(&theirs), &raw_serial(&theirs)));
    }

    #[test]
    fn der_serial_with_leading_zero_matches_configured_serial() {
        let (_root, inter) = mesh();
        let leaf =
            inter.leaf_with(|p| p.serial_number = Some(SerialNumber::from_slice(&[0x80, 0x01])));
        // DER keeps the serial positive with a leading zero byte.
        assert_eq!(raw_serial(&leaf), [0x00, 0x80, 0x01]);
        let configured = parse_serial("80:01").unwrap();
        assert_eq!(configured, [0x80, 0x01]);
        let mut revoked = Revocations::new();
        revoked.revoke_serial(&configured);
        assert!(revoked.is_revoked(&issuer_raw(&leaf), &raw_serial(&leaf)));

        let crl = Crl::parse(inter.crl(&[&[0x80, 0x01]]).as_bytes()).unwrap();
        assert_eq!(crl.revoked_serials(), [vec![0x80, 0x01]]);
        let mut by_crl = Revocations::new();
        by_crl.add_crl(&crl);
        assert!(by_crl.is_revoked(&issuer_raw(&leaf), &raw_serial(&leaf)));
        assert!(!by_crl.is_revoked(&issuer_raw(&leaf), &[0x80, 0x02]));
    }

    #[test]
    fn configured_serials_parse_in_common_spellings() {
        assert_eq!(parse_serial("4f1a"), Some(vec![0x4f, 0x1a]));
        assert_eq!(parse_serial("4F:1A"), Some(vec![0x4f, 0x1a]));
        assert_eq!(parse_serial("0x4f1a"), Some(vec![0x4f, 0x1a]));
        assert_eq!(parse_serial("00:4f:1a"), Some(vec![0x4f, 0x1a]));
        assert_eq!(parse_serial("f1a"), Some(vec![0x0f, 0x1a]));
        assert_eq!(parse_serial("zz"), None);
        assert_eq!(parse_serial(""), None);
        assert_eq!(parse_serial("0x"), None);
    }

    #[test]
    fn crl_with_a_forged_signature_does_not_verify() {
        let (root, inter) = mesh();
        // Same issuer name, different key.
        let forger = Ca::root("evil root").intermediate("mesh intermediate");
        let forged = Crl::parse(forger.crl(&[&[1]]).as_bytes()).unwrap();
        assert_eq!(
            forged.issuer_raw(),
            Crl::parse(inter.crl(&[]).as_bytes()).unwrap().issuer_raw()
        );
        assert_eq!(forged.verify_with(&bundle(&[&root, &inter])), Some(false));
    }

    #[test]
    fn crl_parses_from_der_too() {
        let (_root, inter) = mesh();
        let pem = inter.crl(&[&[7]]);
        let der = Pem::iter_from_buffer(pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .contents;
        let crl = Crl::parse(&der).unwrap();
        assert_eq!(crl.revoked_serials(), [vec![7]]);
    }

    #[test]
    fn hostile_crls_are_errors_not_panics() {
        let (root, inter) = mesh();
        let crl_pem = inter.crl(&[&[1], &[2]]);
        let crl_der = Pem::iter_from_buffer(crl_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .contents;
        for cut in 0..crl_der.len() {
            assert!(Crl::parse(&crl_der[..cut]).is_err(), "DER cut at {cut}");
        }
        for cut in 0..crl_pem.len() {
            let _ = Crl::parse(&crl_pem.as_bytes()[..cut]);
        }
        assert_eq!(Crl::parse(b"").unwrap_err(), CrlError::Empty);
        assert_eq!(Crl::parse(b"garbage").unwrap_err(), CrlError::Malformed);
        assert_eq!(
            Crl::parse(&crl_pem.as_bytes()[..crl_pem.len() / 2]).unwrap_err(),
            CrlError::Pem
        );
        assert_eq!(
            Crl::parse(root.pem().as_bytes()).unwrap_err(),
            CrlError::NotCrl
        );
        assert_eq!(
            Crl::parse(format!("{crl_pem}{crl_pem}").as_bytes()).unwrap_err(),
            CrlError::Multiple
        );
        let mut trailing = crl_der.clone();
        trailing.push(0);
        assert_eq!(Crl::parse(&trailing).unwrap_err(), CrlError::Malformed);
    }
}
