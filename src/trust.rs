//! Whether a peer certificate is vouched for: CA bundles, chain validation,
//! issuer-scoped revocation and SPIFFE IDs.
//!
//! This module owns the PKI rules and nothing else; it knows no registry,
//! service or request. Path building and signature checks are delegated to
//! `rustls-webpki`; what this module adds is the policy webpki leaves to its
//! caller:
//!
//! - **Anchors.** A [`Bundle`] is a PEM file of CA certificates. Only the
//!   *self-signed* ones become trust anchors; the rest are intermediates
//!   offered to the path builder, so an intermediate on its own vouches for
//!   nothing. webpki never looks at an anchor's validity or basicConstraints
//!   (an anchor is just a name and a key), so [`Bundle::verify`] checks the
//!   root's validity window and `pathLenConstraint` itself on every candidate
//!   path: an expired root vouches for nothing.
//! - **Usage.** The leaf's extended key usage must contain `clientAuth` or
//!   `anyExtendedKeyUsage`, or be absent (RFC 5280). webpki's stock
//!   `KeyUsage::client_auth()` refuses `anyExtendedKeyUsage`, so a validator
//!   of our own is used. webpki applies the validator to every certificate of
//!   the path, not only the leaf: an intermediate restricted to `serverAuth`
//!   cannot issue client certificates ("EKU chaining", as browsers do).
//! - **Name constraints** are enforced by webpki for DNS names and IP
//!   addresses. URI and directory-name constraints are not implemented there
//!   and fail closed: a CA in the path with *any* URI name constraint
//!   (permitted or excluded) makes every leaf carrying a URI SAN — every
//!   SPIFFE SVID — fail with [`ChainError::NameConstraint`]. Bundles holding
//!   such a CA get a [`BundleWarning::UriNameConstraints`] at load.
//! - **Time.** A [`Verdict`] carries the window `[from, until)` in which the
//!   same answer holds for the same leaf and bundle (it depends on time only
//!   through the validity windows of the leaf and the bundle's certificates),
//!   so callers can memoize verdicts and re-verify only when `now` leaves it.
//! - **Revocation** is not given to webpki: [`Revocations`] keeps
//!   configured serials (any issuer) and CRL serials scoped to the CRL's
//!   issuer, because a serial is only unique per issuer.
//! - **SPIFFE**: [`trust_domain`] and [`svid_trust_domain`] parse IDs per
//!   the SPIFFE ID and X509-SVID specs; which bundle a trust domain maps to
//!   is the caller's business.
//!
//! webpki limits paths to 6 intermediates and bounds path-building work, so a
//! hostile bundle or leaf cannot make verification unbounded.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use sha2::{Digest, Sha256};
use webpki::{
    EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeId, KeyPurposeIdIter, KeyUsage,
    RequiredEkuNotFoundContext, VerifiedPath,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

/// Why a CA bundle cannot be loaded. Blocks and certificates are numbered
/// from 1 in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("no certificate in the bundle")]
    Empty,
    #[error("PEM block {index} is truncated or malformed")]
    Pem { index: usize },
    #[error("PEM block {index} is a {label:?} block, not a CERTIFICATE")]
    NotCertificate { index: usize, label: String },
    #[error("certificate {index} is not a valid X.509 certificate")]
    Malformed { index: usize },
    #[error("certificate {index} ({subject}) is not a CA (basicConstraints cA is not set)")]
    NotCa { index: usize, subject: String },
    #[error(
        "certificate {index} ({subject}) cannot be used for path validation \
         (unsupported encoding or critical extension)"
    )]
    Unsupported { index: usize, subject: String },
}

/// Something an operator should know about a loaded bundle. None of these
/// fail the load; each names a certificate that vouches for nothing (now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleWarning {
    Expired { subject: String, not_after: i64 },
    NotYetValid { subject: String, not_before: i64 },
    /// Not self-signed, and no other certificate of the bundle has its
    /// issuer as subject: it can never be part of a path to a root.
    NoIssuerInBundle { subject: String },
    /// Carries URI name constraints, which webpki enforces by refusing every
    /// leaf with a URI SAN below it.
    UriNameConstraints { subject: String },
}

impl fmt::Display for BundleWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleWarning::Expired { subject, not_after } => write!(
                f,
                "CA certificate {subject} expired (notAfter {not_after}); it vouches for nothing"
            ),
            BundleWarning::NotYetValid {
                subject,
                not_before,
            } => write!(
                f,
                "CA certificate {subject} is not valid yet (notBefore {not_before}); \
                 it vouches for nothing until then"
            ),
            BundleWarning::NoIssuerInBundle { subject } => write!(
                f,
                "CA certificate {subject} is not self-signed and no certificate in the bundle \
                 issued it; it vouches for nothing"
            ),
            BundleWarning::UriNameConstraints { subject } => write!(
                f,
                "CA certificate {subject} has URI name constraints, which are not supported: \
                 every certificate with a URI SAN below it is refused"
            ),
        }
    }
}

/// One CA certificate of a bundle, as operators see it.
#[derive(Clone)]
pub struct CaCertificate {
    /// Printable subject DN (control characters escaped).
    pub subject: String,
    /// Validity window, Unix seconds, both inclusive (RFC 5280).
    pub not_before: i64,
    pub not_after: i64,
    /// Self-signed: a trust anchor. Otherwise an intermediate.
    pub is_root: bool,
    der: CertificateDer<'static>,
    subject_raw: Vec<u8>,
    issuer_raw: Vec<u8>,
    path_len: Option<u32>,
    uri_name_constraints: bool,
}

