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
fn gen_secret_out_writes_a_private_file_and_never_replaces_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwt.key");
    let out = path.display().to_string();
    let o = run(&["gen-secret", "--out", &out], "");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "", "the secret goes to the file only");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    let secret = std::fs::read_to_string(&path).unwrap();
    assert!(secret.trim_end().len() >= 43, "{secret:?}");

    // An existing file is never overwritten.
    let o = run(&["gen-secret", "--out", &out], "");
    assert!(!o.status.success());
    assert!(stderr(&o).contains(&out), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), secret);

    // The file works as a registry secret, without a warning.
    let (f, config) = fixture();
    std::fs::rename(&path, f.path().join("secrets/jwt.key")).unwrap();
    let o = run(&["check-config", "--config", &config], "");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
}

#[test]
fn a_secret_others_can_read_is_a_warning_not_an_error() {
    use std::os::unix::fs::PermissionsExt;
    let (f, config) = fixture();
    let secret = f.path().join("secrets/jwt.key");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(&["check-config", "--config", &config], "");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("ok:"), "{}", stdout(&o));
    let expected = format!(
        "warning: token.keys[0].secret_file: {}: mode 0644 lets every user read this secret; make it readable by the sidecar alone (`chmod 600`)",
        secret.display()
    );
    assert!(
        stderr(&o).lines().any(|l| l == expected),
        "{expected}\nin\n{}",
        stderr(&o)
    );

    // `serve` starts and logs it.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sidecar = runtime.block_on(common::procs::Sidecar::start(std::path::Path::new(&config)));
    let log = sidecar.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains(r#""event":"registry_warning""#)
                && l.contains("lets every user read this secret")),
        "{log}"
    );
}

#[test]
fn gen_key_ids_are_dated_and_unique() {
    let id = |o: &Output| {
        stdout(o)
            .lines()
            .find_map(|l| l.strip_prefix("- id: ").map(str::to_owned))
            .unwrap()
    };
    let (first, second) = (run(&["gen-key"], ""), run(&["gen-key"], ""));
    let (first, second) = (id(&first), id(&second));
    assert_ne!(first, second, "two keys made the same day");
    let today = time::OffsetDateTime::now_utc().date().to_string();
    for id in [&first, &second] {
        let suffix = id
            .strip_prefix(&format!("{today}-"))
            .unwrap_or_else(|| panic!("{id}"));
        assert!(
            suffix.len() == 8 && suffix.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
    }
}

/// `serve --config <config>` with stderr to `log` and no `OTEL_*` variables.
fn spawn_serve(config: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_service-auth"));
    command
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("SERVICE_AUTH_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")) {
        command.env_remove(name);
    }
    command.spawn().unwrap()
}

/// Polls `f` every 25 ms until it returns `Some`, or panics after 30 s.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

/// Kills and reaps `child` when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_second_serve_refuses_a_live_unix_socket_and_replaces_a_stale_one() {
    let f = Fixture::new(&[Svc::new("a", "spiffe://mesh.test/a", "key-a-0123456789")]);
    let socket = f.path().join("authz.sock");
    let addr = format!("unix:{}", socket.display());
    let config = f.write_config(&f.static_config(addr.parse().unwrap()));
    let healthy = || run(&["health", "--addr", &addr], "").status.success();

    let mut first = Reaped(spawn_serve(&config, &f.path().join("first.log")));
    wait_for("the first serve to be SERVING", || healthy().then_some(()));

    let second = Command::new(env!("CARGO_BIN_EXE_service-auth"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = stderr(&second);
    assert!(
        err.contains(&format!("cannot listen on {addr}"))
            && err.contains("a server is already listening on this socket"),
        "{err}"
    );
    assert!(healthy(), "the first serve still answers on its socket");
    assert!(first.0.try_wait().unwrap().is_none());

    // Killed outright, the first leaves its socket file behind: stale.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(socket.exists());
    assert!(!healthy());
    let _third = Reaped(spawn_serve(&config, &f.path().join("third.log")));
    wait_for("a serve on the stale socket to be SERVING", || {
        healthy().then_some(())
    });
}

#[test]
fn text_logs_carry_no_colour_codes_off_a_terminal() {
    let (f, _) = fixture();
    let mut config = f.static_config(tcp0());
    config.log.format = service_auth::config::LogFormat::Text;
    let config = f.write_config(&config);
    let log = f.path().join("serve.log");
    let _serve = Reaped(spawn_serve(&config, &log));
    let text = wait_for("the registry_loaded line", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("registry_loaded").then_some(text)
    });
    assert!(!text.contains('\x1b'), "ANSI escape in a file: {text:?}");
    assert!(text.contains("INFO"), "{text}");
}

#[test]
fn otlp_without_endpoint_or_variables_names_the_default_endpoint() {
    let (f, _) = fixture();
    let mut config = f.static_config(tcp0());
    config.telemetry.otlp = Some(Default::default());
    let config = f.write_config(&config);
    let log = f.path().join("serve.log");
    let _serve = Reaped(spawn_serve(&config, &log));
    let line: serde_json::Value = wait_for("the metrics_export line", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["event"] == "metrics_export")
    });
    assert_eq!(line["endpoint"], "http://localhost:4317", "{line}");
    assert_eq!(line["protocol"], "Grpc", "{line}");
}

#[tokio::test]
async fn an_unknown_principal_denial_logs_the_presented_sans_escaped_and_bounded() {
    let (_f, config) = fixture();
    let sidecar = common::procs::Sidecar::start(std::path::Path::new(&config)).await;
    let mut client = sidecar.client().await;
    let ca = common::Ca::new("cli CA");
    let long = format!("spiffe://mesh.test/{}", "x".repeat(400));
    let spec = common::ClientSpec::uri("spiffe://mesh.test/unregistered").with_uri(&long);
    let req = common::Req::cert(ca.client(&spec).forwarded()).key("key-a-0123456789");
    let resp = client.check(req.build()).await.unwrap().into_inner();
    assert!(resp.status.unwrap().code != 0, "denied");

    let line: serde_json::Value = common::procs::poll(
        "the denial's log line",
        std::time::Duration::from_secs(15),
        || {
            let found = sidecar
                .log_text()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["reason"] == "unknown_principal");
            async move { found }
        },
    )
    .await;
    let sans = line["presented_sans"].as_str().unwrap_or_default();
    let cut = &long[..256];
    assert_eq!(
        sans,
        format!(r#"uri "spiffe://mesh.test/unregistered", uri "{cut}""#),
        "{line}"
    );
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
