//! Registry validation: every rule in the SPEC's "a registry is rejected if"
//! list, each error reported with its file.

mod common;

use common::{Fixture, Svc, registry_yaml};
use service_auth::registry::Registry;

const A_URI: &str = "spiffe://mesh.test/a";
const B_URI: &str = "spiffe://mesh.test/b";

fn errors_for(fixture: &Fixture, yaml: &str) -> Vec<String> {
    std::fs::write(fixture.registry_path(), yaml).unwrap();
    match Registry::load(&fixture.registry_path()) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn assert_rejected(fixture: &Fixture, yaml: &str, needle: &str) {
    let errors = errors_for(fixture, yaml);
    assert!(
        errors.iter().any(|e| e.contains(needle)),
        "expected an error containing {needle:?}, got {errors:#?}"
    );
    let path = fixture.registry_path().display().to_string();
    assert!(errors.iter().all(|e| e.starts_with(&path)), "{errors:#?}");
}

#[test]
fn a_valid_registry_loads_and_indexes() {
    let f = Fixture::new(&[
        Svc::new("a", A_URI, "ka-0123456789"),
        Svc::new("b", "b.mesh.test", "kb-0123456789"),
    ]);
    let r = f.load();
    assert_eq!(r.services().len(), 2);
    assert_eq!(r.service("a").unwrap().all_scopes, "read write");
    assert!(
        r.service_for_principal(service_auth::identity::SanKind::Uri, A_URI)
            .is_some()
    );
    assert!(
        r.service_for_principal(service_auth::identity::SanKind::Dns, "b.mesh.test")
            .is_some()
    );
    assert!(!r.uses_dev_secret);
}

#[test]
fn duplicate_service_id() {
    let f = Fixture::new(&[]);
    let yaml = registry_yaml(
        &[
            Svc::new("a", A_URI, "k1-0123456789"),
            Svc::new("a", B_URI, "k2-0123456789"),
        ],
        "",
    );
    assert_rejected(&f, &yaml, "duplicate service id");
}

#[test]
fn principal_claimed_twice() {
    let f = Fixture::new(&[]);
    let yaml = registry_yaml(
        &[
            Svc::new("a", A_URI, "k1-0123456789"),
            Svc::new("b", A_URI, "k2-0123456789"),
        ],
        "",
    );
    assert_rejected(&f, &yaml, "already claimed by service \"a\"");
}

#[test]
fn duplicate_api_key_hash() {
    let f = Fixture::new(&[]);
    let yaml = registry_yaml(
        &[
            Svc::new("a", A_URI, "same-key-0123"),
            Svc::new("b", B_URI, "same-key-0123"),
        ],
        "",
    );
    assert_rejected(&f, &yaml, "same hash");
}

#[test]
fn missing_or_short_secret_file() {
    let f = Fixture::new(&[]);
    let good = registry_yaml(&[Svc::new("a", A_URI, "k-0123456789")], "");
    assert_rejected(
        &f,
        &good.replace("secrets/jwt.key", "secrets/missing.key"),
        "cannot read",
    );
    std::fs::write(f.path().join("secrets/short.key"), "too-short").unwrap();
    assert_rejected(
        &f,
        &good.replace("secrets/jwt.key", "secrets/short.key"),
        "at least 32",
    );
}

#[test]
fn secret_from_env_var() {
    let f = Fixture::new(&[]);
    let good = registry_yaml(&[Svc::new("a", A_URI, "k-0123456789")], "");
    let var = "SERVICE_AUTH_TEST_SECRET_REGISTRY_RS";
    // SAFETY: this test binary sets the variable once, from one test, before reading it.
    unsafe { std::env::set_var(var, "env-secret-0123456789abcdef0123456789") };
    let yaml = good.replace(
        "secret_file: secrets/jwt.key",
        &format!("secret_env: {var}"),
    );
    assert!(errors_for(&f, &yaml).is_empty());
    let yaml = good.replace(
        "secret_file: secrets/jwt.key",
        "secret_env: SERVICE_AUTH_TEST_UNSET_VAR",
    );
    assert_rejected(&f, &yaml, "is not set");
}

#[test]
fn no_signing_key() {
    let f = Fixture::new(&[]);
    let yaml = registry_yaml(&[Svc::new("a", A_URI, "k-0123456789")], "").replace(
        "secret_file: secrets/jwt.key",
        "secret_file: secrets/jwt.key\n      verify_only: true",
    );
    assert_rejected(&f, &yaml, "no signing key");
}

#[test]
fn malformed_hash_serial_pin_and_date() {
    let f = Fixture::new(&[]);
    let mut yaml = registry_yaml(&[Svc::new("a", A_URI, "k-0123456789")], "");
    let hash = common::sha256_hex("k-0123456789");
    yaml = yaml.replace(&hash, &hash[..40]);
    assert_rejected(&f, &yaml, "sha256 is not 64 hex digits");

    let yaml = registry_yaml(
        &[Svc::new("a", A_URI, "k-0123456789")],
        "revocation:\n  serials: [\"xyz\"]\n",
    );
    assert_rejected(&f, &yaml, "not a hex serial");

    let mut svc = Svc::new("a", A_URI, "k-0123456789");
    svc.pins = vec!["abc".into()];
    assert_rejected(&f, &registry_yaml(&[svc], ""), "certificate_sha256");

    let mut svc = Svc::new("a", A_URI, "k-0123456789");
    svc.keys[0].2 = Some("next tuesday".into());
    assert_rejected(&f, &registry_yaml(&[svc], ""), "not RFC 3339");
}

#[test]
fn unreadable_ca_and_crl_files() {
    let f = Fixture::new(&[]);
    let mut svc = Svc::new("a", A_URI, "k-0123456789");
    svc.ca_file = Some("missing-ca.crt".into());
    assert_rejected(&f, &registry_yaml(&[svc], ""), "ca_file");

    std::fs::write(
        f.path().join("leaf.crt"),
        common::pki::Ca::new("x")
            .client(&common::pki::ClientSpec::uri(A_URI))
            .cert_pem,
    )
    .unwrap();
    let mut svc = Svc::new("a", A_URI, "k-0123456789");
    svc.ca_file = Some("leaf.crt".into());
    assert_rejected(&f, &registry_yaml(&[svc], ""), "not a CA");

    let yaml = registry_yaml(
        &[Svc::new("a", A_URI, "k-0123456789")],
        "revocation:\n  crl_files: [nope.crl]\n",
    );
    assert_rejected(&f, &yaml, "crl_files[0]");
    std::fs::write(f.path().join("bad.crl"), "not a crl").unwrap();
    let yaml = registry_yaml(
        &[Svc::new("a", A_URI, "k-0123456789")],
        "revocation:\n  crl_files: [bad.crl]\n",
    );
    assert_rejected(&f, &yaml, "not a CRL");
}

#[test]
fn unknown_fields_and_broken_yaml_are_located() {
    let f = Fixture::new(&[]);
    let yaml = registry_yaml(&[Svc::new("a", A_URI, "k-0123456789")], "")
        .replace("    scopes:", "    scopez: [x]\n    scopes:");
    let errors = errors_for(&f, &yaml);
    let path = f.registry_path().display().to_string();
    assert!(errors[0].starts_with(&format!("{path}:")), "{errors:?}");
    assert!(errors[0].contains("scopez"), "{errors:?}");
    let line = errors[0]
        .split(':')
        .nth(1)
        .unwrap()
        .parse::<usize>()
        .unwrap();
    assert!(line > 1, "line number: {errors:?}");

    assert_rejected(&f, "token: [unclosed", "");
    assert_rejected(&f, "", "");
}

#[test]
fn every_error_is_reported_at_once() {
    let f = Fixture::new(&[]);
    let yaml = registry_yaml(
        &[
            Svc::new("a", A_URI, "k1-0123456789"),
            Svc::new("a", A_URI, "k1-0123456789"),
        ],
        "revocation:\n  serials: [\"nothex\"]\n",
    );
    let errors = errors_for(&f, &yaml);
    assert!(errors.len() >= 4, "{errors:#?}");
}

#[test]
fn bundled_config_is_valid_and_flags_the_dev_secret() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config =
        service_auth::config::StaticConfig::load(&root.join("config/service-auth.yaml")).unwrap();
    let registry = Registry::load(&config.registry).unwrap();
    assert!(
        registry.uses_dev_secret,
        "the bundled secret must be recognised as the dev secret"
    );
    assert!(registry.service("api_service").is_some());
}

