//! A PKI built with rcgen: CAs (roots and intermediates), client
//! certificates of every shape the decision must judge, server
//! certificates, certificate chains as PEM files hold them, CRLs, and the
//! URL-encoding Envoy applies to a forwarded certificate. Tests, benchmarks,
//! fuzz targets and `dev-pki` all build their certificates here.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// A certificate authority that signs certificates and CRLs.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: String,
}

/// A certificate and its private key, in PEM and DER.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Issued {
    /// As Envoy forwards it in `attributes.source.certificate`.
    #[cfg(feature = "test-util")]
    pub fn forwarded(&self) -> String {
        forwarded(&self.cert_pem)
    }

    pub fn sha256(&self) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(&self.der).into()
    }

    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256())
    }

    /// This certificate followed by the CAs that issued it, leaf first: what
    /// a TLS peer presents (`certificate_chain`, curl's `--cert`), so a
    /// verifier that trusts only the root can build the path.
    pub fn chain_pem(&self, issuers: &[&Ca]) -> String {
        self.cert_pem.clone() + &Ca::bundle_pem(issuers)
    }
}

/// The first PEM block of `pem` (with its END line and newline): the leaf
/// of a chain file, which is all Envoy forwards of a peer's chain.
#[cfg(feature = "test-util")]
pub fn leaf_pem(pem: &str) -> &str {
    const END: &str = "-----END CERTIFICATE-----";
    match pem.find(END) {
        Some(at) => {
            let end = at + END.len();
            let end = end + usize::from(pem[end..].starts_with('\n'));
            &pem[..end]
        }
        None => pem,
    }
}

