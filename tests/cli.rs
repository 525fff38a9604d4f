//! The command line, run as a user would.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{Fixture, Svc, tcp0};
use service_auth::registry::{Problem, Registry};

/// The binary, without the variables that would change what it checks.
fn bin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_service-auth"));
    for var in [
        "SERVICE_AUTH_CONFIG",
        "RUST_LOG",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        "OTEL_METRIC_EXPORT_INTERVAL",
    ] {
        command.env_remove(var);
    }
    command
}

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = bin()
        .args(args)
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

// ---------------------------------------------------------------------------
// check-config runs what serve runs (issue 19, item 1)
// ---------------------------------------------------------------------------

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

/// `serve --config config`, which must exit on its own (it refuses to
/// start); its stderr. Killed, and the test failed, if it is still running
/// after a generous deadline.
fn serve_refuses(config: &str) -> String {
    let mut child = bin()
        .args(["serve", "--config", config])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("serve started with {config}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    stderr(&o)
}

/// A fixture with one service and `config_text` as its static config
/// (`{registry}` replaced by the registry's path).
fn configured(config_text: &str) -> (Fixture, String) {
    let f = Fixture::new(&[Svc::new("a", "spiffe://mesh.test/a", "key-a-0123456789")]);
    let text = config_text.replace("{registry}", &f.registry_path().display().to_string());
    let config = f.write_file("service-auth.yaml", text);
    (f, config.display().to_string())
}

const LOG_LEVEL_RULE: &str = "is not a level, nor target=level: use error, warn, info, debug or trace, or directives such as info,service_auth=debug";

#[test]
fn check_config_refuses_what_serve_refuses_and_binds_nothing() {
    let (f, c) = configured(
        "listen:\n  grpc: 127.0.0.1:0\n  tls:\n    cert: tls/missing.crt\n    key: tls/missing.key\n    client_ca: tls/missing-ca.crt\nregistry: {registry}\nlog:\n  level: warning\ntelemetry:\n  otlp:\n    endpoint: not a url\n",
    );
    let d = f.path().display();
    let o = run(&["check-config", "--config", &c], "");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "", "stdout holds the result line alone");
    let no_file = "cannot read: No such file or directory (os error 2)";
    assert_eq!(
        lines(&stderr(&o)),
        [
            format!("warning: {}", service_auth::config::NO_ALLOWED_SANS_WARNING),
            "service a: trust domain mesh.test".to_owned(),
            format!("{c}: log.level: \"warning\" {LOG_LEVEL_RULE}"),
            format!("{c}: listen.tls.cert: {d}/tls/missing.crt: {no_file}"),
            format!("{c}: listen.tls.key: {d}/tls/missing.key: {no_file}"),
            format!("{c}: listen.tls.client_ca: {d}/tls/missing-ca.crt: {no_file}"),
            format!(
                "{c}: telemetry.otlp.endpoint: \"not a url\" is not a URL such as http://127.0.0.1:4317"
            ),
            "service-auth: 5 error(s)".to_owned(),
        ]
    );
    // serve refuses the same settings, one problem at a time too.
    let err = serve_refuses(&c);
    assert!(
        err.starts_with("service-auth: refusing to start:\n"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "\n  listen.tls.key: {d}/tls/missing.key: {no_file}\n"
        )),
        "{err}"
    );
    for (setting, line) in [
        ("log:\n  level: verbose\n", format!("service-auth: log.level: \"verbose\" {LOG_LEVEL_RULE}")),
        ("telemetry:\n  otlp:\n    endpoint: https://collector:4317\n", "service-auth: telemetry.otlp.endpoint: \"https://collector:4317\" uses https, which this build's exporter cannot speak: use http:// (a collector on the node, or a TLS-terminating proxy beside the sidecar)".to_owned()),
    ] {
        let (_f, c) = configured(&format!("listen:\n  grpc: 127.0.0.1:0\nregistry: {{registry}}\n{setting}"));
        assert_eq!(lines(&serve_refuses(&c)), std::slice::from_ref(&line));
        let o = run(&["check-config", "--config", &c], "");
        assert_eq!(o.status.code(), Some(1));
        let expected = line.replace("service-auth: ", &format!("{c}: "));
        assert!(lines(&stderr(&o)).contains(&expected), "{expected} in {}", stderr(&o));
    }

    // A taken address is not check-config's business: it binds nothing.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (_f, c) = configured(&format!(
        "listen:\n  grpc: {}\nregistry: {{registry}}\nlog:\n  level: info,service_auth=debug\n",
        taken.local_addr().unwrap()
    ));
    let o = run(&["check-config", "--config", &c], "");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn a_log_filter_from_the_environment_follows_the_same_rule() {
    let (_f, c) = configured("listen:\n  grpc: 127.0.0.1:0\nregistry: {registry}\n");
    let o = bin()
        .args(["check-config", "--config", &c])
        .env("RUST_LOG", "warning")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = lines(&stderr(&o));
    assert_eq!(
        err[err.len() - 2..],
        [
            format!("RUST_LOG=\"warning\": \"warning\" {LOG_LEVEL_RULE}"),
            "service-auth: 1 error(s)".to_owned()
        ]
    );
}

