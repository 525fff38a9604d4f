//! The command line, run as a user would.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{Fixture, Svc, tcp0};
use service_auth::registry::{Problem, Registry};

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_service-auth"))
        .args(args)
        .env_remove("SERVICE_AUTH_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// `token issue --service SERVICE --scope SCOPE` with `config`.
fn token_issue(config: &str, service: &str, scope: &str) -> Output {
    run(
        &[
            "token",
            "issue",
            "--config",
            config,
            "--service",
            service,
            "--scope",
            scope,
        ],
        "",
    )
}

fn fixture() -> (Fixture, String) {
    let f = Fixture::new(&[Svc::new("a", "spiffe://mesh.test/a", "key-a-0123456789")]);
    let config = f
        .write_config(&f.static_config(tcp0()))
        .display()
        .to_string();
    (f, config)
}

#[test]
fn check_config_accepts_the_bundled_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let o = run(
        &[
            "check-config",
            "--config",
            &format!("{root}/config/service-auth.yaml"),
        ],
        "",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("ok:"));
}

#[test]
fn check_config_reports_every_error_with_location() {
    let (f, config) = fixture();
    let o = run(&["check-config", "--config", &config], "");
    assert!(o.status.success(), "{}", stderr(&o));

    f.write_text("token:\n  issuer: x\n  audiense: y\n");
    let o = run(&["check-config", "--config", &config], "");
    assert!(!o.status.success());
    let err = stderr(&o);
    let path = f.registry_path().display().to_string();
    assert!(err.contains(&format!("{path}:3:")), "{err}");
    assert!(err.contains("audiense"), "{err}");

    f.write_registry(&[
        Svc::new("a", "spiffe://x/a", "k-0123456789"),
        Svc::new("a", "spiffe://x/a", "k-0123456789"),
    ]);
    let o = run(&["check-config", "--config", &config], "");
    assert!(!o.status.success());
    let err = stderr(&o);
    // The three errors the library reports, each printed on its own line.
    let Err(errors) = Registry::load(&f.registry_path()) else {
        panic!("the duplicated registry loaded");
    };
    let kinds: Vec<_> = errors.iter().map(|e| (e.at(), e.problem())).collect();
    assert!(
        matches!(
            kinds.as_slice(),
            [
                (
                    Some("services[1].id"),
                    Some(Problem::DuplicateServiceId { .. })
                ),
                (
                    Some("services[1].principals[0]"),
                    Some(Problem::PrincipalClaimed { .. })
                ),
                (
                    Some("services[1].api_keys[0].sha256"),
                    Some(Problem::DuplicateKeyHash { .. })
                ),
            ]
        ),
        "{errors:#?}"
    );
    for e in &errors {
        assert!(err.lines().any(|l| l == e.to_string()), "{e} in {err}");
    }
    assert!(
        err.contains("duplicate service id") && err.contains("already claimed"),
        "{err}"
    );
    assert!(err.contains("3 error(s)"), "{err}");

    let o = run(
        &["check-config", "--config", "/nonexistent/service-auth.yaml"],
        "",
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cannot read"));
}

#[test]
fn config_comes_from_the_environment_too() {
    let (_f, config) = fixture();
    let o = Command::new(env!("CARGO_BIN_EXE_service-auth"))
        .arg("check-config")
        .env("SERVICE_AUTH_CONFIG", &config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn gen_key_prints_a_key_and_its_hash_which_hash_key_reproduces() {
    let o = run(&["gen-key"], "");
    assert!(o.status.success());
    let out = stdout(&o);
    let key = out.lines().next().unwrap();
    assert!(key.len() >= 43, "at least 256 bits: {key}");
    assert!(
        key.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    let hashed = run(&["hash-key"], &format!("{key}\n"));
    let hash = stdout(&hashed).trim().to_owned();
    assert_eq!(hash, common::sha256_hex(key));
    assert!(out.contains(&format!("sha256: \"{hash}\"")), "{out}");
    assert_ne!(stdout(&run(&["gen-key"], "")).lines().next().unwrap(), key);
}

#[test]
fn gen_secret_is_long_enough() {
    let o = run(&["gen-secret"], "");
    assert!(o.status.success());
    assert!(stdout(&o).trim().len() >= 43);
}

#[test]
fn token_issue_then_verify() {
    let (_f, config) = fixture();
    let o = token_issue(&config, "a", "read");
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "only the token on stdout");

    let o = run(&["token", "verify", "--config", &config, &token], "");
    assert!(o.status.success(), "{}", stderr(&o));
    let claims: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(claims["sub"], "a");
    assert_eq!(claims["scope"], "read");
    assert_eq!(claims["aud"], common::AUDIENCE);

    // From stdin.
    let o = run(
        &["token", "verify", "--config", &config, "-"],
        &format!("{token}\n"),
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // Tampered: non-zero exit, reason on stderr, nothing on stdout.
    let tampered = format!("{}x", &token);
    let o = run(&["token", "verify", "--config", &config, &tampered], "");
    assert!(!o.status.success());
    assert!(stdout(&o).is_empty());
    assert!(stderr(&o).contains("bad_signature"), "{}", stderr(&o));

    let o = run(&["token", "verify", "--config", &config, "not-a-token"], "");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("malformed"));
}

#[test]
fn token_issue_refuses_unknown_service_and_scope() {
    let (_f, config) = fixture();
    let o = token_issue(&config, "nobody", "read");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no service"));
    let o = token_issue(&config, "a", "admin");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not allowed"));
}
