//! Test PKI generated at test time with rcgen: a CA, client certificates of
//! every shape the decision must judge, and a server certificate for Envoy.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
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
    pub fn forwarded(&self) -> String {
        forwarded(&self.cert_pem)
    }

    pub fn sha256_hex(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&self.der))
    }
}

/// URL-encodes PEM the way Envoy does for `source.certificate`.
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
        ClientSpec {
            sans: vec![SanType::URI(uri.try_into().expect("ia5 uri"))],
            ..Self::empty()
        }
    }

    /// A valid client certificate for one DNS SAN.
    pub fn dns(name: &str) -> Self {
        ClientSpec {
            sans: vec![SanType::DnsName(name.try_into().expect("ia5 dns"))],
            ..Self::empty()
        }
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

    pub fn with_uri(mut self, uri: &str) -> Self {
        self.sans
            .push(SanType::URI(uri.try_into().expect("ia5 uri")));
        self
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

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(2);
        params.not_after = now + Duration::days(365);
        let key = KeyPair::generate().expect("ca key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("ca cert"),
        }
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn client(&self, spec: &ClientSpec) -> Issued {
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
        self.sign(params)
    }

    /// A TLS server certificate (for Envoy's listener).
    pub fn server(&self, dns: &str) -> Issued {
        let mut params = CertificateParams::new(vec![dns.to_owned()]).expect("server params");
        params.distinguished_name.push(DnType::CommonName, dns);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(30);
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// Writes what `envoy/envoy.yaml` reads from Envoy's working directory:
    /// `certs/ca.crt` (this CA) and `certs/envoy.{crt,key}` (for `localhost`).
    /// Also `certs/hop-ca.crt` (this CA again), which `envoy-mtls-hop.yaml`
    /// trusts for the sidecar: tests of the hop issue both ends from one CA.
    pub fn write_envoy_certs(&self, workdir: &std::path::Path) {
        let certs = workdir.join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        let server = self.server("localhost");
        std::fs::write(certs.join("ca.crt"), self.cert_pem()).unwrap();
        std::fs::write(certs.join("hop-ca.crt"), self.cert_pem()).unwrap();
        std::fs::write(certs.join("envoy.crt"), &server.cert_pem).unwrap();
        std::fs::write(certs.join("envoy.key"), &server.key_pem).unwrap();
    }

    /// An HTTPS client that trusts this CA and presents `cert` (mTLS).
    pub fn https_client(&self, cert: &Issued) -> reqwest::Client {
        let identity =
            reqwest::Identity::from_pem(format!("{}{}", cert.cert_pem, cert.key_pem).as_bytes())
                .expect("client identity");
        reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.cert_pem().as_bytes()).unwrap(),
            )
            .identity(identity)
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// A PEM CRL revoking these serials, signed by this CA.
    pub fn crl_pem(&self, serials: &[&[u8]]) -> String {
        self.crl_pem_until(serials, OffsetDateTime::now_utc() + Duration::days(7))
    }

    /// A PEM CRL with the given `nextUpdate`.
    pub fn crl_pem_until(&self, serials: &[&[u8]], next_update: OffsetDateTime) -> String {
        use rcgen::{CertificateRevocationListParams, RevokedCertParams};
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: next_update.min(now) - Duration::days(1),
            next_update,
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now - Duration::minutes(5),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .expect("sign crl")
            .pem()
            .expect("crl pem")
    }
}