impl fmt::Debug for CaCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaCertificate")
            .field("subject", &self.subject)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("is_root", &self.is_root)
            .finish_non_exhaustive()
    }
}

/// A parsed PEM bundle of CA certificates (roots and intermediates),
/// immutable and cheap to share behind an `Arc`.
pub struct Bundle {
    certs: Vec<CaCertificate>,
    /// webpki's view of the roots; `anchor_cert[i]` indexes `certs`.
    anchors: Vec<TrustAnchor<'static>>,
    anchor_cert: Vec<usize>,
    intermediates: Vec<CertificateDer<'static>>,
    id: [u8; 32],
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("id", &hex::encode(self.id))
            .field("certificates", &self.certs)
            .finish()
    }
}

impl Bundle {
    /// Parses a PEM bundle. Every block must be a CA certificate; text
    /// between blocks is ignored. Duplicate certificates are kept once.
    pub fn from_pem(pem: &[u8]) -> Result<Bundle, BundleError> {
        let mut ders: Vec<Vec<u8>> = Vec::new();
        for (i, block) in Pem::iter_from_buffer(pem).enumerate() {
            let index = i + 1;
            let block = block.map_err(|_| BundleError::Pem { index })?;
            if block.label != "CERTIFICATE" {
                return Err(BundleError::NotCertificate {
                    index,
                    label: printable_label(&block.label),
                });
            }
            if !ders.contains(&block.contents) {
                ders.push(block.contents);
            }
        }
        if ders.is_empty() {
            return Err(BundleError::Empty);
        }
        let mut certs = Vec::with_capacity(ders.len());
        for (i, der) in ders.into_iter().enumerate() {
            certs.push(parse_ca(der, i + 1)?);
        }
        let mut anchors = Vec::new();
        let mut anchor_cert = Vec::new();
        let mut intermediates = Vec::new();
        let mut hasher = Sha256::new();
        for (i, cert) in certs.iter().enumerate() {
            hasher.update((cert.der.len() as u64).to_be_bytes());
            hasher.update(cert.der.as_ref());
            if cert.is_root {
                let anchor = webpki::anchor_from_trusted_cert(&cert.der).map_err(|_| {
                    BundleError::Unsupported {
                        index: i + 1,
                        subject: cert.subject.clone(),
                    }
                })?;
                anchors.push(anchor.to_owned());
                anchor_cert.push(i);
            } else {
                intermediates.push(cert.der.clone());
            }
        }
        Ok(Bundle {
            certs,
            anchors,
            anchor_cert,
            intermediates,
            id: hasher.finalize().into(),
        })
    }

    /// SHA-256 over the bundle's DER certificates: tells bundles apart in
    /// verdict memos, so a bundle replaced on reload is verified afresh.
    pub fn id(&self) -> [u8; 32] {
        self.id
    }

    /// Every certificate of the bundle, in file order.
    pub fn certificates(&self) -> &[CaCertificate] {
        &self.certs
    }

    /// Load warnings at `now` (Unix seconds).
    pub fn warnings(&self, now: i64) -> Vec<BundleWarning> {
        let mut out = Vec::new();
        for (i, cert) in self.certs.iter().enumerate() {
            if now > cert.not_after {
                out.push(BundleWarning::Expired {
                    subject: cert.subject.clone(),
                    not_after: cert.not_after,
                });
            } else if now < cert.not_before {
                out.push(BundleWarning::NotYetValid {
                    subject: cert.subject.clone(),
                    not_before: cert.not_before,
                });
            }
            let issued_here = self
                .certs
                .iter()
                .enumerate()
                .any(|(j, other)| j != i && other.subject_raw == cert.issuer_raw);
            if !cert.is_root && !issued_here {
                out.push(BundleWarning::NoIssuerInBundle {
                    subject: cert.subject.clone(),
                });
            }
            if cert.uri_name_constraints {
                out.push(BundleWarning::UriNameConstraints {
                    subject: cert.subject.clone(),
                });
            }
        }
        out
    }

    /// Validates `leaf_der` as a client certificate at `now` (Unix seconds):
    /// it must chain through the bundle's intermediates to one of its roots,
    /// every certificate of the path (root included) within its validity
    /// window, CA and path-length constraints honoured, signatures valid,
    /// `clientAuth` usage allowed. Revocation is not checked here.
    pub fn verify(&self, leaf_der: &[u8], now: i64) -> Verdict {
        // webpki's clock starts at the epoch; every earlier instant is
        // judged as the epoch, so they all share its verdict.
        let t = now.max(0);
        let (mut from, until) = self.window(leaf_validity(leaf_der), t);
        if now < 0 {
            from = i64::MIN;
        }
        Verdict {
            result: self.chain(leaf_der, t),
            from,
            until,
        }
    }