#[test]
fn check_config_loads_the_listener_certificate_key_and_ca() {
    let ca = common::Ca::new("hop CA");
    let served = ca.server(&["service-auth"]);
    let other = ca.server(&["other"]);
    let (f, c) = configured(
        "listen:\n  grpc: 127.0.0.1:0\n  tls:\n    cert: tls/sidecar.crt\n    key: tls/sidecar.key\n    client_ca: tls/ca.crt\nregistry: {registry}\n",
    );
    let d = f.path().display();
    let cut = &served.cert_pem[..served.cert_pem.len() / 2];
    f.write_file("tls/sidecar.crt", cut);
    f.write_file("tls/sidecar.key", &served.key_pem);
    f.write_file("tls/ca.crt", ca.key_pem());
    let o = run(&["check-config", "--config", &c], "");
    assert_eq!(o.status.code(), Some(1));
    let err = lines(&stderr(&o));
    assert_eq!(
        err[2..],
        [
            format!(
                "{c}: listen.tls.cert: {d}/tls/sidecar.crt: a PEM block has no END line: the file is truncated"
            ),
            format!("{c}: listen.tls.client_ca: {d}/tls/ca.crt: no CERTIFICATE block in the file"),
            "service-auth: 2 error(s)".to_owned(),
        ]
    );

    f.write_file("tls/sidecar.crt", &served.cert_pem);
    f.write_file("tls/sidecar.key", &other.key_pem);
    f.write_file("tls/ca.crt", ca.cert_pem());
    let o = run(&["check-config", "--config", &c], "");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        lines(&stderr(&o))[2..],
        [
            format!(
                "{c}: listen.tls.key: {d}/tls/sidecar.key: the private key does not belong to the certificate in {d}/tls/sidecar.crt"
            ),
            "service-auth: 1 error(s)".to_owned(),
        ]
    );

    f.write_file("tls/sidecar.key", &served.key_pem);
    let o = run(&["check-config", "--config", &c], "");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!("ok: {c} and {} (1 service)\n", f.registry_path().display())
    );
    assert_eq!(
        lines(&stderr(&o)),
        [
            format!("warning: {}", service_auth::config::NO_ALLOWED_SANS_WARNING),
            "service a: trust domain mesh.test".to_owned(),
        ]
    );
}

// ---------------------------------------------------------------------------
// Every error at once (item 2)
// ---------------------------------------------------------------------------

#[test]
fn every_structural_and_validation_error_is_reported_in_one_run() {
    let (f, c) = configured(
        "listen:\n  grpc: 127.0.0.1:0\nregistry: {registry}\nlimits:\n  max_connections: 0\n  max_message_bytes: 0\n  request_timeout: 0s\n  keepalive_timeout: 0s\n  max_conections: 5\n",
    );
    f.write_text(
        "token:\n  issuer: https://issuer.test\n  audience: orders\n  keys:\n    - kid: k1\n      secret_file: secrets/jwt.key\nservices:\n  - id: a\n    principal: spiffe://mesh.test/a\n    principals: [spiffe://mesh.test/a]\n    scopes: [\"wr ite\"]\n  - id: a\n    principals: [spiffe://mesh.test/b]\ntoken:\n  issuer: again\n",
    );
    let r = f.registry_path().display().to_string();
    let o = run(&["check-config", "--config", &c], "");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    assert_eq!(
        lines(&stderr(&o)),
        [
            format!(
                "{c}:9:3: limits: unknown field `max_conections`, expected one of `max_message_bytes`, `max_header_list_bytes`, `max_concurrent_streams`, `max_connections`, `max_pending_handshakes`, `handshake_timeout`, `request_timeout`, `keepalive_interval`, `keepalive_timeout`"
            ),
            format!("{c}: limits.max_message_bytes: must be above zero"),
            format!("{c}: limits.max_connections: must be above zero"),
            format!("{c}: limits.request_timeout: must be above zero"),
            format!("{c}: limits.keepalive_timeout: must be above zero"),
            format!(
                "{r}:9:5: services[0]: unknown field `principal`, expected one of `id`, `principals`, `ca_file`, `certificate_sha256`, `scopes`, `api_keys`, `enforcement`"
            ),
            format!("{r}:14:1: duplicate key `token` (first at line 1 column 1)"),
            format!(
                "{r}: services[0].scopes[0]: scope \"wr ite\" must be printable ASCII without spaces or commas"
            ),
            format!(
                "{r}: services[1].id: duplicate service id \"a\" (first at {r}: services[0].id)"
            ),
            "service-auth: 9 error(s)".to_owned(),
        ]
    );
}