/// URL-encodes PEM the way Envoy does for `source.certificate`.
#[cfg(feature = "test-util")]
pub fn forwarded(pem: &str) -> String {
    percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// What a client certificate should look like.
#[derive(Clone)]
pub struct ClientSpec {
    pub sans: Vec<SanType>,
    pub cn: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub eku: Vec<ExtendedKeyUsagePurpose>,
    pub is_ca: bool,
    pub serial: Option<Vec<u8>>,
}

impl ClientSpec {
    /// A valid client certificate for one URI SAN.
    pub fn uri(uri: &str) -> Self {
        Self::empty().with_uri(uri)
    }

    /// A valid client certificate for one DNS SAN.
    pub fn dns(name: &str) -> Self {
        let mut spec = Self::empty();
        spec.sans.push(SanType::DnsName(ia5(name)));
        spec
    }

    /// No SANs at all (only a CN).
    pub fn empty() -> Self {
        let now = OffsetDateTime::now_utc();
        ClientSpec {
            sans: Vec::new(),
            cn: "test-client".into(),
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(30),
            eku: vec![ExtendedKeyUsagePurpose::ClientAuth],
            is_ca: false,
            serial: None,
        }
    }

    pub fn with_uri(self, uri: &str) -> Self {
        self.try_with_uri(uri)
            .unwrap_or_else(|_| panic!("{uri:?} is not an IA5 (ASCII) string"))
    }

    /// Adds a URI SAN, refusing one that is not ASCII (IA5).
    pub fn try_with_uri(mut self, uri: &str) -> Result<Self, PkiError> {
        self.sans
            .push(SanType::URI(rcgen::string::Ia5String::try_from(uri)?));
        Ok(self)
    }

    pub fn with_cn(mut self, cn: &str) -> Self {
        self.cn = cn.into();
        self
    }

    pub fn valid(mut self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }

    pub fn eku(mut self, eku: Vec<ExtendedKeyUsagePurpose>) -> Self {
        self.eku = eku;
        self
    }

    pub fn ca(mut self) -> Self {
        self.is_ca = true;
        self
    }

    pub fn serial(mut self, serial: &[u8]) -> Self {
        self.serial = Some(serial.to_vec());
        self
    }
}

/// A name as rcgen's IA5 string. The names here are the caller's own
/// literals; one that is not ASCII is a bug in the caller.
fn ia5(name: &str) -> rcgen::string::Ia5String {
    rcgen::string::Ia5String::try_from(name)
        .unwrap_or_else(|_| panic!("{name:?} is not an IA5 (ASCII) string"))
}

/// Why a certificate could not be made.
pub type PkiError = rcgen::Error;

impl Ca {
    /// A self-signed root CA valid from two days ago for a year.
    pub fn new(name: &str) -> Self {
        Self::try_root(name, None).unwrap_or_else(|e| panic!("root CA {name:?}: {e}"))
    }

    /// A self-signed root CA, with an optional path length constraint.
    pub fn try_root(name: &str, path_len: Option<u8>) -> Result<Self, PkiError> {
        let now = OffsetDateTime::now_utc();
        Self::root_from(ca_params(
            name,
            path_len,
            now - Duration::days(2),
            now + Duration::days(365),
        ))
    }

    /// A self-signed root CA from `params` as the caller shaped them (see
    /// [`ca_params`]): for tests of unusual CAs (fixed dates, name
    /// constraints, missing key usages).
    pub fn root_from(params: CertificateParams) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        Ok(Ca {
            issuer: CertifiedIssuer::self_signed(params, key)?,
            key_pem,
        })
    }

    /// An intermediate CA from `params`, signed by this one.
    pub fn intermediate_from(&self, params: CertificateParams) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        Ok(Ca {
            issuer: CertifiedIssuer::signed_by(params, key, &self.issuer)?,
            key_pem,
        })
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, name: &str) -> Ca {
        let now = OffsetDateTime::now_utc();
        self.try_intermediate(name, now - Duration::days(1), now + Duration::days(180))
            .unwrap_or_else(|e| panic!("intermediate CA {name:?}: {e}"))
    }

    /// An intermediate CA with the given validity window.
    pub fn try_intermediate(
        &self,
        name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Ca, PkiError> {
        self.intermediate_from(ca_params(name, None, not_before, not_after))
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A CA bundle file's contents: these CAs' certificates, in order.
    pub fn bundle_pem(cas: &[&Ca]) -> String {
        cas.iter().map(|ca| ca.cert_pem()).collect()
    }

    pub fn cert_der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// The CA's private key (PEM). Development and tests only.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A client certificate shaped by `spec`.
    pub fn client(&self, spec: &ClientSpec) -> Issued {
        self.try_client(spec)
            .unwrap_or_else(|e| panic!("client certificate: {e}"))
    }

    pub fn try_client(&self, spec: &ClientSpec) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, spec.cn.clone());
        params.subject_alt_names = spec.sans.clone();
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.extended_key_usages = spec.eku.clone();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        if let Some(serial) = &spec.serial {
            params.serial_number = Some(SerialNumber::from_slice(serial));
        }
        self.issue(params)
    }

    /// A TLS server certificate for `names` (DNS names or IP addresses),
    /// valid from yesterday for `days`.
    pub fn server(&self, names: &[&str]) -> Issued {
        self.try_server(names, 30)
            .unwrap_or_else(|e| panic!("server certificate: {e}"))
    }

    pub fn try_server(&self, names: &[&str], days: i64) -> Result<Issued, PkiError> {
        let owned: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(owned)?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(days);
        self.issue(params)
    }

    /// A certificate from `params` as the caller shaped them, signed by
    /// this CA with a fresh key.
    pub fn issue(&self, params: CertificateParams) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        })
    }

    /// A PEM CRL revoking these serials, signed by this CA.
    pub fn crl_pem(&self, serials: &[&[u8]]) -> String {
        self.crl_pem_until(serials, OffsetDateTime::now_utc() + Duration::days(7))
    }

    /// A PEM CRL with the given `nextUpdate`.
    pub fn crl_pem_until(&self, serials: &[&[u8]], next_update: OffsetDateTime) -> String {
        self.try_crl_pem(serials, next_update)
            .unwrap_or_else(|e| panic!("CRL: {e}"))
    }

    pub fn try_crl_pem(
        &self,
        serials: &[&[u8]],
        next_update: OffsetDateTime,
    ) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        self.try_crl_pem_at(
            serials,
            next_update.min(now) - Duration::days(1),
            next_update,
            now - Duration::minutes(5),
        )
    }

    /// A PEM CRL with every date given: issued at `this_update`, valid
    /// until `next_update`, each serial revoked at `revoked_at`.
    pub fn try_crl_pem_at(
        &self,
        serials: &[&[u8]],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
        revoked_at: OffsetDateTime,
    ) -> Result<String, PkiError> {
        use rcgen::{CertificateRevocationListParams, RevokedCertParams};
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: revoked_at,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer)?.pem()
    }
}

/// The parameters of a CA certificate (key and CRL signing), for
/// [`Ca::root_from`] and [`Ca::intermediate_from`] to start from.
pub fn ca_params(
    name: &str,
    path_len: Option<u8>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_is_the_leaf_then_its_issuers_and_leaf_pem_takes_the_leaf_back() {
        let root = Ca::new("root");
        let intermediate = root.intermediate("intermediate");
        let leaf = intermediate.client(&ClientSpec::uri("spiffe://t/a"));
        let chain = leaf.chain_pem(&[&intermediate]);
        assert_eq!(
            chain,
            format!("{}{}", leaf.cert_pem, intermediate.cert_pem())
        );
        assert_eq!(leaf_pem(&chain), leaf.cert_pem);
        assert_eq!(leaf_pem(&leaf.cert_pem), leaf.cert_pem);
    }
}