    fn chain(&self, leaf_der: &[u8], t: i64) -> Result<(), ChainError> {
        let der = CertificateDer::from(leaf_der);
        let leaf = EndEntityCert::try_from(&der).map_err(|_| ChainError::Malformed)?;
        let root_check = |path: &VerifiedPath<'_>| self.check_root(path, t);
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &self.intermediates,
            unix_time(t),
            ClientAuth,
            None,
            Some(&root_check),
        )
        .map(|_| ())
        .map_err(ChainError::from)
    }

    /// What webpki leaves out for anchors: the root's own validity window
    /// and its `pathLenConstraint`. An error here makes webpki try the next
    /// candidate path.
    fn check_root(&self, path: &VerifiedPath<'_>, t: i64) -> Result<(), webpki::Error> {
        let root = self
            .anchors
            .iter()
            .position(|a| std::ptr::eq(a, path.anchor()))
            .and_then(|i| self.anchor_cert.get(i))
            .and_then(|&i| self.certs.get(i))
            .ok_or(webpki::Error::UnknownIssuer)?;
        if t < root.not_before {
            return Err(webpki::Error::CertNotValidYet {
                time: unix_time(t),
                not_before: unix_time(root.not_before),
            });
        }
        if t > root.not_after {
            return Err(webpki::Error::CertExpired {
                time: unix_time(t),
                not_after: unix_time(root.not_after),
            });
        }
        let below = path.intermediate_certificates().count();
        match root.path_len {
            Some(max) if below > max as usize => Err(webpki::Error::PathLenConstraintViolated),
            _ => Ok(()),
        }
    }

    /// The largest `[from, until)` around `t` in which no certificate of the
    /// leaf or the bundle enters or leaves its validity window.
    fn window(&self, leaf: Option<(i64, i64)>, t: i64) -> (i64, i64) {
        let Some(leaf) = leaf else {
            // Unknown leaf validity: promise nothing beyond this second.
            return (t, t.saturating_add(1));
        };
        let (mut from, mut until) = (i64::MIN, i64::MAX);
        let windows = std::iter::once(leaf).chain(self.certs.iter().map(|c| (c.not_before, c.not_after)));
        for (not_before, not_after) in windows {
            // Valid iff not_before <= t <= not_after: the answer can change
            // at not_before and at not_after + 1.
            for edge in [not_before, not_after.saturating_add(1)] {
                if edge <= t {
                    from = from.max(edge);
                } else {
                    until = until.min(edge);
                }
            }
        }
        (from, until)
    }
}

/// The outcome of [`Bundle::verify`] and how long it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub result: Result<(), ChainError>,
    /// The same leaf and bundle get the same result for every `now` in
    /// `[from, until)` (Unix seconds).
    pub from: i64,
    pub until: i64,
}

impl Verdict {
    pub fn is_trusted(&self) -> bool {
        self.result.is_ok()
    }

    /// True when this verdict still answers for `now`.
    pub fn holds_at(&self, now: i64) -> bool {
        self.from <= now && now < self.until
    }
}

/// Why a leaf does not chain to a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("certificate cannot be parsed for path validation")]
    Malformed,
    #[error("no path to a root of the bundle")]
    UnknownIssuer,
    #[error("a certificate of the path has expired")]
    Expired,
    #[error("a certificate of the path is not valid yet")]
    NotYetValid,
    #[error("a signature in the path does not verify")]
    BadSignature,
    #[error("a signature in the path uses an unsupported algorithm")]
    UnsupportedAlgorithm,
    #[error("the certificate is a CA, not a client certificate")]
    CaAsLeaf,
    #[error("a CA or path-length constraint is violated")]
    Constraint,
    #[error("a name constraint is violated (URI constraints always are)")]
    NameConstraint,
    #[error("extended key usage allows neither clientAuth nor anyExtendedKeyUsage")]
    Usage,
    #[error("a certificate of the path is distrusted")]
    Distrusted,
    #[error("path building exceeded its work budget")]
    TooComplex,
    #[error("the path is invalid")]
    Invalid,
}

impl From<webpki::Error> for ChainError {
    fn from(e: webpki::Error) -> Self {
        use webpki::Error as E;
        #[allow(deprecated)]
        match e {
            E::UnknownIssuer => ChainError::UnknownIssuer,
            E::CertExpired { .. } => ChainError::Expired,
            E::CertNotValidYet { .. } => ChainError::NotYetValid,
            E::InvalidSignatureForPublicKey | E::SignatureAlgorithmMismatch => {
                ChainError::BadSignature
            }
            E::UnsupportedSignatureAlgorithm
            | E::UnsupportedSignatureAlgorithmContext(_)
            | E::UnsupportedSignatureAlgorithmForPublicKey
            | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
                ChainError::UnsupportedAlgorithm
            }
            E::CaUsedAsEndEntity => ChainError::CaAsLeaf,
            E::EndEntityUsedAsCa | E::PathLenConstraintViolated => ChainError::Constraint,
            E::NameConstraintViolation
            | E::InvalidNetworkMaskConstraint
            | E::MalformedNameConstraint => ChainError::NameConstraint,
            E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension => {
                ChainError::Usage
            }
            E::CertDistrusted => ChainError::Distrusted,
            E::MaximumSignatureChecksExceeded
            | E::MaximumPathBuildCallsExceeded
            | E::MaximumPathDepthExceeded
            | E::MaximumNameConstraintComparisonsExceeded => ChainError::TooComplex,
            E::BadDer | E::BadDerTime | E::TrailingData(_) | E::InvalidCertValidity => {
                ChainError::Malformed
            }
            _ => ChainError::Invalid,
        }
    }
}

