//! The trust tests' PKI (compiled only under #[cfg(test)], see `trust.rs`):
//! the shared builder (`crate::pki`) with every certificate dated around a
//! fixed instant, so verdict windows are exact.

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose, SanType};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::Bundle;
use crate::pki;

/// A fixed "now" so windows are exact; certificates are dated around it.
pub(super) const NOW: i64 = 1_800_000_000;
pub(super) const DAY: i64 = 86_400;

pub(super) fn at(t: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t).unwrap()
}

pub(super) struct Ca(pki::Ca);

/// CA parameters valid from NOW - 2 days to NOW + 365 days.
pub(super) fn ca_params(name: &str) -> CertificateParams {
    pki::ca_params(name, None, at(NOW - 2 * DAY), at(NOW + 365 * DAY))
}

impl Ca {
    pub(super) fn root(name: &str) -> Ca {
        Ca::root_with(name, |_| {})
    }

    pub(super) fn root_with(name: &str, edit: impl FnOnce(&mut CertificateParams)) -> Ca {
        let mut p = ca_params(name);
        edit(&mut p);
        Ca(pki::Ca::root_from(p).unwrap())
    }

    pub(super) fn intermediate(&self, name: &str) -> Ca {
        self.intermediate_with(name, |_| {})
    }

    pub(super) fn intermediate_with(
        &self,
        name: &str,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Ca {
        let mut p = ca_params(name);
        edit(&mut p);
        Ca(self.0.intermediate_from(p).unwrap())
    }

    pub(super) fn pem(&self) -> String {
        self.0.cert_pem()
    }

    /// A client leaf for one SPIFFE ID, valid NOW - 1 day .. NOW + 30 days.
    pub(super) fn leaf(&self) -> Vec<u8> {
        self.leaf_with(|_| {})
    }

    pub(super) fn leaf_with(&self, edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
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
        self.0.issue(p).unwrap().der
    }

    /// A CRL revoking `serials`, issued a day before NOW, valid a week.
    pub(super) fn crl(&self, serials: &[&[u8]]) -> String {
        self.0
            .try_crl_pem_at(serials, at(NOW - DAY), at(NOW + 7 * DAY), at(NOW - DAY))
            .unwrap()
    }
}

pub(super) fn bundle(cas: &[&Ca]) -> Bundle {
    let pem: String = cas.iter().map(|c| c.pem()).collect();
    Bundle::from_pem(pem.as_bytes()).unwrap()
}

pub(super) fn issuer_raw(der: &[u8]) -> Vec<u8> {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.issuer().as_raw().to_vec()
}

pub(super) fn raw_serial(der: &[u8]) -> Vec<u8> {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.raw_serial().to_vec()
}

/// Root -> intermediate, the shape SPIRE and cert-manager issue from.
pub(super) fn mesh() -> (Ca, Ca) {
    let root = Ca::root("mesh root");
    let inter = root.intermediate("mesh intermediate");
    (root, inter)
}

/// `der` as one PEM block labelled `label`.
pub(super) fn pem_of(label: &str, der: &[u8]) -> String {
    pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, der).unwrap()
}