#[test]
fn a_wrong_type_is_reported_with_the_keys_before_it() {
    let (f, c) = configured("listen:\n  grpc: 127.0.0.1:0\nregistry: {registry}\n");
    f.write_text(
        "token:\n  issuer: https://issuer.test\n  audience: orders\n  keys: []\n  extra: 1\nservices:\n  - id: a\n    principals: spiffe://mesh.test/a\n",
    );
    let r = f.registry_path().display().to_string();
    let o = run(&["check-config", "--config", &c], "");
    assert_eq!(
        lines(&stderr(&o)),
        [
            format!(
                "{r}:5:3: token: unknown field `extra`, expected one of `issuer`, `audience`, `ttl`, `leeway`, `header`, `keys`"
            ),
            format!(
                "{r}:8:17: services[0].principals: invalid type: string \"spiffe://mesh.test/a\", expected a sequence"
            ),
            "service-auth: 2 error(s)".to_owned(),
        ]
    );
}

// ---------------------------------------------------------------------------
// Messages tell the truth (item 3)
// ---------------------------------------------------------------------------

#[test]
fn each_file_kind_reports_its_own_limit_and_the_real_size() {
    let (f, c) = configured("listen:\n  grpc: 127.0.0.1:0\nregistry: {registry}\n");
    let d = f.path().display();
    let r = f.registry_path().display().to_string();
    f.write_file("secrets/jwt.key", vec![b'k'; 5_000_000]);
    f.write_file("bigca.pem", vec![b'A'; 2_000_000]);
    let mut file = f.registry_file(&[Svc::new("a", "spiffe://mesh.test/a", "key-a-0123456789")]);
    file.services[0].ca_file = Some("bigca.pem".into());
    f.write(&file);
    let o = run(&["check-config", "--config", &c], "");
    assert_eq!(
        lines(&stderr(&o)),
        [
            format!(
                "{r}: token.keys[0].secret_file: {d}/secrets/jwt.key: 5000000 bytes is above the 1048576-byte limit"
            ),
            format!(
                "{r}: services[0].ca_file: {d}/bigca.pem: 2000000 bytes is above the 1048576-byte limit"
            ),
            "service-auth: 2 error(s)".to_owned(),
        ]
    );
    f.write_text(&"#".repeat(16_779_288));
    let o = run(&["check-config", "--config", &c], "");
    assert_eq!(
        lines(&stderr(&o)),
        [
            format!("{r}: 16779288 bytes is above the 16777216-byte limit"),
            "service-auth: 1 error(s)".to_owned(),
        ]
    );
}

