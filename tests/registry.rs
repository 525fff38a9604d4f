//! Registry validation: every rule for when a registry is rejected (docs/configuration.md)
//! list, each error reported with its file, its YAML path and its kind.

mod common;

use std::io::ErrorKind;
use std::path::Path;

use common::{Ca, ClientSpec, Fixture, Svc, registry_file, tcp0};
use service_auth::config::{ConfigError, RegistryFile};
use service_auth::identity::{PeerCertificate, SanKind};
use service_auth::registry::{CrlError, LoadError, Problem, Registry, Warning};
use service_auth::token::KeySetError;
use service_auth::trust::BundleError;

const A_URI: &str = "spiffe://mesh.test/a";
const B_URI: &str = "spiffe://mesh.test/b";

/// Writes `file` as the fixture's registry and loads it.
fn load(fixture: &Fixture, file: &RegistryFile) -> Result<Registry, Vec<LoadError>> {
    fixture.write(file);
    Registry::load(&fixture.registry_path())
}

/// The errors loading `file` reports; panics if it loads.
fn rejected(fixture: &Fixture, file: &RegistryFile) -> Vec<LoadError> {
    match load(fixture, file) {
        Ok(_) => panic!("the registry loaded, but it should have been rejected"),
        Err(errors) => errors,
    }
}

/// The errors loading the registry text `text` reports; panics if it loads.
fn rejected_text(fixture: &Fixture, text: &str) -> Vec<LoadError> {
    fixture.write_text(text);
    match Registry::load(&fixture.registry_path()) {
        Ok(_) => panic!("{text:?} loaded, but it should have been rejected"),
        Err(errors) => errors,
    }
}

/// An expected error: its YAML path and a test of its problem.
type Expected<'a> = (&'a str, &'a dyn Fn(&Problem) -> bool);