#[test]
fn crls_are_checked_against_the_issuing_ca_and_for_staleness() {
    use common::pki::Ca;
    let f = Fixture::new(&[]);
    let ca = Ca::new("mesh CA");
    std::fs::write(f.path().join("ca.crt"), ca.cert_pem()).unwrap();
    let mut svc = Svc::new("a", A_URI, "k-0123456789");
    svc.ca_file = Some("ca.crt".into());
    let with_crl = |file: &str| {
        registry_yaml(
            &[svc.clone()],
            &format!("revocation:\n  crl_files: [{file}]\n"),
        )
    };

    std::fs::write(f.path().join("good.crl"), ca.crl_pem(&[&[1]])).unwrap();
    assert!(errors_for(&f, &with_crl("good.crl")).is_empty());
    assert!(
        Registry::load(&f.registry_path())
            .unwrap()
            .warnings()
            .is_empty()
    );

    // Same issuer name, another key: a forged CRL.
    let impostor = Ca::new("mesh CA");
    std::fs::write(f.path().join("forged.crl"), impostor.crl_pem(&[&[1]])).unwrap();
    assert_rejected(&f, &with_crl("forged.crl"), "signature does not verify");

    // Past nextUpdate: still applied, and reported.
    let stale = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    std::fs::write(f.path().join("stale.crl"), ca.crl_pem_until(&[&[1]], stale)).unwrap();
    assert!(errors_for(&f, &with_crl("stale.crl")).is_empty());
    let r = Registry::load(&f.registry_path()).unwrap();
    assert!(
        r.warnings().iter().any(|w| w.contains("nextUpdate")),
        "{:?}",
        r.warnings()
    );
    assert!(r.is_revoked(&[1]));
    // check-config shows the warning.
    let config = f.write_config("127.0.0.1:1", "");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_service-auth"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning:"));
}

#[test]
fn sources_list_every_file_read() {
    use common::pki::Ca;
    let f = Fixture::new(&[]);
    std::fs::write(f.path().join("ca.crt"), Ca::new("x").cert_pem()).unwrap();
    let mut svc = Svc::new("a", A_URI, "k-0123456789");
    svc.ca_file = Some("ca.crt".into());
    std::fs::write(f.registry_path(), registry_yaml(&[svc], "")).unwrap();
    let r = Registry::load(&f.registry_path()).unwrap();
    let names: Vec<_> = r
        .sources()
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["registry.yaml", "jwt.key", "ca.crt"]);
}
