//! CA bundles and chain validation with rustls-webpki (the policy is
//! described in the parent module).

use std::collections::HashSet;
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

use super::printable_name;

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
    Expired {
        subject: String,
        not_after: i64,
    },
    NotYetValid {
        subject: String,
        not_before: i64,
    },
    /// Not self-signed, and no other certificate of the bundle has its
    /// issuer as subject: it can never be part of a path to a root.
    NoIssuerInBundle {
        subject: String,
    },
    /// Carries URI name constraints, which webpki enforces by refusing every
    /// leaf with a URI SAN below it.
    UriNameConstraints {
        subject: String,
    },
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
        let mut seen = HashSet::new();
        let mut certs = Vec::new();
        let mut anchors = Vec::new();
        let mut anchor_cert = Vec::new();
        let mut intermediates = Vec::new();
        let mut hasher = Sha256::new();
        for (i, block) in Pem::iter_from_buffer(pem).enumerate() {
            let index = i + 1;
            let block = block.map_err(|_| BundleError::Pem { index })?;
            if block.label != "CERTIFICATE" {
                return Err(BundleError::NotCertificate {
                    index,
                    label: printable_label(&block.label),
                });
            }
            if !seen.insert(Sha256::digest(&block.contents)) {
                continue;
            }
            let (cert, anchor) = parse_ca(block.contents, index)?;
            hasher.update((cert.der.len() as u64).to_be_bytes());
            hasher.update(cert.der.as_ref());
            match anchor {
                Some(anchor) => {
                    anchors.push(anchor);
                    anchor_cert.push(certs.len());
                }
                None => intermediates.push(cert.der.clone()),
            }
            certs.push(cert);
        }
        if certs.is_empty() {
            return Err(BundleError::Empty);
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

    /// DER of the bundle's certificates whose subject is `subject_raw` (a
    /// DER `Name`): the candidate signers of a CRL.
    pub(super) fn certificates_named<'a>(
        &'a self,
        subject_raw: &'a [u8],
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.certs
            .iter()
            .filter(move |c| c.subject_raw == subject_raw)
            .map(|c| c.der.as_ref())
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
        let windows =
            std::iter::once(leaf).chain(self.certs.iter().map(|c| (c.not_before, c.not_after)));
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

/// Parses block `index` of a bundle; a self-signed CA also yields its
/// trust anchor.
fn parse_ca(
    der: Vec<u8>,
    index: usize,
) -> Result<(CaCertificate, Option<TrustAnchor<'static>>), BundleError> {
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
    // Refuse at load what webpki would fail to parse at every verification.
    let unsupported = || BundleError::Unsupported {
        index,
        subject: subject.clone(),
    };
    let webpki_der = CertificateDer::from(der.as_slice());
    EndEntityCert::try_from(&webpki_der).map_err(|_| unsupported())?;
    let is_root =
        cert.subject().as_raw() == cert.issuer().as_raw() && cert.verify_signature(None).is_ok();
    let anchor = if is_root {
        let anchor = webpki::anchor_from_trusted_cert(&webpki_der).map_err(|_| unsupported())?;
        Some(anchor.to_owned())
    } else {
        None
    };
    let uri_name_constraints = match cert.name_constraints() {
        Ok(Some(nc)) => [&nc.value.permitted_subtrees, &nc.value.excluded_subtrees]
            .into_iter()
            .flatten()
            .flatten()
            .any(|s| matches!(s.base, GeneralName::URI(_))),
        _ => false,
    };
    let validity = cert.validity();
    let info = CaCertificate {
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        is_root,
        subject_raw: cert.subject().as_raw().to_vec(),
        issuer_raw: cert.issuer().as_raw().to_vec(),
        path_len,
        uri_name_constraints,
        subject,
        der: CertificateDer::from(der),
    };
    Ok((info, anchor))
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

/// A PEM label for an error message: only the characters labels are made of.
fn printable_label(label: &str) -> String {
    label
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == ' ')
        .take(32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::test_pki::*;
    use super::*;
    use rcgen::{BasicConstraints, CustomExtension, ExtendedKeyUsagePurpose, IsCa, KeyPair};

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
        assert_eq!(
            b.verify(&inter.leaf(), NOW).result,
            Err(ChainError::UnknownIssuer)
        );
        assert_eq!(
            b.warnings(NOW),
            [BundleWarning::NoIssuerInBundle {
                subject: "CN=mesh intermediate".into()
            }]
        );
    }

    #[test]
    fn a_self_issued_certificate_signed_by_another_key_is_no_anchor() {
        // Issuer name == subject name, but another key signed it.
        let root = Ca::root("mesh root");
        let self_issued = root.intermediate("mesh root");
        let b = bundle(&[&self_issued]);
        assert!(!b.certificates()[0].is_root);
        assert_eq!(
            b.verify(&self_issued.leaf(), NOW).result,
            Err(ChainError::UnknownIssuer)
        );
        assert!(matches!(
            b.warnings(NOW)[..],
            [BundleWarning::NoIssuerInBundle { .. }]
        ));
    }

    #[test]
    fn expired_intermediate_vouches_for_nothing_and_warns() {
        let root = Ca::root("mesh root");
        let inter = root.intermediate_with("old intermediate", |p| {
            p.not_before = at(NOW - 100 * DAY);
            p.not_after = at(NOW - DAY);
        });
        let b = bundle(&[&root, &inter]);
        assert_eq!(
            b.verify(&inter.leaf(), NOW).result,
            Err(ChainError::Expired)
        );
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
        assert_eq!(
            b.verify(&inter.leaf(), NOW).result,
            Err(ChainError::Expired)
        );
        assert_eq!(b.verify(&root.leaf(), NOW).result, Err(ChainError::Expired));
        assert!(matches!(
            b.warnings(NOW)[..],
            [BundleWarning::Expired { .. }]
        ));
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
        assert_eq!(
            b.verify(&inter.leaf(), NOW).result,
            Err(ChainError::Constraint)
        );
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
        assert_eq!(
            b.verify(&sub.leaf(), NOW).result,
            Err(ChainError::Constraint)
        );
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
        assert_eq!(
            with_eku(vec![CodeSigning, ServerAuth]),
            Err(ChainError::Usage)
        );
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
        assert_eq!(
            b.verify(&leaf, v.from - 1).result,
            Err(ChainError::NotYetValid)
        );
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
        assert_eq!(
            b.verify(&inter.leaf(), NOW).result,
            Err(ChainError::NameConstraint)
        );
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
        // Indexes count PEM blocks in the file, duplicates included.
        let err = Bundle::from_pem(format!("{0}{0}{leaf_pem}", root.pem()).as_bytes());
        assert!(matches!(err, Err(BundleError::NotCa { index: 3, .. })));
        let key = KeyPair::generate().unwrap().serialize_pem();
        assert!(matches!(
            Bundle::from_pem(key.as_bytes()),
            Err(BundleError::NotCertificate { index: 1, .. })
        ));
        assert_eq!(Bundle::from_pem(b"").unwrap_err(), BundleError::Empty);
        assert_eq!(
            Bundle::from_pem(b"garbage\n").unwrap_err(),
            BundleError::Empty
        );
        let pem = root.pem();
        let truncated = &pem.as_bytes()[..pem.len() / 2];
        assert_eq!(
            Bundle::from_pem(truncated).unwrap_err(),
            BundleError::Pem { index: 1 }
        );
        let not_der = pem_of("CERTIFICATE", b"not a certificate");
        assert_eq!(
            Bundle::from_pem(not_der.as_bytes()).unwrap_err(),
            BundleError::Malformed { index: 1 }
        );
        // Error messages carry no certificate bytes.
        assert!(
            !BundleError::Malformed { index: 1 }
                .to_string()
                .contains("0x")
        );
    }

    #[test]
    fn bundle_text_between_blocks_and_duplicates_are_tolerated() {
        let (root, inter) = mesh();
        let pem = format!(
            "# mesh bundle\n{}\nsubject=...\n{}{}",
            root.pem(),
            inter.pem(),
            inter.pem()
        );
        let b = Bundle::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(b.certificates().len(), 2);
        assert_eq!(b.id(), bundle(&[&root, &inter]).id());
    }

    #[test]
    fn hostile_leaves_and_bundles_are_errors_not_panics() {
        let (root, inter) = mesh();
        let b = bundle(&[&root, &inter]);
        let leaf = inter.leaf();
        for cut in 0..leaf.len() {
            assert!(!b.verify(&leaf[..cut], NOW).is_trusted());
        }
        let root_pem = root.pem();
        for cut in 0..root_pem.len() {
            let _ = Bundle::from_pem(&root_pem.as_bytes()[..cut]);
        }
        assert_eq!(b.verify(b"garbage", NOW).result, Err(ChainError::Malformed));
        assert_eq!(b.verify(&[], NOW).result, Err(ChainError::Malformed));
        // Before the epoch: judged as the epoch, and said so.
        let early = b.verify(&leaf, -5);
        assert_eq!(early.result, Err(ChainError::NotYetValid));
        assert_eq!(early.from, i64::MIN);
    }
}