#[test]
fn hash_key_takes_off_one_newline_and_refuses_keys_no_check_accepts() {
    let hash = common::sha256_hex("key-0123");
    for input in ["key-0123", "key-0123\n", "key-0123\r\n"] {
        let o = run(&["hash-key"], input);
        assert_eq!(o.status.code(), Some(0), "{input:?}: {}", stderr(&o));
        assert_eq!(stdout(&o), format!("{hash}\n"), "{input:?}");
    }
    let max = "k".repeat(512);
    assert_eq!(
        stdout(&run(&["hash-key"], &max)),
        format!("{}\n", common::sha256_hex(&max))
    );
    let refused = "service-auth: no Check would accept this key, so it is not hashed: ";
    let rule = "a key is printable ASCII without spaces or commas";
    for (input, why) in [
        (
            "key-0123\n\n",
            format!("byte 9 of the key is a control character: {rule}"),
        ),
        (
            "key-0123\r",
            format!("byte 9 of the key is a control character: {rule}"),
        ),
        (
            "key 0123\n",
            format!("byte 4 of the key is a space: {rule}"),
        ),
        (
            "key,0123\n",
            format!("byte 4 of the key is a comma: {rule}"),
        ),
        (
            "kéy-0123\n",
            format!("byte 2 of the key is not ASCII: {rule}"),
        ),
        (
            &"k".repeat(513),
            "the key is longer than 512 bytes".to_owned(),
        ),
        ("\n", "the key is empty".to_owned()),
        ("", "the key is empty".to_owned()),
    ] {
        let o = run(&["hash-key"], input);
        assert_eq!(o.status.code(), Some(1), "{input:?}");
        assert_eq!(stdout(&o), "", "{input:?}");
        assert_eq!(stderr(&o), format!("{refused}{why}\n"), "{input:?}");
    }
}

#[test]
fn errors_are_printed_once_each() {
    let missing = "/nonexistent/service-auth.yaml";
    let no_file = "cannot read: No such file or directory (os error 2)";
    let o = run(&["check-config", "--config", missing], "");
    assert_eq!(
        lines(&stderr(&o)),
        [
            format!("{missing}: {no_file}"),
            "service-auth: 1 error(s)".to_owned()
        ]
    );
    for command in ["serve", "jwks"] {
        let o = run(&[command, "--config", missing], "");
        assert_eq!(o.status.code(), Some(1));
        assert_eq!(
            stderr(&o),
            format!("service-auth: {missing}: {no_file}\n"),
            "{command}"
        );
    }
    // Nothing listens there: the cause, once, after tonic's own words.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let o = run(&["health", "--addr", &addr, "--timeout", "10s"], "");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "service-auth: cannot connect to {addr}: transport error: tcp connect error: Connection refused (os error 111)\n"
        )
    );
}

#[tokio::test]
async fn health_says_a_tls_listener_needs_the_tls_options() {
    let ca = common::Ca::new("hop CA");
    let served = ca.server(&["service-auth"]);
    let client = ca.client(&common::ClientSpec::empty().with_cn("envoy"));
    let (f, c) = configured(
        "listen:\n  grpc: 127.0.0.1:0\n  tls:\n    cert: tls/sidecar.crt\n    key: tls/sidecar.key\n    client_ca: tls/ca.crt\nregistry: {registry}\n",
    );
    for (name, contents) in [
        ("tls/sidecar.crt", &served.cert_pem),
        ("tls/sidecar.key", &served.key_pem),
        ("tls/client.crt", &client.cert_pem),
        ("tls/client.key", &client.key_pem),
        ("tls/ca.crt", &ca.cert_pem()),
    ] {
        f.write_file(name, contents);
    }
    let config = service_auth::config::StaticConfig::load(std::path::Path::new(&c)).unwrap();
    let sidecar = common::InProcess::start(&config).await;
    let addr = sidecar.addr.to_string();
    let dir = f.path().display().to_string();
    let probe = move |tls: bool| {
        let mut args = vec!["health".to_owned(), "--addr".to_owned(), addr.clone()];
        if tls {
            let d = &dir;
            for (option, file) in [
                ("--tls-cert", "client.crt"),
                ("--tls-key", "client.key"),
                ("--tls-ca", "ca.crt"),
            ] {
                args.push(option.to_owned());
                args.push(format!("{d}/tls/{file}"));
            }
            args.extend(["--tls-server-name".to_owned(), "service-auth".to_owned()]);
        }
        bin().args(&args).output().unwrap()
    };
    let plain = tokio::task::spawn_blocking({
        let probe = probe.clone();
        move || probe(false)
    })
    .await
    .unwrap();
    assert_eq!(plain.status.code(), Some(1));
    assert_eq!(stdout(&plain), "");
    assert_eq!(
        stderr(&plain),
        format!(
            "service-auth: {} is a TLS listener (listen.tls): probe it with --tls-cert, --tls-key and --tls-ca\n",
            sidecar.addr
        )
    );
    let with_tls = tokio::task::spawn_blocking(move || probe(true))
        .await
        .unwrap();
    assert_eq!(with_tls.status.code(), Some(0), "{}", stderr(&with_tls));
    assert_eq!(stdout(&with_tls), "SERVING\n");
}
