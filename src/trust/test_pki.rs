//! Test PKI for the trust tests, generated with rcgen and dated around a
//! fixed instant so verdict windows are exact.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::Bundle;

/// A fixed "now" so windows are exact; certificates are dated around it.
pub(super) const NOW: i64 = 1_800_000_000;
pub(super) const DAY: i64 = 86_400;

pub(super) fn at(t: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t).unwrap()
}

pub(super) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// CA parameters valid from NOW - 2 days to NOW + 365 days.
pub(super) fn ca_params(name: &str) -> CertificateParams {
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
    pub(super) fn root(name: &str) -> Ca {
        Ca::root_with(name, |_| {})
    }

    pub(super) fn root_with(name: &str, edit: impl FnOnce(&mut CertificateParams)) -> Ca {
        let mut p = ca_params(name);
        edit(&mut p);
        Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
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
        let key = KeyPair::generate().unwrap();
        Ca {
            issuer: CertifiedIssuer::signed_by(p, key, &self.issuer).unwrap(),
        }
    }

    pub(super) fn pem(&self) -> String {
        self.issuer.pem()
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
        let key = KeyPair::generate().unwrap();
        p.signed_by(&key, &self.issuer).unwrap().der().to_vec()
    }

    pub(super) fn crl(&self, serials: &[&[u8]]) -> String {
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

pub(super) fn pem_of(label: &str, der: &[u8]) -> String {
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
