//! The deployment files run what the tests run: every Envoy config passes the
//! real Envoy's validation, the Compose file and the Kubernetes example only
//! name files that exist (with `dev-pki` output standing in for the generated
//! `demo-pki/`), and `dev-pki` output gives an allowed call through a real
//! Envoy running the shipped `envoy/envoy.yaml`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::dev_pki::{DEMO_PKI, DevPki};
use common::procs::{Echo, Envoy, Sidecar, envoy_binary, free_port};
use common::{Fixture, Svc, unix_now};
use serde::Deserialize;
use serde_yaml::Value;
use service_auth::config::{RegistryFile, StaticConfig, parse_yaml};
use service_auth::registry::Registry;
use service_auth::token;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_service-auth"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run service-auth")
}

// ---------------------------------------------------------------------------
// dev-pki
// ---------------------------------------------------------------------------

#[test]
fn dev_pki_keeps_secrets_private_and_refuses_to_overwrite() {
    let pki = DevPki::generate();
    for secret in [
        "ca/ca.key",
        "ca/hop-ca.key",
        "certs/envoy.key",
        "certs/envoy-client.key",
        "sidecar/sidecar.key",
        "clients/api_service.key",
        "clients/billing.key",
        "secrets/jwt-signing.key",
    ] {
        let mode = std::fs::metadata(pki.dir.join(secret))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{secret} has mode {mode:o}");
    }
    assert!(pki.read("secrets/jwt-signing.key").trim_end().len() >= 32);

    // Only hashes reach the registry, and it is a valid one.
    let registry = pki.read("registry.yaml");
    for service in ["api_service", "billing"] {
        let key = pki.api_key(service);
        assert!(key.len() >= 43, "{service} key too short");
        assert!(!registry.contains(&key), "plaintext key in registry.yaml");
        assert!(registry.contains(&common::sha256_hex(&key)));
    }
    let out = run(bin()
        .arg("check-config")
        .arg("--config")
        .arg(pki.dir.join("service-auth.yaml")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A second run would invalidate what was handed out: refused, untouched.
    let before = pki.read("certs/ca.crt");
    let out = run(bin().arg("dev-pki").arg(&pki.dir));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(pki.read("certs/ca.crt"), before);

    let out = run(bin().arg("dev-pki").arg("--force").arg(&pki.dir));
    assert!(out.status.success());
    assert_ne!(pki.read("certs/ca.crt"), before);
    let mode = std::fs::metadata(pki.dir.join("certs/envoy.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn dev_pki_output_gives_an_allowed_call_through_real_envoy() {
    let pki = DevPki::generate();

    // The generated config, listening on a free port instead of 9191.
    let sidecar_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut config: Value = serde_yaml::from_str(&pki.read("service-auth.yaml")).unwrap();
    config["listen"]["grpc"] = sidecar_addr.to_string().into();
    let config_path = pki.dir.join("service-auth.test.yaml");
    std::fs::write(&config_path, serde_yaml::to_string(&config).unwrap()).unwrap();
    let _sidecar = Sidecar::start(&config_path, sidecar_addr).await;

    let echo = Echo::start().await;
    // Envoy's working directory is the dev-pki output: certs/ as generated.
    let envoy = Envoy::shipped(&pki.dir, sidecar_addr, echo.addr).await;
    let base = envoy.base_url();
    let api = pki.client("api_service");
    let billing = pki.client("billing");

    let resp = api
        .get(format!("{base}/orders"))
        .header("x-api-key", pki.api_key("api_service"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let headers: serde_json::Value = resp.json().await.unwrap();
    let jwt = headers["x-service-jwt"][0]
        .as_str()
        .unwrap_or_else(|| panic!("upstream got no x-service-jwt: {headers}"));
    assert!(headers.get("x-api-key").is_none());
    let registry = Registry::load(&pki.dir.join("registry.yaml"))
        .unwrap_or_else(|e| panic!("{:?}", e.iter().map(|e| e.to_string()).collect::<Vec<_>>()));
    let claims = token::verify(&registry.token, jwt, unix_now())
        .expect("the injected token verifies")
        .claims;
    assert_eq!(claims.sub, "api_service");
    assert_eq!(
        claims.principal,
        "spiffe://mesh.local/ns/default/sa/api_service"
    );
    assert_eq!(claims.scope, "read write");

    // billing may read but not write; and may not use another service's key.
    let status = |req: reqwest::RequestBuilder| async move { req.send().await.unwrap().status() };
    let billing_key = pki.api_key("billing");
    assert_eq!(
        status(
            billing
                .get(format!("{base}/orders"))
                .header("x-api-key", &billing_key)
        )
        .await,
        200
    );
    assert_eq!(
        status(
            billing
                .get(format!("{base}/write/orders"))
                .header("x-api-key", &billing_key)
        )
        .await,
        403
    );
    assert_eq!(
        status(
            api.get(format!("{base}/orders"))
                .header("x-api-key", &billing_key)
        )
        .await,
        401
    );
    assert_eq!(status(api.get(format!("{base}/orders"))).await, 401);
    assert_eq!(echo.hits(), 2, "a denied call reached the upstream");
}

// ---------------------------------------------------------------------------
// health
// ---------------------------------------------------------------------------

#[tokio::test]
async fn health_exits_zero_only_when_serving_over_tcp_and_unix() {
    let fixture = Fixture::new(&[Svc::new("a", "spiffe://t/a", "key-a-0123456789")]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = fixture.write_config(&addr.to_string(), "");
    let sidecar = Sidecar::start(&config, addr).await;
    let out = run(bin().arg("health").arg("--addr").arg(addr.to_string()));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
    drop(sidecar);
    let out = run(bin().arg("health").arg("--addr").arg(addr.to_string()));
    assert!(!out.status.success(), "healthy with nothing listening");

    // Over a Unix socket, with the address taken from the config (as the
    // Docker HEALTHCHECK does through SERVICE_AUTH_CONFIG).
    let socket = fixture.path().join("authz.sock");
    let config = fixture.write_config(&format!("unix:{}", socket.display()), "");
    let mut child = bin()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let healthy = || {
        run(bin().arg("health").env("SERVICE_AUTH_CONFIG", &config))
            .status
            .success()
    };
    let serving = tokio::time::timeout(Duration::from_secs(30), async {
        while !healthy() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        serving.is_ok(),
        "health never reported SERVING over {}",
        socket.display()
    );
}

// ---------------------------------------------------------------------------
// Envoy configs
// ---------------------------------------------------------------------------

#[test]
fn every_envoy_config_passes_envoy_validate() {
    let pki = DevPki::generate();
    let mut configs: Vec<PathBuf> = std::fs::read_dir(repo().join("envoy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    configs.sort();
    assert!(!configs.is_empty(), "no Envoy configs in envoy/");
    for config in configs {
        // The working directory holds certs/, as in compose and Kubernetes.
        let out = Command::new(envoy_binary())
            .current_dir(&pki.dir)
            .args(["--mode", "validate", "--log-level", "warn", "-c"])
            .arg(&config)
            .stdin(Stdio::null())
            .output()
            .expect("run envoy");
        assert!(
            out.status.success(),
            "envoy rejects {}:\n{}{}",
            config.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------------
// docker-compose.yml
// ---------------------------------------------------------------------------

fn yaml_file(relative: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(relative)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// A mount: where the container sees it, and the file or directory on the
/// host behind it (`None` for an empty tmpfs, which hides what is below).
struct Mount {
    host: Option<PathBuf>,
    container: String,
}

/// The mounts of a Compose service; every bind mount is checked to exist.
/// Sources under `./demo-pki/` are looked up in `pki` (they are generated,
/// never committed).
fn compose_mounts(name: &str, service: &Value, pki: &Path) -> Vec<Mount> {
    let volumes = service["volumes"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    volumes
        .iter()
        .map(|v| {
            let (source, target) = match v {
                Value::String(s) => {
                    let mut parts = s.split(':');
                    (
                        parts.next().unwrap().to_owned(),
                        parts.next().expect("volume without target").to_owned(),
                    )
                }
                other if other["type"].as_str() == Some("tmpfs") => {
                    return Mount {
                        host: None,
                        container: other["target"].as_str().expect("tmpfs target").to_owned(),
                    };
                }
                other => (
                    other["source"].as_str().expect("volume source").to_owned(),
                    other["target"].as_str().expect("volume target").to_owned(),
                ),
            };
            assert!(
                source.starts_with("./"),
                "{name}: volume {source:?} is not a bind mount of a repository path"
            );
            let relative = source.trim_start_matches("./");
            let host = match relative.strip_prefix(DEMO_PKI) {
                Some(rest) => pki.join(rest.trim_start_matches('/')),
                None => repo().join(relative),
            };
            assert!(
                host.exists(),
                "{name}: mounts {source}, which does not exist ({})",
                host.display()
            );
            Mount {
                host: Some(host),
                container: target,
            }
        })
        .collect()
}

/// The host file behind `container_path`: the deepest mount above it wins
/// (Docker mounts parents first), and a tmpfs there hides everything.
fn host_path(mounts: &[Mount], container_path: &str) -> Option<PathBuf> {
    let (_, mount, rest) = mounts
        .iter()
        .filter_map(|m| {
            let rest = container_path.strip_prefix(&m.container)?;
            (rest.is_empty() || rest.starts_with('/')).then_some((m.container.len(), m, rest))
        })
        .max_by_key(|(len, _, _)| *len)?;
    Some(mount.host.as_ref()?.join(rest.trim_start_matches('/')))
}

/// Every host file under `dir` that the container can read, through any mount.
fn visible_files(mounts: &[Mount], dir: &Path) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|file| {
            mounts.iter().any(|m| {
                let Some(host) = &m.host else { return false };
                let Ok(rest) = file.strip_prefix(host) else {
                    return false;
                };
                let container = if rest.as_os_str().is_empty() {
                    m.container.clone()
                } else {
                    format!("{}/{}", m.container, rest.display())
                };
                host_path(mounts, &container).as_deref() == Some(file.as_path())
            })
        })
        .collect()
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The value following `flag` in a command line.
fn flag_value(command: &[String], flag: &str) -> String {
    let at = command
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {command:?}"));
    command[at + 1].clone()
}

/// Every `filename:` in an Envoy config (certificates and keys).
fn envoy_filenames(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                match (k.as_str(), v.as_str()) {
                    (Some("filename"), Some(f)) => out.push(f.to_owned()),
                    _ => envoy_filenames(v, out),
                }
            }
        }
        Value::Sequence(s) => s.iter().for_each(|v| envoy_filenames(v, out)),
        _ => {}
    }
}

/// An image reference pinned to a release: a tag, and not a moving one.
fn assert_pinned(image: &str) {
    let tag = image
        .rsplit_once(':')
        .map(|(_, t)| t)
        .filter(|t| !t.contains('/'))
        .unwrap_or_else(|| panic!("image {image} has no tag"));
    assert!(
        tag != "latest" && !tag.ends_with("-latest"),
        "image {image} is not pinned to a release"
    );
}

#[test]
fn compose_file_names_only_existing_files_and_runs_the_tested_envoy_config() {
    let pki = DevPki::generate();
    let compose = yaml_file("docker-compose.yml");
    let services = compose["services"].as_mapping().expect("services");
    let names: Vec<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    for required in ["envoy", "service-auth", "app", "otel-collector"] {
        assert!(names.contains(&required), "no {required} service");
    }

    for (name, service) in services {
        let name = name.as_str().unwrap();
        compose_mounts(name, service, &pki.dir);
        assert_pinned(service["image"].as_str().expect("image"));
        if let Some(build) = service.get("build") {
            let (context, dockerfile) = match build {
                Value::String(c) => (c.clone(), "Dockerfile".to_owned()),
                b => (
                    b["context"].as_str().unwrap_or(".").to_owned(),
                    b["dockerfile"].as_str().unwrap_or("Dockerfile").to_owned(),
                ),
            };
            assert_eq!(
                repo().join(&context).canonicalize().unwrap(),
                repo().canonicalize().unwrap(),
                "{name}: the build context is not the repository"
            );
            assert_eq!(dockerfile, "Dockerfile");
        }
        if let Some(mode) = service["network_mode"].as_str() {
            let target = mode.strip_prefix("service:").expect("network_mode");
            assert!(names.contains(&target), "{name}: no service {target}");
        }
        for dependency in service["depends_on"].as_sequence().into_iter().flatten() {
            let dependency = dependency.as_str().unwrap();
            assert!(
                names.contains(&dependency),
                "{name}: no service {dependency}"
            );
        }
    }

    // Envoy runs envoy/envoy.yaml itself, with every certificate it names.
    let envoy = &compose["services"]["envoy"];
    let mounts = compose_mounts("envoy", envoy, &pki.dir);
    let config = flag_value(&strings(&envoy["command"]), "-c");
    assert_eq!(
        host_path(&mounts, &config),
        Some(repo().join("envoy/envoy.yaml")),
        "compose's Envoy does not run envoy/envoy.yaml"
    );
    let workdir = envoy["working_dir"].as_str().expect("envoy working_dir");
    let mut files = Vec::new();
    envoy_filenames(&yaml_file("envoy/envoy.yaml"), &mut files);
    assert!(!files.is_empty());
    for file in files {
        let container = format!("{workdir}/{file}");
        let host = host_path(&mounts, &container)
            .unwrap_or_else(|| panic!("Envoy's {container} is not mounted"));
        assert!(host.is_file(), "Envoy's {container} is {}", host.display());
    }

    // service-auth shares Envoy's loopback and runs the generated config.
    let sidecar = &compose["services"]["service-auth"];
    assert_eq!(sidecar["network_mode"].as_str(), Some("service:envoy"));
    assert_eq!(
        compose["services"]["app"]["network_mode"].as_str(),
        Some("service:envoy")
    );
    let mounts = compose_mounts("service-auth", sidecar, &pki.dir);
    let config = flag_value(&strings(&sidecar["command"]), "--config");
    assert_eq!(
        host_path(&mounts, &config),
        Some(pki.dir.join("service-auth.yaml"))
    );
    let generated: StaticConfig = parse_yaml(
        Path::new("service-auth.yaml"),
        &pki.read("service-auth.yaml"),
    )
    .unwrap();
    assert_eq!(generated.listen.grpc.to_string(), "127.0.0.1:9191");
    let endpoint = generated.telemetry.otlp.and_then(|o| o.endpoint).unwrap();
    assert_eq!(endpoint, "http://otel-collector:4317");
}

#[test]
fn compose_mounts_only_what_each_container_needs() {
    let pki = DevPki::generate();
    let compose = yaml_file("docker-compose.yml");
    let relative = |files: Vec<PathBuf>| -> Vec<String> {
        files
            .iter()
            .map(|f| f.strip_prefix(&pki.dir).unwrap().display().to_string())
            .collect()
    };

    // The sidecar: its config, the registry and everything the registry and
    // an uncommented listen.tls name, its signing key and its own TLS key --
    // and no other private key.
    let sidecar = &compose["services"]["service-auth"];
    let mounts = compose_mounts("service-auth", sidecar, &pki.dir);
    let seen = relative(visible_files(&mounts, &pki.dir));
    for needed in [
        "service-auth.yaml",
        "registry.yaml",
        "secrets/jwt-signing.key",
        "certs/ca.crt",
        "certs/hop-ca.crt",
        "sidecar/sidecar.crt",
        "sidecar/sidecar.key",
    ] {
        assert!(
            seen.iter().any(|s| s == needed),
            "the sidecar cannot read {needed}: {seen:?}"
        );
    }
    let own_keys = ["secrets/jwt-signing.key", "sidecar/sidecar.key"];
    for file in &seen {
        assert!(
            !file.ends_with(".key") || own_keys.contains(&file.as_str()),
            "the sidecar container can read {file}"
        );
    }
    // The registry's directory is mounted as a directory (hot reload
    // survives editors that save by renaming), not the file alone.
    assert!(
        mounts
            .iter()
            .any(|m| m.host.as_deref() == Some(pki.dir.as_path())),
        "the sidecar should mount the dev-pki directory, not single files"
    );

    // Envoy: certs/ only; never the CA keys or the clients' keys.
    let envoy = &compose["services"]["envoy"];
    let mounts = compose_mounts("envoy", envoy, &pki.dir);
    for file in relative(visible_files(&mounts, &pki.dir)) {
        assert!(file.starts_with("certs/"), "Envoy can read {file}");
    }

    // Nothing else sees dev-pki at all.
    for (name, service) in compose["services"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        if name == "envoy" || name == "service-auth" {
            continue;
        }
        let mounts = compose_mounts(name, service, &pki.dir);
        assert!(
            visible_files(&mounts, &pki.dir).is_empty(),
            "{name} sees dev-pki"
        );
    }
}

#[test]
fn compose_publishes_dashboards_on_loopback_only() {
    let compose = yaml_file("docker-compose.yml");
    for (name, service) in compose["services"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        for port in strings(&service["ports"]) {
            // Envoy's mTLS listener is the demo's entrance; anything else
            // (Grafana, Prometheus) answers without credentials.
            if name == "envoy" {
                continue;
            }
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name} publishes {port} on every interface"
            );
        }
    }
    for name in ["grafana", "prometheus"] {
        assert!(
            !strings(&compose["services"][name]["ports"]).is_empty(),
            "{name} is not published at all"
        );
    }
}

// ---------------------------------------------------------------------------
// The Dockerfile and .dockerignore
// ---------------------------------------------------------------------------

/// One `COPY` from the build context: sources and destination, as written.
struct Copy {
    sources: Vec<String>,
    dest: String,
}

/// The build stage of the Dockerfile: its WORKDIR and its COPY lines.
/// Only what this parser understands is allowed: single-line, shell-form
/// `COPY src... dest` without flags.
fn build_stage(dockerfile: &str) -> (String, Vec<Copy>) {
    let mut workdir = "/".to_owned();
    let mut copies = Vec::new();
    let mut stages = 0;
    for line in dockerfile.lines().map(str::trim) {
        if line.starts_with("FROM ") {
            stages += 1;
        }
        if stages != 1 {
            continue;
        }
        if let Some(dir) = line.strip_prefix("WORKDIR ") {
            workdir = dir.trim().to_owned();
        }
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        assert!(!args.ends_with('\\'), "a COPY line continues: {line}");
        assert!(
            !args.starts_with('['),
            "a COPY line is not in shell form: {line}"
        );
        assert!(!args.starts_with("--"), "a COPY line has flags: {line}");
        let mut args: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
        assert!(args.len() >= 2, "{line}");
        let dest = args.pop().unwrap();
        for source in &args {
            assert!(
                !source.contains(['*', '?', '[']) && !source.contains(".."),
                "a COPY source this test cannot reproduce: {line}"
            );
        }
        copies.push(Copy {
            sources: args,
            dest,
        });
    }
    assert!(!copies.is_empty(), "the build stage copies nothing");
    (workdir, copies)
}

/// `.dockerignore`: ordered patterns, `!` re-including; the last match wins,
/// and a pattern that matches a directory matches everything in it.
struct DockerIgnore {
    rules: Vec<(bool, Vec<String>)>,
}

impl DockerIgnore {
    fn parse(text: &str) -> Self {
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (include, pattern) = match l.strip_prefix('!') {
                    Some(p) => (true, p),
                    None => (false, l),
                };
                assert!(!pattern.contains("**"), "unsupported pattern {l}");
                let parts = pattern
                    .trim_matches('/')
                    .split('/')
                    .filter(|p| !p.is_empty() && *p != ".")
                    .map(str::to_owned)
                    .collect();
                (include, parts)
            })
            .collect();
        DockerIgnore { rules }
    }

    /// Whether `relative` (a path in the context) reaches the build.
    fn admits(&self, relative: &Path) -> bool {
        let parts: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let mut admitted = true;
        for (include, pattern) in &self.rules {
            let matches =
                pattern.len() <= parts.len() && pattern.iter().zip(&parts).all(|(p, s)| glob(p, s));
            if matches {
                admitted = *include;
            }
        }
        admitted
    }

    /// Whether a directory some pattern excludes may still hold admitted files.
    fn may_admit_below(&self, relative: &Path) -> bool {
        let parts: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        self.rules.iter().any(|(include, pattern)| {
            *include
                && pattern.len() > parts.len()
                && pattern.iter().zip(&parts).all(|(p, s)| glob(p, s))
        })
    }
}

/// One path component against a pattern with `*` and `?`.
fn glob(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// Every context file `.dockerignore` lets through (relative paths).
fn admitted_files(context: &Path, ignore: &DockerIgnore, relative: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(context.join(relative)).unwrap() {
        let entry = entry.unwrap();
        let rel = relative.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if ignore.admits(&rel) || ignore.may_admit_below(&rel) {
                out.extend(admitted_files(context, ignore, &rel));
            }
        } else if ignore.admits(&rel) {
            out.push(rel);
        }
    }
    out.sort();
    out
}

fn dockerfile() -> (String, Vec<Copy>, DockerIgnore) {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    let (workdir, copies) = build_stage(&text);
    (workdir, copies, DockerIgnore::parse(&ignore))
}

/// Where each admitted context file lands in the build stage, relative to
/// its WORKDIR (Docker: a directory source copies its contents into dest).
fn build_stage_files(
    workdir: &str,
    copies: &[Copy],
    ignore: &DockerIgnore,
) -> Vec<(PathBuf, PathBuf)> {
    let admitted = admitted_files(&repo(), ignore, Path::new(""));
    let mut out = Vec::new();
    for copy in copies {
        let dest = copy.dest.strip_prefix(workdir).unwrap_or(&copy.dest);
        let dest = Path::new(dest.trim_start_matches("./").trim_start_matches('/'));
        let into_dir = copy.dest.ends_with('/') || copy.sources.len() > 1;
        for source in &copy.sources {
            let source = Path::new(source.trim_start_matches("./").trim_end_matches('/'));
            assert!(
                repo().join(source).exists(),
                "the Dockerfile copies missing {}",
                source.display()
            );
            let files: Vec<&PathBuf> = admitted.iter().filter(|f| f.starts_with(source)).collect();
            assert!(
                !files.is_empty(),
                ".dockerignore excludes {}, which the Dockerfile copies",
                source.display()
            );
            for file in files {
                let target = if repo().join(source).is_dir() {
                    dest.join(file.strip_prefix(source).unwrap())
                } else if into_dir {
                    dest.join(source.file_name().unwrap())
                } else {
                    dest.to_path_buf()
                };
                out.push((file.clone(), target));
            }
        }
    }
    out
}

/// The arguments of the build stage's `cargo build` (one line).
fn dockerfile_cargo_build_args(dockerfile: &str) -> Vec<String> {
    let line = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("cargo build "))
        .expect("no `cargo build` in the Dockerfile");
    let line = line.split("&&").next().unwrap().trim_end_matches('\\');
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn dockerfile_build_stage_has_everything_cargo_reads() {
    let (workdir, copies, ignore) = dockerfile();
    let build = tempfile::tempdir().unwrap();
    for (source, target) in build_stage_files(&workdir, &copies, &ignore) {
        let target = build.path().join(target);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(repo().join(&source), &target).unwrap();
    }
    // The Dockerfile's own `cargo build`, offline, asked for a binary that
    // does not exist: cargo parses the manifest (every declared bench, test
    // and example must be there), resolves against Cargo.lock (`--locked`),
    // and only then stops, at target selection, before compiling anything.
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut args = dockerfile_cargo_build_args(&text);
    let bin = args
        .iter()
        .position(|a| a == "--bin")
        .expect("cargo build --bin");
    let binary = std::mem::replace(&mut args[bin + 1], "docker-build-stage-probe".into());
    assert!(
        args.contains(&"--locked".to_owned()),
        "the image must build --locked"
    );
    let out = Command::new(env!("CARGO"))
        .current_dir(build.path())
        .arg("build")
        .args(&args)
        .arg("--offline")
        .arg("--target-dir")
        .arg(build.path().join("target"))
        .stdin(Stdio::null())
        .output()
        .expect("run cargo build");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no bin target named `docker-build-stage-probe`"),
        "cargo cannot read the manifest in the Docker build stage:\n{stderr}"
    );
    assert!(
        stderr.lines().any(|l| l.trim() == binary),
        "the build stage has no `{binary}` binary to build:\n{stderr}"
    );
    assert!(
        !build.path().join("target").exists(),
        "cargo started building"
    );
}

#[test]
fn dockerignore_admits_exactly_what_the_dockerfile_copies() {
    let (workdir, copies, ignore) = dockerfile();
    let copied: Vec<PathBuf> = build_stage_files(&workdir, &copies, &ignore)
        .into_iter()
        .map(|(source, _)| source)
        .collect();
    let admitted = admitted_files(&repo(), &ignore, Path::new(""));
    let extra: Vec<&PathBuf> = admitted.iter().filter(|f| !copied.contains(f)).collect();
    assert!(
        extra.is_empty(),
        "in the build context but never copied: {extra:?}"
    );
    // Generated keys and build output never reach the context.
    for never in [
        "demo-pki/ca/ca.key",
        "target/debug",
        "config/secrets",
        ".git/HEAD",
    ] {
        assert!(
            !ignore.admits(Path::new(never)),
            ".dockerignore admits {never}"
        );
    }
}

#[test]
fn dockerfile_health_checks_with_the_binary() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(text.contains("HEALTHCHECK"));
    assert!(
        text.contains("\"health\""),
        "HEALTHCHECK must use `service-auth health`"
    );
}

#[test]
fn observability_configs_agree_with_compose_and_the_spec_metrics() {
    let compose = yaml_file("docker-compose.yml");
    let collector = yaml_file("config/observability/otel-collector.yaml");
    let exporter = collector["exporters"]["prometheus"]["endpoint"]
        .as_str()
        .unwrap();
    let scrape = yaml_file("config/observability/prometheus.yml");
    let target = scrape["scrape_configs"][0]["static_configs"][0]["targets"][0]
        .as_str()
        .unwrap();
    let (host, port) = target.split_once(':').unwrap();
    assert!(compose["services"].get(host).is_some());
    assert!(exporter.ends_with(&format!(":{port}")));
    assert!(
        collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
            .as_str()
            .unwrap()
            .ends_with(":4317")
    );

    // Every SPEC instrument has a panel, under its Prometheus name.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            repo().join("config/observability/grafana/dashboards/service-auth.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    for metric in [
        "service_auth_checks_total",
        "service_auth_check_duration_seconds_bucket",
        "service_auth_tokens_issued_total",
        "service_auth_tokens_verified_total",
        "service_auth_security_alerts_total",
        "service_auth_registry_reloads_total",
        "service_auth_registry_services",
        "service_auth_credentials_expiry_seconds",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no panel for {metric}"
        );
    }
}

// ---------------------------------------------------------------------------
// Kubernetes example
// ---------------------------------------------------------------------------

fn kubernetes_docs() -> (String, Vec<Value>) {
    let text = std::fs::read_to_string(repo().join("config/kubernetes/service-auth.yaml")).unwrap();
    let docs = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("Kubernetes YAML parses"))
        .filter(|d| !d.is_null())
        .collect();
    (text, docs)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn kubernetes_example_parses_and_its_registry_and_mounts_agree() {
    let (text, docs) = kubernetes_docs();
    for kind in ["ConfigMap", "Deployment", "Service", "NetworkPolicy"] {
        assert!(
            docs.iter().any(|d| d["kind"].as_str() == Some(kind)),
            "no {kind}"
        );
    }
    let deployment = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Deployment"))
        .unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().unwrap();
    let container = |name: &str| {
        containers
            .iter()
            .find(|c| c["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no container {name}"))
    };
    let volume = |name: &str| {
        pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    container("app");

    // Envoy runs envoy/envoy.yaml from a ConfigMap made from that very file.
    let envoy = container("envoy");
    let config = flag_value(&strings(&envoy["command"]), "-c");
    let (dir, file) = config.rsplit_once('/').unwrap();
    let mount = envoy["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(dir))
        .expect("Envoy config mount");
    let configmap = volume(mount["name"].as_str().unwrap())["configMap"]["name"]
        .as_str()
        .unwrap();
    assert!(
        text.contains(&format!(
            "kubectl create configmap {configmap} --from-file={file}=envoy/envoy.yaml"
        )),
        "the Envoy ConfigMap is not documented as made from envoy/envoy.yaml"
    );

    // service-auth: config and registry from ConfigMaps, probes via `health`.
    let sidecar = container("service-auth");
    let env = sidecar["env"].as_sequence().unwrap();
    let config_path = env
        .iter()
        .find(|e| e["name"].as_str() == Some("SERVICE_AUTH_CONFIG"))
        .and_then(|e| e["value"].as_str())
        .expect("SERVICE_AUTH_CONFIG");
    let mounts: Vec<(String, &Value)> = sidecar["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            assert!(m.get("subPath").is_none(), "subPath mounts never update");
            (
                m["mountPath"].as_str().unwrap().to_owned(),
                volume(m["name"].as_str().unwrap()),
            )
        })
        .collect();
    // The ConfigMap or Secret key behind a path inside the container.
    let source = |path: &str| -> (String, String, String) {
        let (dir, file) = path.rsplit_once('/').unwrap();
        let (_, volume) = mounts
            .iter()
            .find(|(m, _)| m == dir)
            .unwrap_or_else(|| panic!("{path} is not in a mounted volume"));
        if let Some(name) = volume["configMap"]["name"].as_str() {
            ("ConfigMap".into(), name.into(), file.into())
        } else {
            let name = volume["secret"]["secretName"]
                .as_str()
                .expect("volume kind");
            ("Secret".into(), name.into(), file.into())
        }
    };
    let (kind, name, key) = source(config_path);
    assert_eq!(kind, "ConfigMap");
    let static_config: StaticConfig = parse_yaml(
        Path::new(&key),
        find(&docs, &kind, &name)["data"][key.as_str()]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        static_config.listen.grpc.to_string(),
        "127.0.0.1:9191",
        "Check must not be reachable from outside the pod"
    );

    let registry_path = static_config.registry.to_str().unwrap();
    let (kind, name, key) = source(registry_path);
    assert_eq!(kind, "ConfigMap", "the registry is a ConfigMap");
    let registry_text = find(&docs, &kind, &name)["data"][key.as_str()]
        .as_str()
        .unwrap()
        .to_owned();
    let registry: RegistryFile = parse_yaml(Path::new(&key), &registry_text).unwrap();

    // Every file the registry names is in a Secret mount; with dev-pki files
    // in their place, the registry is valid as a whole.
    let pki = DevPki::generate();
    let mut relocated = registry_text.clone();
    let mut named: Vec<String> = registry
        .token
        .keys
        .iter()
        .filter_map(|k| k.secret_file.as_ref())
        .map(|p| p.to_str().unwrap().to_owned())
        .collect();
    named.extend(
        registry
            .services
            .iter()
            .filter_map(|s| s.ca_file.as_ref())
            .map(|p| p.to_str().unwrap().to_owned()),
    );
    assert!(!named.is_empty());
    for path in named {
        let (kind, _, key) = source(&path);
        assert_eq!(kind, "Secret", "{path} should come from a Secret");
        let stand_in = match key.as_str() {
            "jwt-signing.key" => pki.dir.join("secrets/jwt-signing.key"),
            "ca.crt" => pki.dir.join("certs/ca.crt"),
            other => panic!("unexpected file {other}"),
        };
        relocated = relocated.replace(&path, stand_in.to_str().unwrap());
    }
    let file = pki.dir.join("k8s-registry.yaml");
    std::fs::write(&file, relocated).unwrap();
    if let Err(errors) = Registry::load(&file) {
        panic!(
            "the Kubernetes registry is invalid: {:?}",
            errors.iter().map(|e| e.to_string()).collect::<Vec<_>>()
        );
    }

    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let command = strings(&sidecar[probe]["exec"]["command"]);
        assert_eq!(
            command.get(1).map(String::as_str),
            Some("health"),
            "{probe}"
        );
        assert_eq!(flag_value(&command, "--addr"), "127.0.0.1:9191", "{probe}");
    }
    for (what, value) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "cpu"),
        ("limits", "memory"),
    ] {
        assert!(
            sidecar["resources"][what][value].as_str().is_some(),
            "no {what}.{value}"
        );
    }
}
