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