/// Client-certificate usage: EKU absent, or containing `clientAuth` or
/// `anyExtendedKeyUsage` (webpki's `KeyUsage::client_auth()` refuses the
/// latter).
struct ClientAuth;

/// id-kp-clientAuth, 1.3.6.1.5.5.7.3.2 (DER contents).
const EKU_CLIENT_AUTH: KeyPurposeId<'static> =
    KeyPurposeId::new(&[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02]);
/// anyExtendedKeyUsage, 2.5.29.37.0 (DER contents).
const EKU_ANY: KeyPurposeId<'static> = KeyPurposeId::new(&[0x55, 0x1d, 0x25, 0x00]);

impl ExtendedKeyUsageValidator for ClientAuth {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let mut present = Vec::new();
        for id in iter {
            let id = id?;
            if id == EKU_CLIENT_AUTH || id == EKU_ANY {
                return Ok(());
            }
            present.push(id.to_decoded_oid());
        }
        if present.is_empty() {
            return Ok(());
        }
        Err(webpki::Error::RequiredEkuNotFoundContext(
            RequiredEkuNotFoundContext {
                required: KeyUsage::client_auth(),
                present,
            },
        ))
    }
}

fn parse_ca(der: Vec<u8>, index: usize) -> Result<CaCertificate, BundleError> {
    let (rest, cert) =
        X509Certificate::from_der(&der).map_err(|_| BundleError::Malformed { index })?;
    if !rest.is_empty() {
        return Err(BundleError::Malformed { index });
    }
    let subject = printable_name(cert.subject());
    let path_len = match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => bc.value.path_len_constraint,
        _ => return Err(BundleError::NotCa { index, subject }),
    };
    // The subject webpki matches an issuer against; also rejects early what
    // path building would choke on at every verification.
    if EndEntityCert::try_from(&CertificateDer::from(der.as_slice())).is_err() {
        return Err(BundleError::Unsupported { index, subject });
    }
    let is_root = cert.subject().as_raw() == cert.issuer().as_raw()
        && cert.verify_signature(None).is_ok();
    let uri_name_constraints = match cert.name_constraints() {
        Ok(Some(nc)) => [&nc.value.permitted_subtrees, &nc.value.excluded_subtrees]
            .into_iter()
            .flatten()
            .flatten()
            .any(|s| matches!(s.base, GeneralName::URI(_))),
        _ => false,
    };
    let validity = cert.validity();
    Ok(CaCertificate {
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        is_root,
        subject_raw: cert.subject().as_raw().to_vec(),
        issuer_raw: cert.issuer().as_raw().to_vec(),
        path_len,
        uri_name_constraints,
        subject,
        der: CertificateDer::from(der),
    })
}

/// The leaf's validity window, when it parses.
fn leaf_validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

fn unix_time(t: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(t).unwrap_or(0)))
}

/// Longest printable form kept of a name from a certificate.
const MAX_PRINTABLE: usize = 256;