/// Asserts that `errors` are exactly `expected` (in any order), each a value
/// error in the fixture's registry file.
fn assert_errors(fixture: &Fixture, errors: &[LoadError], expected: &[Expected<'_>]) {
    let registry = fixture.registry_path();
    for e in errors {
        match e {
            LoadError::Invalid { file, .. } => assert_eq!(file, &registry, "{e}"),
            LoadError::File(_) => panic!("expected value errors, got {e:?}"),
        }
    }
    let mut unmatched: Vec<&LoadError> = errors.iter().collect();
    for (at, is) in expected {
        let found = unmatched
            .iter()
            .position(|e| e.at() == Some(*at) && e.problem().is_some_and(is));
        match found {
            Some(i) => {
                unmatched.remove(i);
            }
            None => panic!("no error of the expected kind at {at} in {errors:#?}"),
        }
    }
    assert!(unmatched.is_empty(), "unexpected errors: {unmatched:#?}");
}

/// Asserts that `errors` is one YAML error located in the registry file.
fn assert_yaml_error(fixture: &Fixture, errors: &[LoadError]) {
    assert!(
        matches!(
            errors,
            [LoadError::File(ConfigError::Yaml { path, .. })] if *path == fixture.registry_path()
        ),
        "{errors:#?}"
    );
}

/// True if `problem` is a file the registry names that cannot be read
/// because it does not exist.
fn missing(problem: &Problem, file: &Path) -> bool {
    matches!(
        problem,
        Problem::File(ConfigError::Read { path, error })
            if path == file && error.kind() == ErrorKind::NotFound
    )
}

/// True if `problem` is the CRL `file` failing with `want`.
fn crl_error(problem: &Problem, file: &Path, want: CrlError) -> bool {
    matches!(problem, Problem::Crl { path, error } if path == file && *error == want)
}

fn one_service() -> Vec<Svc> {
    vec![Svc::new("a", A_URI, "k-0123456789")]
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
    assert_eq!(
        r.service_for_principal(SanKind::Uri, A_URI)
            .map(|s| s.id.as_str()),
        Some("a")
    );
    assert_eq!(
        r.service_for_principal(SanKind::Dns, "b.mesh.test")
            .map(|s| s.id.as_str()),
        Some("b")
    );
    assert!(!r.uses_dev_secret);
}

#[test]
fn duplicate_service_id() {
    let f = Fixture::new(&[]);
    let file = f.registry_file(&[
        Svc::new("a", A_URI, "k1-0123456789"),
        Svc::new("a", B_URI, "k2-0123456789"),
    ]);
    assert_errors(
        &f,
        &rejected(&f, &file),
        &[(
            "services[1].id",
            &|p| matches!(p, Problem::DuplicateServiceId { id, first } if id == "a" && first.at == "services[0].id"),
        )],
    );
}

#[test]
fn principal_claimed_twice() {
    let f = Fixture::new(&[]);
    let file = f.registry_file(&[
        Svc::new("a", A_URI, "k1-0123456789"),
        Svc::new("b", A_URI, "k2-0123456789"),
    ]);
    assert_errors(
        &f,
        &rejected(&f, &file),
        &[("services[1].principals[0]", &|p| {
            matches!(p, Problem::PrincipalClaimed { principal, owner, first }
                if principal == A_URI && owner == "a" && first.at == "services[0].principals[0]")
        })],
    );
}

#[test]
fn duplicate_api_key_hash() {
    let f = Fixture::new(&[]);
    let file = f.registry_file(&[
        Svc::new("a", A_URI, "same-key-0123"),
        Svc::new("b", B_URI, "same-key-0123"),
    ]);
    assert_errors(
        &f,
        &rejected(&f, &file),
        &[(
            "services[1].api_keys[0].sha256",
            &|p| matches!(p, Problem::DuplicateKeyHash { key, owner, first } if key == "k1" && owner == "a" && first.at == "services[0].api_keys[0].sha256"),
        )],
    );
}

#[test]
fn missing_or_short_secret_file() {
    let f = Fixture::new(&[]);
    let mut file = f.registry_file(&one_service());
    file.token.keys[0].secret_file = Some("secrets/missing.key".into());
    let missing_key = f.path().join("secrets/missing.key");
    assert_errors(
        &f,
        &rejected(&f, &file),
        &[("token.keys[0].secret_file", &|p| missing(p, &missing_key))],
    );

    f.write_file("secrets/short.key", "too-short");
    file.token.keys[0].secret_file = Some("secrets/short.key".into());
    assert_errors(
        &f,
        &rejected(&f, &file),
        &[("token.keys[0]", &|p| {
            matches!(p, Problem::SecretTooShort { len: 9 })
        })],
    );
}

#[test]
fn secret_from_env_var() {
    let f = Fixture::new(&[]);
    let mut file = f.registry_file(&one_service());
    let var = "SERVICE_AUTH_TEST_SECRET_REGISTRY_RS";
    file.token.keys[0].secret_file = None;
    file.token.keys[0].secret_env = Some(var.into());
    f.write(&file);
    // Setting a variable in this process needs `unsafe` (edition 2024), which
    // the crate denies; the binary loads the registry with it set instead.
    let config = f.write_config(&f.static_config(tcp0()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_service-auth"))
        .args(["check-config", "--config"])
        .arg(&config)
        .env(var, "env-secret-0123456789abcdef0123456789")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let unset = "SERVICE_AUTH_TEST_UNSET_VAR";
    assert!(std::env::var_os(unset).is_none());
    file.token.keys[0].secret_env = Some(unset.into());
    assert_errors(
        &f,
        &rejected(&f, &file),
        &[(
            "token.keys[0].secret_env",
            &|p| matches!(p, Problem::EnvNotSet(v) if v == unset),
        )],
    );
}

#[test]
fn no_signing_key() {
    let f = Fixture::new(&[]);
    let mut file = f.registry_file(&one_service());
    file.token.keys[0].verify_only = true;
    assert_errors(
        &f,
        &rejected(&f, &file),
        &[("token.keys", &|p| {
            matches!(p, Problem::KeySet(KeySetError::NoSigningKey))
        })],
    );
}

#[test]
fn malformed_hash_serial_pin_and_date() {
    let f = Fixture::new(&[]);
    let mut file = f.registry_file(&one_service());
    let hash = common::sha256_hex("k-0123456789");
    assert_eq!(file.services[0].api_keys[0].sha256, hash);
    file.services[0].api_keys[0].sha256 = hash[..40].to_owned();
    assert_errors(
        &f,
        &rejected(&f, &file),
        &[(
            "services[0].api_keys[0].sha256",
            &|p| matches!(p, Problem::InvalidSha256(s) if *s == hash[..40]),
        )],
    );

    let mut file = f.registry_file(&one_service());
    file.revocation.serials = vec!["xyz".into()];
    assert_errors(
        &f,
        &rejected(&f, &file),
        &[(
            "revocation.serials[0]",
            &|p| matches!(p, Problem::InvalidSerial(s) if s == "xyz"),
        )],
    );

    let mut svc = Svc::new("a", A_URI, "k-0123456789");
    svc.pins = vec!["abc".into()];
    assert_errors(
        &f,
        &rejected(&f, &f.registry_file(&[svc])),
        &[(
            "services[0].certificate_sha256[0]",
            &|p| matches!(p, Problem::InvalidSha256(s) if s == "abc"),
        )],
    );

    let mut svc = Svc::new("a", A_URI, "k-0123456789");
    svc.keys[0].2 = Some("next tuesday".into());
    assert_errors(
        &f,
        &rejected(&f, &f.registry_file(&[svc])),
        &[(
            "services[0].api_keys[0].not_after",
            &|p| matches!(p, Problem::InvalidTime(s) if s == "next tuesday"),
        )],
    );
}

#[test]
fn unreadable_ca_and_crl_files() {
    let f = Fixture::new(&[]);
    let mut svc = Svc::new("a", A_URI, "k-0123456789");
    svc.ca_file = Some("missing-ca.crt".into());
    let missing_ca = f.path().join("missing-ca.crt");
    assert_errors(
        &f,
        &rejected(&f, &f.registry_file(&[svc])),
        &[("services[0].ca_file", &|p| missing(p, &missing_ca))],
    );

    let leaf = f.write_file(
        "leaf.crt",
        Ca::new("x").client(&ClientSpec::uri(A_URI)).cert_pem,
    );
    let mut svc = Svc::new("a", A_URI, "k-0123456789");
    svc.ca_file = Some("leaf.crt".into());
    assert_errors(
        &f,
        &rejected(&f, &f.registry_file(&[svc])),
        &[(
            "services[0].ca_file",
            &|p| matches!(p, Problem::Bundle { path, error: BundleError::NotCa { index: 1, .. } } if *path == leaf),
        )],
    );

    let mut file = f.registry_file(&one_service());
    file.revocation.crl_files = vec!["nope.crl".into()];
    let nope = f.path().join("nope.crl");
    assert_errors(
        &f,
        &rejected(&f, &file),
        &[("revocation.crl_files[0]", &|p| missing(p, &nope))],
    );

    let bad = f.write_file("bad.crl", "not a crl");
    file.revocation.crl_files = vec!["bad.crl".into()];
    assert_errors(
        &f,
        &rejected(&f, &file),
        &[("revocation.crl_files[0]", &|p| {
            crl_error(p, &bad, CrlError::NotCrl)
        })],
    );
}

#[test]
fn unknown_fields_and_broken_yaml_are_located() {
    let f = Fixture::new(&[]);
    // A typo'd field cannot be written from the typed file: add it to the
    // YAML document built from one.
    let mut doc = serde_yaml::to_value(f.registry_file(&one_service())).unwrap();
    doc["services"][0]["scopez"] = serde_yaml::to_value(["x"]).unwrap();
    let text = serde_yaml::to_string(&doc).unwrap();
    let errors = rejected_text(&f, &text);
    let [
        LoadError::File(ConfigError::Yaml {
            path,
            line,
            message,
            ..
        }),
    ] = errors.as_slice()
    else {
        panic!("expected one YAML error, got {errors:#?}");
    };
    assert_eq!(*path, f.registry_path());
    assert!(message.contains("scopez"), "{message}");
    let scopez_line = 1 + text
        .lines()
        .position(|l| l.trim_start().starts_with("scopez:"))
        .unwrap();
    assert_eq!(*line, scopez_line, "{text}\n{errors:?}");

    assert_yaml_error(&f, &rejected_text(&f, "token: [unclosed"));
    assert_yaml_error(&f, &rejected_text(&f, ""));
}

#[test]
fn every_error_is_reported_at_once() {
    let f = Fixture::new(&[]);
    let mut file = f.registry_file(&[
        Svc::new("a", A_URI, "k1-0123456789"),
        Svc::new("a", A_URI, "k1-0123456789"),
    ]);
    file.revocation.serials = vec!["nothex".into()];
    assert_errors(
        &f,
        &rejected(&f, &file),
        &[
            (
                "services[1].id",
                &|p| matches!(p, Problem::DuplicateServiceId { id, first } if id == "a" && first.at == "services[0].id"),
            ),
            ("services[1].principals[0]", &|p| {
                matches!(p, Problem::PrincipalClaimed { principal, owner, first }
                    if principal == A_URI && owner == "a" && first.at == "services[0].principals[0]")
            }),
            (
                "services[1].api_keys[0].sha256",
                &|p| matches!(p, Problem::DuplicateKeyHash { key, owner, first } if key == "k1" && owner == "a" && first.at == "services[0].api_keys[0].sha256"),
            ),
            (
                "revocation.serials[0]",
                &|p| matches!(p, Problem::InvalidSerial(s) if s == "nothex"),
            ),
        ],
    );
}

#[test]
fn bundled_config_is_valid_and_flags_the_dev_secret() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config =
        service_auth::config::StaticConfig::load(&root.join("config/service-auth.yaml")).unwrap();
    let registry = Registry::load_paths(&config.registry).unwrap();
    assert!(
        registry.uses_dev_secret,
        "the bundled secret must be recognised as the dev secret"
    );
    // The dev secret is the bundled registry's only warning.
    let warnings = registry.warnings();
    assert!(
        matches!(warnings, [Warning::DevSecret { kid, .. }] if registry.token.keys().iter().any(|k| k.kid() == kid)),
        "{warnings:?}"
    );
    assert!(registry.service("api_service").is_some());
}

#[test]
fn crls_are_checked_against_the_issuing_ca_and_for_staleness() {
    let f = Fixture::new(&[]);
    let ca = Ca::new("mesh CA");
    f.write_file("ca.crt", ca.cert_pem());
    let mut svc = Svc::new("a", A_URI, "k-0123456789");
    svc.ca_file = Some("ca.crt".into());
    let with_crl = |crl: &str| {
        let mut file = f.registry_file(std::slice::from_ref(&svc));
        file.revocation.crl_files = vec![crl.into()];
        file
    };

    f.write_file("good.crl", ca.crl_pem(&[&[1]]));
    let r = load(&f, &with_crl("good.crl")).unwrap();
    assert!(r.warnings().is_empty(), "{:?}", r.warnings());

    // Same issuer name, another key: a forged CRL.
    let impostor = Ca::new("mesh CA");
    let forged = f.write_file("forged.crl", impostor.crl_pem(&[&[1]]));
    assert_errors(
        &f,
        &rejected(&f, &with_crl("forged.crl")),
        &[("revocation.crl_files[0]", &|p| {
            crl_error(p, &forged, CrlError::BadSignature)
        })],
    );

    // Past nextUpdate: still applied, and reported.
    let stale = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let stale_crl = f.write_file("stale.crl", ca.crl_pem_until(&[&[1]], stale));
    let r = load(&f, &with_crl("stale.crl")).unwrap();
    let warning = Warning::StaleCrl {
        at: "revocation.crl_files[0]".into(),
        path: stale_crl,
    };
    assert_eq!(r.warnings(), std::slice::from_ref(&warning));
    let one = ca.client(&ClientSpec::uri(A_URI).serial(&[1]));
    let one = PeerCertificate::from_pem(one.cert_pem.as_bytes()).unwrap();
    assert!(r.is_revoked(&one));
    // check-config shows the warning.
    let config = f.write_config(&f.static_config(tcp0()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_service-auth"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().any(|l| l == format!("warning: {warning}")),
        "{stderr}"
    );
}

#[test]
fn sources_list_every_file_read() {
    let f = Fixture::new(&[]);
    f.write_file("ca.crt", Ca::new("x").cert_pem());
    let mut svc = Svc::new("a", A_URI, "k-0123456789");
    svc.ca_file = Some("ca.crt".into());
    // A file several services name is listed (and watched) once.
    let mut other = Svc::new("b", B_URI, "k-b-0123456789");
    other.ca_file = Some("ca.crt".into());
    let r = load(&f, &registry_file(&[svc, other])).unwrap();
    let names: Vec<_> = r
        .sources()
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["registry.yaml", "jwt.key", "ca.crt"]);
}
