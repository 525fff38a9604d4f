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

use common::procs::{Echo, Envoy, Sidecar, envoy_binary};
use common::{Fixture, ListenAddr, Svc, tcp0, unix_now};
use serde::Deserialize;
use serde_yaml::Value;
use service_auth::config::{RegistryFile, StaticConfig, parse_yaml};
use service_auth::registry::Registry;
use service_auth::token;

/// Where the Compose file and the README expect `dev-pki` output.
const DEMO_PKI: &str = "demo-pki";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_service-auth"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run service-auth")
}

/// `dev-pki` output in a temp dir, with the API keys it printed.
struct DevPki {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    stdout: String,
}

impl DevPki {
    fn generate() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(DEMO_PKI);
        let out = run(bin().arg("dev-pki").arg(&dir));
        assert!(
            out.status.success(),
            "dev-pki failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        DevPki {
            _tmp: tmp,
            dir,
            stdout: String::from_utf8(out.stdout).unwrap(),
        }
    }

    /// The key printed as `export <SERVICE>_API_KEY=<key>  # ...`.
    fn api_key(&self, service: &str) -> String {
        let prefix = format!("export {}_API_KEY=", service.to_uppercase());
        let line = self
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in dev-pki output:\n{}", self.stdout));
        line.split_whitespace().next().unwrap().to_owned()
    }

    fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.dir.join(relative))
            .unwrap_or_else(|e| panic!("dev-pki did not write {relative}: {e}"))
    }
}

// ---------------------------------------------------------------------------
// dev-pki
// ---------------------------------------------------------------------------

#[test]
fn dev_pki_keeps_secrets_private_and_refuses_to_overwrite() {
    let pki = DevPki::generate();
    for secret in [
        "ca/ca.key",
        "certs/envoy.key",
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

    // The generated config, listening on a kernel-chosen port instead of
    // 9191 (its relative paths still resolve against the same directory).
    let generated = pki.dir.join("service-auth.yaml");
    let mut config: StaticConfig = parse_yaml(&generated, &pki.read("service-auth.yaml")).unwrap();
    config.listen.grpc = tcp0();
    let config_path = pki.dir.join("service-auth.test.yaml");
    std::fs::write(&config_path, serde_yaml::to_string(&config).unwrap()).unwrap();
    let sidecar = Sidecar::start(&config_path).await;

    let echo = Echo::start().await;
    // Envoy's working directory is the dev-pki output: certs/ as generated.
    let envoy = Envoy::shipped(&pki.dir, sidecar.addr(), echo.addr).await;
    let base = envoy.base_url();
    let api = client(&pki, "api_service");
    let billing = client(&pki, "billing");

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

/// An mTLS client with a generated client certificate, trusting the dev CA.
fn client(pki: &DevPki, service: &str) -> reqwest::Client {
    let identity = format!(
        "{}{}",
        pki.read(&format!("clients/{service}.crt")),
        pki.read(&format!("clients/{service}.key"))
    );
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(
            reqwest::Certificate::from_pem(pki.read("certs/ca.crt").as_bytes()).unwrap(),
        )
        .identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap())
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// health
// ---------------------------------------------------------------------------

#[tokio::test]
async fn health_exits_zero_only_when_serving_over_tcp_and_unix() {
    let fixture = Fixture::new(&[Svc::new("a", "spiffe://t/a", "key-a-0123456789")]);
    let sidecar = Sidecar::start(&fixture.write_config(&fixture.static_config(tcp0()))).await;
    let addr = sidecar.addr();
    let out = run(bin().arg("health").arg("--addr").arg(addr.to_string()));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
    drop(sidecar);
    let out = run(bin().arg("health").arg("--addr").arg(addr.to_string()));
    assert!(!out.status.success(), "healthy with nothing listening");

    // Over a Unix socket, with the address taken from the config (as the
    // Docker HEALTHCHECK does through SERVICE_AUTH_CONFIG).
    let socket = fixture.path().join("authz.sock");
    let config = fixture.write_config(&fixture.static_config(ListenAddr::Unix(socket.clone())));
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
// docker-compose.yml and the Dockerfile
// ---------------------------------------------------------------------------

fn yaml_file(relative: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(relative)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// A bind mount: the file or directory on the host, where the container sees it.
struct Mount {
    host: PathBuf,
    container: String,
}

/// The bind mounts of a Compose service, each checked to exist. Sources under
/// `./demo-pki/` are looked up in `pki` (they are generated, never committed).
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
                host,
                container: target,
            }
        })
        .collect()
}

/// The host file behind `container_path`, through the longest matching mount.
fn host_path(mounts: &[Mount], container_path: &str) -> Option<PathBuf> {
    mounts
        .iter()
        .filter_map(|m| {
            let rest = container_path.strip_prefix(&m.container)?;
            (rest.is_empty() || rest.starts_with('/'))
                .then(|| (m.container.len(), m.host.join(rest.trim_start_matches('/'))))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, path)| path)
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
        if let Some(build) = service.get("build") {
            let (context, dockerfile) = match build {
                Value::String(c) => (c.clone(), "Dockerfile".to_owned()),
                b => (
                    b["context"].as_str().unwrap_or(".").to_owned(),
                    b["dockerfile"].as_str().unwrap_or("Dockerfile").to_owned(),
                ),
            };
            let context = repo().join(context);
            assert!(context.is_dir(), "{name}: no build context");
            check_dockerfile(&context, &context.join(dockerfile));
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

/// The Dockerfile's build-context COPY sources exist and are not excluded.
fn check_dockerfile(context: &Path, dockerfile: &Path) {
    let text = std::fs::read_to_string(dockerfile).expect("Dockerfile");
    let ignore = std::fs::read_to_string(context.join(".dockerignore")).unwrap_or_default();
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    let mut copies = 0;
    for line in text.lines().map(str::trim) {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        if args.contains("--from=") {
            continue;
        }
        let args: Vec<&str> = args.split_whitespace().collect();
        for source in &args[..args.len() - 1] {
            copies += 1;
            assert!(
                context.join(source).exists(),
                "Dockerfile copies missing {source}"
            );
            assert!(
                allowed.contains(&source.trim_end_matches('/')),
                ".dockerignore excludes {source}, which the Dockerfile copies"
            );
        }
    }
    assert!(copies > 0, "Dockerfile copies nothing from the context");
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

    // Every instrument in docs/operations.md has a panel, under its Prometheus name.
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
        "service_auth_throttle_tracked",
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

    let registry_path = static_config.registry.main.to_str().unwrap();
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
    let stand_in = |path: &mut PathBuf| {
        let (kind, _, key) = source(path.to_str().unwrap());
        assert_eq!(
            kind,
            "Secret",
            "{} should come from a Secret",
            path.display()
        );
        *path = match key.as_str() {
            "jwt-signing.key" => pki.dir.join("secrets/jwt-signing.key"),
            "ca.crt" => pki.dir.join("certs/ca.crt"),
            other => panic!("unexpected file {other}"),
        };
    };
    let mut relocated = registry.clone();
    let secret_files = relocated
        .token
        .keys
        .iter_mut()
        .filter_map(|k| k.secret_file.as_mut());
    let ca_files = relocated
        .services
        .iter_mut()
        .filter_map(|s| s.ca_file.as_mut());
    let mut named = 0;
    for path in secret_files.chain(ca_files) {
        stand_in(path);
        named += 1;
    }
    assert!(named > 0);
    let file = pki.dir.join("k8s-registry.yaml");
    std::fs::write(&file, serde_yaml::to_string(&relocated).unwrap()).unwrap();
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