/// A DN for logs and errors: control characters escaped, length capped.
fn printable_name(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    for (i, c) in name.to_string().chars().enumerate() {
        if i == MAX_PRINTABLE {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// A PEM label for an error message: only the characters labels are made of.
fn printable_label(label: &str) -> String {
    label
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == ' ')
        .take(32)
        .collect()
}

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
        let mut issuers = bundle
            .certs
            .iter()
            .filter(|c| c.subject_raw == self.issuer_raw)
            .peekable();
        issuers.peek()?;
        let Ok((_, crl)) = x509_parser::parse_x509_crl(&self.der) else {
            return Some(false);
        };
        Some(issuers.any(|ca| {
            X509Certificate::from_der(ca.der.as_ref())
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

/// The trust domain of a SPIFFE ID (`spiffe://TD/path`), or `None` when
/// `uri` is not a valid SPIFFE ID: lower-case scheme, a non-empty trust
/// domain of `[a-z0-9._-]` (so no userinfo, port or upper case), and path
/// segments of `[A-Za-z0-9._-]` that are neither empty, `.` nor `..` (no
/// trailing slash, query, fragment or percent-encoding).
pub fn trust_domain(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if !is_valid_trust_domain(td) {
        return None;
    }
    if let Some(path) = path.strip_prefix('/') {
        let segment_ok = |seg: &str| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        };
        if !path.split('/').all(segment_ok) {
            return None;
        }
    }
    Some(td)
}

/// Whether `name` is a valid SPIFFE trust domain name (for validating
/// configured `trust_domains` keys).
pub fn is_valid_trust_domain(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
}

/// Why a certificate's URI SANs do not make a valid X509-SVID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("a certificate with a spiffe:// SAN must carry exactly one URI SAN")]
    NotSoleUri,
    #[error("malformed SPIFFE ID")]
    Malformed,
}

/// Applies the X509-SVID rules to a certificate's URI SANs: `Ok(None)` when
/// none uses the `spiffe` scheme (in any case), `Ok(Some(trust domain))` for
/// a valid SVID. A `spiffe` URI next to any other URI SAN, or one that is not
/// a valid SPIFFE ID, is an error: the caller must refuse the certificate
/// rather than read it as a non-SPIFFE one.
pub fn svid_trust_domain<'a>(
    uri_sans: impl IntoIterator<Item = &'a str>,
) -> Result<Option<&'a str>, SvidError> {
    let uris: Vec<&str> = uri_sans.into_iter().collect();
    let is_spiffe = |u: &&str| {
        u.get(..7)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe:"))
    };
    let Some(spiffe) = uris.iter().copied().find(is_spiffe) else {
        return Ok(None);
    };
    if uris.len() != 1 {
        return Err(SvidError::NotSoleUri);
    }
    trust_domain(spiffe).map(Some).ok_or(SvidError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
        CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
        KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
    };
    use time::OffsetDateTime;

    /// A fixed "now" so windows are exact; certificates are dated around it.
    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;

    fn at(t: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(t).unwrap()
    }

    struct Ca {
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    /// CA parameters valid from NOW - 2 days to NOW + 365 days.
    fn ca_params(name: &str) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = at(NOW - 2 * DAY);
        p.not_after = at(NOW + 365 * DAY);
        p
    }

    impl Ca {
        fn root(name: &str) -> Ca {
            Ca::root_with(name, |_| {})
        }

        fn root_with(name: &str, edit: impl FnOnce(&mut CertificateParams)) -> Ca {
            let mut p = ca_params(name);
            edit(&mut p);
            Ca {
                issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
            }
        }

        fn intermediate(&self, name: &str) -> Ca {
            self.intermediate_with(name, |_| {})
        }

        fn intermediate_with(&self, name: &str, edit: impl FnOnce(&mut CertificateParams)) -> Ca {
            let mut p = ca_params(name);
            edit(&mut p);
            let key = KeyPair::generate().unwrap();
            Ca {
                issuer: CertifiedIssuer::signed_by(p, key, &self.issuer).unwrap(),
            }
        }

        fn pem(&self) -> String {
            self.issuer.pem()
        }

        /// A client leaf for one SPIFFE ID, valid NOW - 1 day .. NOW + 30 days.
        fn leaf(&self) -> Vec<u8> {
            self.leaf_with(|_| {})
        }

        fn leaf_with(&self, edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
            let mut p = CertificateParams::default();
            p.distinguished_name.push(DnType::CommonName, "workload");
            p.subject_alt_names = vec![SanType::URI(
                "spiffe://a.example/ns/default/sa/api".try_into().unwrap(),
            )];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.not_before = at(NOW - DAY);
            p.not_after = at(NOW + 30 * DAY);
            edit(&mut p);
            let key = KeyPair::generate().unwrap();
            p.signed_by(&key, &self.issuer).unwrap().der().to_vec()
        }

        fn crl(&self, serials: &[&[u8]]) -> String {
            let params = CertificateRevocationListParams {
                this_update: at(NOW - DAY),
                next_update: at(NOW + 7 * DAY),
                crl_number: SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: serials
                    .iter()
                    .map(|s| RevokedCertParams {
                        serial_number: SerialNumber::from_slice(s),
                        revocation_time: at(NOW - DAY),
                        reason_code: None,
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: KeyIdMethod::Sha256,
            };
            params.signed_by(&self.issuer).unwrap().pem().unwrap()
        }
    }

    fn bundle(cas: &[&Ca]) -> Bundle {
        let pem: String = cas.iter().map(|c| c.pem()).collect();
        Bundle::from_pem(pem.as_bytes()).unwrap()
    }

    fn issuer_raw(der: &[u8]) -> Vec<u8> {
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        cert.issuer().as_raw().to_vec()
    }

    fn raw_serial(der: &[u8]) -> Vec<u8> {
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        cert.raw_serial().to_vec()
    }

    /// Root -> intermediate, the shape SPIRE and cert-manager issue from.
    fn mesh() -> (Ca, Ca) {
        let root = Ca::root("mesh root");
        let inter = root.intermediate("mesh intermediate");
        (root, inter)
    }

    #[test]
    fn leaf_of_an_intermediate_chains_to_root_plus_intermediate() {
        let (root, inter) = mesh();
        let b = bundle(&[&root, &inter]);
        assert_eq!(b.verify(&inter.leaf(), NOW).result, Ok(()));
        assert!(b.warnings(NOW).is_empty());
        let roots: Vec<bool> = b.certificates().iter().map(|c| c.is_root).collect();
        assert_eq!(roots, [true, false]);
        assert_eq!(b.certificates()[1].subject, "CN=mesh intermediate");
    }

    #[test]
    fn leaf_directly_under_the_root_is_trusted() {
        let root = Ca::root("mesh root");
        assert_eq!(bundle(&[&root]).verify(&root.leaf(), NOW).result, Ok(()));
    }

    #[test]
    fn root_only_bundle_does_not_vouch_for_an_intermediates_leaf() {
        let (root, inter) = mesh();
        let verdict = bundle(&[&root]).verify(&inter.leaf(), NOW);
        assert_eq!(verdict.result, Err(ChainError::UnknownIssuer));
    }

    #[test]
    fn an_intermediate_alone_is_no_anchor() {
        let (_root, inter) = mesh();
        let b = bundle(&[&inter]);
        assert_eq!(b.verify(&inter.leaf(), NOW).result, Err(ChainError::UnknownIssuer));
        assert_eq!(
            b.warnings(NOW),
            [BundleWarning::NoIssuerInBundle {
                subject: "CN=mesh intermediate".into()
            }]
        );
    }

    #[test]
    fn expired_intermediate_vouches_for_nothing_and_warns() {
        let root = Ca::root("mesh root");
        let inter = root.intermediate_with("old intermediate", |p| {
            p.not_before = at(NOW - 100 * DAY);
            p.not_after = at(NOW - DAY);
        });
        let b = bundle(&[&root, &inter]);
        assert_eq!(b.verify(&inter.leaf(), NOW).result, Err(ChainError::Expired));
        assert_eq!(
            b.warnings(NOW),
            [BundleWarning::Expired {
                subject: "CN=old intermediate".into(),
                not_after: NOW - DAY,
            }]
        );
    }

    #[test]
    fn expired_root_vouches_for_nothing() {
        let root = Ca::root_with("old root", |p| {
            p.not_before = at(NOW - 100 * DAY);
            p.not_after = at(NOW - DAY);
        });
        let inter = root.intermediate("mesh intermediate");
        let b = bundle(&[&root, &inter]);
        assert_eq!(b.verify(&inter.leaf(), NOW).result, Err(ChainError::Expired));
        assert_eq!(b.verify(&root.leaf(), NOW).result, Err(ChainError::Expired));
        assert!(matches!(b.warnings(NOW)[..], [BundleWarning::Expired { .. }]));
    }

    #[test]
    fn root_not_yet_valid_vouches_for_nothing() {
        let root = Ca::root_with("future root", |p| {
            p.not_before = at(NOW + DAY);
        });
        let b = bundle(&[&root]);
        let leaf = root.leaf();
        assert_eq!(b.verify(&leaf, NOW).result, Err(ChainError::NotYetValid));
        // ...and becomes an anchor exactly at its notBefore.
        let verdict = b.verify(&leaf, NOW);
        assert_eq!(verdict.until, NOW + DAY);
        assert_eq!(b.verify(&leaf, verdict.until).result, Ok(()));
    }

    #[test]
    fn root_path_length_zero_refuses_an_intermediate() {
        let root = Ca::root_with("pathlen 0 root", |p| {
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        });
        let inter = root.intermediate("mesh intermediate");
        let b = bundle(&[&root, &inter]);
        assert_eq!(b.verify(&inter.leaf(), NOW).result, Err(ChainError::Constraint));
        // The root may still issue leaves itself.
        assert_eq!(b.verify(&root.leaf(), NOW).result, Ok(()));
    }

    #[test]
    fn intermediate_path_length_zero_refuses_a_sub_ca() {
        let root = Ca::root("mesh root");
        let inter = root.intermediate_with("pathlen 0 intermediate", |p| {
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        });
        let sub = inter.intermediate("sub intermediate");
        let b = bundle(&[&root, &inter, &sub]);
        assert_eq!(b.verify(&sub.leaf(), NOW).result, Err(ChainError::Constraint));
        assert_eq!(b.verify(&inter.leaf(), NOW).result, Ok(()));
    }

    #[test]
    fn a_ca_certificate_is_no_client_certificate() {
        let (root, inter) = mesh();
        let ca_leaf = inter.leaf_with(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained));
        let b = bundle(&[&root, &inter]);
        assert_eq!(b.verify(&ca_leaf, NOW).result, Err(ChainError::CaAsLeaf));
    }

    #[test]
    fn extended_key_usage_must_allow_client_auth() {
        use ExtendedKeyUsagePurpose::*;
        let (root, inter) = mesh();
        let b = bundle(&[&root, &inter]);
        let with_eku = |eku: Vec<ExtendedKeyUsagePurpose>| {
            b.verify(&inter.leaf_with(|p| p.extended_key_usages = eku), NOW)
                .result
        };
        assert_eq!(with_eku(vec![ClientAuth]), Ok(()));
        assert_eq!(with_eku(vec![ServerAuth, ClientAuth]), Ok(()));
        assert_eq!(with_eku(vec![Any]), Ok(()));
        assert_eq!(with_eku(vec![]), Ok(()));
        assert_eq!(with_eku(vec![ServerAuth]), Err(ChainError::Usage));
        assert_eq!(with_eku(vec![CodeSigning, ServerAuth]), Err(ChainError::Usage));
    }

    #[test]
    fn an_intermediate_restricted_to_server_auth_issues_no_clients() {
        let root = Ca::root("mesh root");
        let inter = root.intermediate_with("server-only intermediate", |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        });
        let b = bundle(&[&root, &inter]);
        assert_eq!(b.verify(&inter.leaf(), NOW).result, Err(ChainError::Usage));
    }

    #[test]
    fn another_domains_ca_does_not_vouch() {
        let (root_a, inter_a) = mesh();
        let root_b = Ca::root("domain b root");
        let a = bundle(&[&root_a, &inter_a]);
        let verdict = a.verify(&root_b.intermediate("b intermediate").leaf(), NOW);
        assert_eq!(verdict.result, Err(ChainError::UnknownIssuer));
        // Domain B naming its CA like A's does not help: the key differs.
        let impostor = Ca::root("mesh root").intermediate("mesh intermediate");
        let verdict = a.verify(&impostor.leaf(), NOW);
        assert_eq!(verdict.result, Err(ChainError::BadSignature));
    }

    #[test]
    fn rotation_old_and_new_intermediates_under_one_name() {
        let root = Ca::root("mesh root");
        let old = root.intermediate("mesh intermediate");
        let new = root.intermediate("mesh intermediate");
        let both = bundle(&[&root, &old, &new]);
        assert_eq!(both.verify(&old.leaf(), NOW).result, Ok(()));
        assert_eq!(both.verify(&new.leaf(), NOW).result, Ok(()));
        let rotated = bundle(&[&root, &new]);
        assert_eq!(rotated.verify(&new.leaf(), NOW).result, Ok(()));
        assert!(rotated.verify(&old.leaf(), NOW).result.is_err());
        assert_ne!(both.id(), rotated.id());
        assert_eq!(rotated.id(), bundle(&[&root, &new]).id());
    }

    #[test]
    fn verdict_holds_inside_its_window_and_flips_at_the_leafs_expiry() {
        let (root, inter) = mesh();
        let b = bundle(&[&root, &inter]);
        let leaf = inter.leaf_with(|p| p.not_after = at(NOW + 10 * DAY));
        let v = b.verify(&leaf, NOW);
        assert_eq!(v.result, Ok(()));
        // Latest edge at or before NOW: the leaf's notBefore (CAs start earlier).
        assert_eq!((v.from, v.until), (NOW - DAY, NOW + 10 * DAY + 1));
        for t in [v.from, NOW, NOW + 5 * DAY, v.until - 1] {
            assert!(v.holds_at(t));
            assert_eq!(b.verify(&leaf, t), v, "at {t}");
        }
        assert!(!v.holds_at(v.until));
        let after = b.verify(&leaf, v.until);
        assert_eq!(after.result, Err(ChainError::Expired));
        assert_eq!(after.from, v.until);
        // Before its notBefore the leaf was not valid yet.
        assert_eq!(b.verify(&leaf, v.from - 1).result, Err(ChainError::NotYetValid));
    }

    #[test]
    fn verdict_window_ends_when_a_bundle_certificate_expires() {
        let root = Ca::root("mesh root");
        let inter = root.intermediate_with("short intermediate", |p| {
            p.not_after = at(NOW + 3 * DAY);
        });
        let b = bundle(&[&root, &inter]);
        let leaf = inter.leaf();
        let v = b.verify(&leaf, NOW);
        assert_eq!((v.result, v.until), (Ok(()), NOW + 3 * DAY + 1));
        assert_eq!(b.verify(&leaf, v.until).result, Err(ChainError::Expired));
    }

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
        let leaf = inter.leaf_with(|p| p.serial_number = Some(SerialNumber::from_slice(&[0x80, 0x01])));
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
        assert_eq!(forged.issuer_raw(), Crl::parse(inter.crl(&[]).as_bytes()).unwrap().issuer_raw());
        assert_eq!(forged.verify_with(&bundle(&[&root, &inter])), Some(false));
    }

    #[test]
    fn crl_parses_from_der_too() {
        let (_root, inter) = mesh();
        let pem = inter.crl(&[&[7]]);
        let der = Pem::iter_from_buffer(pem.as_bytes()).next().unwrap().unwrap().contents;
        let crl = Crl::parse(&der).unwrap();
        assert_eq!(crl.revoked_serials(), [vec![7]]);
    }

    #[test]
    fn uri_name_constraints_fail_closed_and_warn() {
        // NameConstraints { permittedSubtrees [0] { GeneralSubtree { base uniformResourceIdentifier [6] } } }
        let uri = b"spiffe://a.example";
        let mut subtree = vec![0x86, uri.len() as u8];
        subtree.extend_from_slice(uri);
        let mut general_subtree = vec![0x30, subtree.len() as u8];
        general_subtree.extend(subtree);
        let mut permitted = vec![0xa0, general_subtree.len() as u8];
        permitted.extend(general_subtree);
        let mut nc = vec![0x30, permitted.len() as u8];
        nc.extend(permitted);
        let root = Ca::root("mesh root");
        let inter = root.intermediate_with("constrained intermediate", |p| {
            p.custom_extensions = vec![CustomExtension::from_oid_content(&[2, 5, 29, 30], nc)];
        });
        let b = bundle(&[&root, &inter]);
        // Even a leaf inside the permitted subtree is refused.
        assert_eq!(b.verify(&inter.leaf(), NOW).result, Err(ChainError::NameConstraint));
        assert_eq!(
            b.warnings(NOW),
            [BundleWarning::UriNameConstraints {
                subject: "CN=constrained intermediate".into()
            }]
        );
    }

    #[test]
    fn bundles_refuse_what_is_not_a_ca_certificate() {
        let (root, inter) = mesh();
        let leaf_pem = pem_of("CERTIFICATE", &inter.leaf());
        let err = Bundle::from_pem(format!("{}{leaf_pem}", root.pem()).as_bytes()).unwrap_err();
        assert_eq!(
            err,
            BundleError::NotCa {
                index: 2,
                subject: "CN=workload".into()
            }
        );
        let key = KeyPair::generate().unwrap().serialize_pem();
        assert!(matches!(
            Bundle::from_pem(key.as_bytes()),
            Err(BundleError::NotCertificate { index: 1, .. })
        ));
        assert_eq!(Bundle::from_pem(b"").unwrap_err(), BundleError::Empty);
        assert_eq!(Bundle::from_pem(b"garbage\n").unwrap_err(), BundleError::Empty);
        let pem = root.pem();
        let truncated = &pem.as_bytes()[..pem.len() / 2];
        assert_eq!(Bundle::from_pem(truncated).unwrap_err(), BundleError::Pem { index: 1 });
        let not_der = pem_of("CERTIFICATE", b"not a certificate");
        assert_eq!(
            Bundle::from_pem(not_der.as_bytes()).unwrap_err(),
            BundleError::Malformed { index: 1 }
        );
        // Error messages carry no certificate bytes.
        assert!(!BundleError::Malformed { index: 1 }.to_string().contains("0x"));
    }

    #[test]
    fn bundle_text_between_blocks_and_duplicates_are_tolerated() {
        let (root, inter) = mesh();
        let pem = format!("# mesh bundle\n{}\nsubject=...\n{}{}", root.pem(), inter.pem(), inter.pem());
        let b = Bundle::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(b.certificates().len(), 2);
        assert_eq!(b.id(), bundle(&[&root, &inter]).id());
    }

    #[test]
    fn hostile_inputs_are_errors_not_panics() {
        let (root, inter) = mesh();
        let b = bundle(&[&root, &inter]);
        let leaf = inter.leaf();
        let crl_pem = inter.crl(&[&[1], &[2]]);
        let crl_der = Pem::iter_from_buffer(crl_pem.as_bytes()).next().unwrap().unwrap().contents;
        for cut in 0..leaf.len() {
            assert!(!b.verify(&leaf[..cut], NOW).is_trusted());
        }
        for cut in 0..crl_der.len() {
            assert!(Crl::parse(&crl_der[..cut]).is_err(), "DER cut at {cut}");
        }
        for cut in 0..crl_pem.len() {
            let _ = Crl::parse(&crl_pem.as_bytes()[..cut]);
        }
        let root_pem = root.pem();
        for cut in 0..root_pem.len() {
            let _ = Bundle::from_pem(&root_pem.as_bytes()[..cut]);
        }
        assert_eq!(b.verify(b"garbage", NOW).result, Err(ChainError::Malformed));
        assert_eq!(b.verify(&[], NOW).result, Err(ChainError::Malformed));
        assert_eq!(Crl::parse(b"").unwrap_err(), CrlError::Empty);
        assert_eq!(Crl::parse(b"garbage").unwrap_err(), CrlError::Malformed);
        assert_eq!(
            Crl::parse(&crl_pem.as_bytes()[..crl_pem.len() / 2]).unwrap_err(),
            CrlError::Pem
        );
        assert_eq!(Crl::parse(root.pem().as_bytes()).unwrap_err(), CrlError::NotCrl);
        assert_eq!(
            Crl::parse(format!("{crl_pem}{crl_pem}").as_bytes()).unwrap_err(),
            CrlError::Multiple
        );
        let mut trailing = crl_der.clone();
        trailing.push(0);
        assert_eq!(Crl::parse(&trailing).unwrap_err(), CrlError::Malformed);
        // Before the epoch: judged as the epoch, and said so.
        let early = b.verify(&leaf, -5);
        assert_eq!(early.result, Err(ChainError::NotYetValid));
        assert_eq!(early.from, i64::MIN);
    }

    #[test]
    fn spiffe_ids_parse_per_the_spec() {
        assert_eq!(trust_domain("spiffe://a.example/ns/x/sa/y"), Some("a.example"));
        assert_eq!(trust_domain("spiffe://td-1_b.c"), Some("td-1_b.c"));
        assert_eq!(trust_domain("spiffe://a/Seg.-_9"), Some("a"));
        for bad in [
            "spiffe://",
            "spiffe:///path",
            "spiffe://A.example/x",
            "SPIFFE://a/x",
            "spiffe://user@a/x",
            "spiffe://a:8443/x",
            "spiffe://a/",
            "spiffe://a//x",
            "spiffe://a/./x",
            "spiffe://a/../x",
            "spiffe://a/x%20y",
            "spiffe://a/x?q",
            "spiffe://a/x#f",
            "https://a/x",
            "spiffe:a/x",
        ] {
            assert_eq!(trust_domain(bad), None, "{bad}");
        }
        assert!(is_valid_trust_domain("mesh.local"));
        assert!(!is_valid_trust_domain("Mesh.local"));
        assert!(!is_valid_trust_domain(""));
    }

    #[test]
    fn svids_carry_exactly_one_uri_san() {
        assert_eq!(svid_trust_domain(["spiffe://a/x"]), Ok(Some("a")));
        assert_eq!(svid_trust_domain(["https://a/x"]), Ok(None));
        assert_eq!(svid_trust_domain(["https://a/x", "urn:x"]), Ok(None));
        assert_eq!(svid_trust_domain([]), Ok(None));
        assert_eq!(
            svid_trust_domain(["spiffe://a/x", "spiffe://b/y"]),
            Err(SvidError::NotSoleUri)
        );
        assert_eq!(
            svid_trust_domain(["https://a/x", "spiffe://a/x"]),
            Err(SvidError::NotSoleUri)
        );
        assert_eq!(svid_trust_domain(["SPIFFE://a/x"]), Err(SvidError::Malformed));
        assert_eq!(svid_trust_domain(["spiffe://a/x/"]), Err(SvidError::Malformed));
    }

    fn pem_of(label: &str, der: &[u8]) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }
}
