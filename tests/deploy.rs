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
use common::procs::{Echo, Envoy, Sidecar, envoy_binary};
use common::{Fixture, Svc, tcp0, unix_now};
use serde::Deserialize;
use serde_yaml::Value;
use service_auth::config::{ListenAddr, RegistryFile, StaticConfig, parse_yaml};
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
    let mode = |file: &str| {
        std::fs::metadata(pki.dir.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    for secret in [
        "ca/ca.key",
        "ca/intermediate.key",
        "ca/partner-ca.key",
        "ca/partner-intermediate.key",
        "ca/hop-ca.key",
        "certs/envoy.key",
        "certs/envoy-client.key",
        "sidecar/sidecar.key",
        "clients/api_service.key",
        "clients/billing.key",
        "clients/reports.key",
        "secrets/jwt-signing.key",
        "keys/ed25519.pem",
    ] {
        assert_eq!(mode(secret), 0o600, "{secret} has mode {:o}", mode(secret));
    }
    for public in [
        "certs/ca.crt",
        "certs/mesh-bundle.pem",
        "certs/partner-bundle.pem",
        "certs/envoy.crt",
        "clients/billing.crt",
        "clients/reports.crt",
        "keys/ed25519.pub",
        "registry.yaml",
        "service-auth.yaml",
    ] {
        assert_eq!(mode(public), 0o644, "{public} has mode {:o}", mode(public));
    }
    assert!(pki.read("secrets/jwt-signing.key").trim_end().len() >= 32);

    // Only hashes reach the registry, and it is a valid one.
    let registry = pki.read("registry.yaml");
    for service in ["api_service", "billing", "reports"] {
        let key = pki.api_key(service);
        assert!(key.len() >= 43, "{service} key too short");
        assert!(!registry.contains(&key), "plaintext key in registry.yaml");
        assert!(registry.contains(&common::sha256_hex(&key)));
    }
    // check-config: ok, every service vouched for by the trust domain, and
    // no warning (the secret is dev-pki's own, not the bundled one).
    let out = run(bin()
        .arg("check-config")
        .arg("--config")
        .arg(pki.dir.join("service-auth.yaml")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ok: "),
        "{out:?}"
    );
    assert!(!stderr.contains("warning"), "{stderr}");
    for service in ["api_service", "billing"] {
        assert!(
            stderr.contains(&format!("service {service}: trust domain mesh.local")),
            "{stderr}"
        );
    }

    // A second run would invalidate what was handed out: refused, untouched.
    let before = pki.read("certs/ca.crt");
    let out = run(bin().arg("dev-pki").arg(&pki.dir));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(pki.read("certs/ca.crt"), before);

    let out = run(bin().arg("dev-pki").arg("--force").arg(&pki.dir));
    assert!(out.status.success());
    assert_ne!(pki.read("certs/ca.crt"), before);
    assert_eq!(mode("certs/envoy.key"), 0o600);
    assert_eq!(mode("keys/ed25519.pem"), 0o600);
}

/// A DER certificate, parsed.
fn parse_cert(der: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der).unwrap().1
}

#[test]
fn dev_pki_workload_certificates_chain_root_intermediate_leaf() {
    use service_auth::trust::Bundle;
    let pki = DevPki::generate();

    // The roots: one self-signed CA per trust domain, what Envoy and curl
    // trust (a federated mesh: Envoy accepts either domain's workloads).
    let root_der = pki.certificates("certs/ca.crt");
    assert_eq!(root_der.len(), 2, "certs/ca.crt holds the two roots");
    for der in &root_der {
        let root = parse_cert(der);
        assert!(root.is_ca());
        assert_eq!(root.issuer().as_raw(), root.subject().as_raw());
        root.verify_signature(None)
            .expect("each root is self-signed");
    }
    let root = parse_cert(&root_der[0]);
    assert_eq!(
        pki.certificates("certs/partner-bundle.pem")[0],
        root_der[1],
        "the partner bundle starts with the second root"
    );

    // The bundle: the root, then the intermediate it signed, which may sign
    // only leaves.
    let bundle_der = pki.certificates("certs/mesh-bundle.pem");
    assert_eq!(bundle_der.len(), 2);
    assert_eq!(bundle_der[0], root_der[0]);
    let intermediate = parse_cert(&bundle_der[1]);
    assert!(intermediate.is_ca());
    assert_eq!(intermediate.issuer().as_raw(), root.subject().as_raw());
    intermediate
        .verify_signature(Some(root.public_key()))
        .expect("the root signed the intermediate");
    let constraints = intermediate.basic_constraints().unwrap().unwrap().value;
    assert_eq!(constraints.path_len_constraint, Some(0));

    // Every workload certificate: the leaf, signed by the intermediate, then
    // the intermediate (what a peer presents to an Envoy that trusts the root).
    let bundle = Bundle::from_pem(pki.read("certs/mesh-bundle.pem").as_bytes()).unwrap();
    let partner = Bundle::from_pem(pki.read("certs/partner-bundle.pem").as_bytes()).unwrap();
    let root_only = Bundle::from_pem(pki.read("certs/ca.crt").as_bytes()).unwrap();
    for file in [
        "clients/api_service.crt",
        "clients/billing.crt",
        "certs/envoy.crt",
    ] {
        let chain = pki.certificates(file);
        assert_eq!(chain.len(), 2, "{file}: leaf, then intermediate");
        assert_eq!(chain[1], bundle_der[1], "{file}");
        let leaf = parse_cert(&chain[0]);
        assert!(!leaf.is_ca(), "{file}");
        assert_eq!(
            leaf.issuer().as_raw(),
            intermediate.subject().as_raw(),
            "{file}"
        );
        leaf.verify_signature(Some(intermediate.public_key()))
            .unwrap_or_else(|e| panic!("{file}: not signed by the intermediate: {e}"));
        if file.starts_with("clients/") {
            // The sidecar gets only the leaf: the trust domain's bundle
            // carries the intermediate, and the root alone vouches for nothing.
            assert!(bundle.verify(&chain[0], unix_now()).is_trusted(), "{file}");
            assert!(
                !root_only.verify(&chain[0], unix_now()).is_trusted(),
                "{file}"
            );
            assert!(
                !partner.verify(&chain[0], unix_now()).is_trusted(),
                "{file}: the partner domain's CAs do not vouch for mesh.local"
            );
        }
    }
    // The federated domain's workload chains to its own bundle only.
    let chain = pki.certificates("clients/reports.crt");
    assert_eq!(chain.len(), 2, "leaf, then the partner intermediate");
    assert!(partner.verify(&chain[0], unix_now()).is_trusted());
    assert!(!bundle.verify(&chain[0], unix_now()).is_trusted());
}

#[test]
fn dev_pki_registry_loads_with_its_trust_domain_and_publishes_an_ed25519_key() {
    let pki = DevPki::generate();
    let file: RegistryFile =
        parse_yaml(Path::new("registry.yaml"), &pki.read("registry.yaml")).unwrap();
    assert_eq!(
        file.trust_domains.get("mesh.local"),
        Some(&PathBuf::from("certs/mesh-bundle.pem"))
    );
    assert_eq!(
        file.trust_domains.get("partner.local"),
        Some(&PathBuf::from("certs/partner-bundle.pem"))
    );
    let registry = Registry::load(&pki.dir.join("registry.yaml"))
        .unwrap_or_else(|e| panic!("{:?}", e.iter().map(|e| e.to_string()).collect::<Vec<_>>()));
    assert!(registry.warnings().is_empty(), "{:?}", registry.warnings());
    let domains: Vec<(&str, Vec<&str>)> = registry
        .services()
        .iter()
        .map(|s| (s.id.as_str(), s.trust_domains()))
        .collect();
    assert_eq!(
        domains,
        [
            ("api_service", vec!["mesh.local"]),
            ("billing", vec!["mesh.local"]),
            ("reports", vec!["partner.local"]),
        ]
    );

    // HS256 signs; the Ed25519 key only verifies, and is what the JWKS holds.
    let [hs256, ed25519] = file.token.keys.as_slice() else {
        panic!("two token keys: {:?}", file.token.keys);
    };
    assert_eq!(
        hs256.secret_file.as_deref(),
        Some(Path::new("secrets/jwt-signing.key"))
    );
    assert!(!hs256.verify_only);
    assert_eq!(ed25519.algorithm, service_auth::keys::Algorithm::EdDsa);
    assert!(ed25519.verify_only);
    assert_eq!(
        ed25519.public_key_file.as_deref(),
        Some(Path::new("keys/ed25519.pub"))
    );
    let out = run(bin()
        .arg("jwks")
        .arg("--config")
        .arg(pki.dir.join("service-auth.yaml")));
    assert!(out.status.success(), "{out:?}");
    let jwks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{jwks}");
    assert_eq!(keys[0]["kid"].as_str(), Some(ed25519.kid.as_str()));
    assert_eq!(keys[0]["alg"], "EdDSA");

    // The pair matches: the public file is the private key's public half.
    let private = service_auth::keys::Key::load(
        "dev",
        service_auth::keys::Algorithm::EdDsa,
        service_auth::keys::KeySource::PrivateKeyPem(pki.read("keys/ed25519.pem").as_bytes()),
    )
    .unwrap();
    assert_eq!(
        private.public_key_pem().unwrap(),
        pki.read("keys/ed25519.pub")
    );
}

#[tokio::test]
async fn dev_pki_output_gives_an_allowed_call_through_real_envoy() {
    let pki = DevPki::generate();

    // The generated config, listening on a kernel-chosen port instead of
    // 9191 (its relative paths still resolve against the same directory).
    let mut config = pki.static_config();
    config.listen.grpc = tcp0();
    let sidecar = Sidecar::start(&pki.write_config(&config)).await;

    let echo = Echo::start().await;
    // Envoy's working directory is the dev-pki output: certs/ as generated.
    let envoy = Envoy::shipped(&pki.dir, sidecar.addr(), echo.addr).await;
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
    // Signed by the HS256 key; the Ed25519 key is published at the admin
    // listener (as the README's curl reads it), not used.
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::HS256);
    let Some(ListenAddr::Tcp(admin)) = sidecar.admin_addr() else {
        panic!("the generated config has no TCP admin listener");
    };
    let jwks: serde_json::Value = reqwest::get(format!("http://{admin}/.well-known/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        matches!(kids.as_slice(), [kid] if kid.starts_with("dev-ed25519-")),
        "{jwks}"
    );

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
    let generated = pki.static_config();
    assert_eq!(generated.listen.grpc.to_string(), "127.0.0.1:9191");
    let admin = generated.admin.expect("an admin listener for the JWKS");
    assert_eq!(admin.listen.to_string(), "127.0.0.1:9192");
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
        "keys/ed25519.pub",
        "keys/ed25519.pem",
        "certs/mesh-bundle.pem",
        "certs/partner-bundle.pem",
        "certs/hop-ca.crt",
        "sidecar/sidecar.crt",
        "sidecar/sidecar.key",
    ] {
        assert!(
            seen.iter().any(|s| s == needed),
            "the sidecar cannot read {needed}: {seen:?}"
        );
    }
    let own_keys = [
        "secrets/jwt-signing.key",
        "keys/ed25519.pem",
        "sidecar/sidecar.key",
    ];
    for file in &seen {
        let private = file.ends_with(".key") || pki.read(file).contains("PRIVATE KEY");
        assert!(
            !private || own_keys.contains(&file.as_str()),
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

fn kubernetes_docs() -> Vec<Value> {
    let text = std::fs::read_to_string(repo().join("config/kubernetes/service-auth.yaml")).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("Kubernetes YAML parses"))
        .filter(|d| !d.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The Deployment's pod spec.
fn pod_spec(docs: &[Value]) -> &Value {
    &docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Deployment"))
        .expect("a Deployment")["spec"]["template"]["spec"]
}

/// A container of the pod, regular or init.
fn pod_container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    ["containers", "initContainers"]
        .iter()
        .filter_map(|list| pod[*list].as_sequence())
        .flatten()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn pod_volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The volume a container mounts at `dir` exactly (never with subPath:
/// such mounts receive no ConfigMap or Secret updates).
fn volume_at<'a>(pod: &'a Value, container: &Value, dir: &str) -> &'a Value {
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(dir))
        .unwrap_or_else(|| panic!("{:?} mounts nothing at {dir}", container["name"].as_str()));
    assert!(
        mount.get("subPath").is_none(),
        "subPath mounts never update"
    );
    pod_volume(pod, mount["name"].as_str().unwrap())
}

/// (kind, name, key) of the ConfigMap or Secret entry behind `path`.
fn mounted_source(pod: &Value, container: &Value, path: &str) -> (String, String, String) {
    let (dir, file) = path.rsplit_once('/').unwrap();
    let volume = volume_at(pod, container, dir);
    if let Some(name) = volume["configMap"]["name"].as_str() {
        ("ConfigMap".into(), name.into(), file.into())
    } else {
        let name = volume["secret"]["secretName"]
            .as_str()
            .unwrap_or_else(|| panic!("{path} is neither in a ConfigMap nor a Secret"));
        ("Secret".into(), name.into(), file.into())
    }
}

/// The sidecar's static config, from its ConfigMap.
fn kubernetes_static_config(docs: &[Value]) -> StaticConfig {
    let pod = pod_spec(docs);
    let sidecar = pod_container(pod, "service-auth");
    let config_path = sidecar["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some("SERVICE_AUTH_CONFIG"))
        .and_then(|e| e["value"].as_str())
        .expect("SERVICE_AUTH_CONFIG");
    let (kind, name, key) = mounted_source(pod, sidecar, config_path);
    assert_eq!(kind, "ConfigMap");
    let text = find(docs, &kind, &name)["data"][key.as_str()]
        .as_str()
        .unwrap();
    parse_yaml(Path::new(&key), text).unwrap()
}

/// The socket the sidecar listens on, which Envoy's config must name.
fn kubernetes_socket(docs: &[Value]) -> PathBuf {
    match kubernetes_static_config(docs).listen.grpc {
        ListenAddr::Unix(path) => path,
        other => panic!("the sidecar listens on {other}: the app shares the pod's loopback"),
    }
}

#[test]
fn kubernetes_example_parses_and_its_registry_and_mounts_agree() {
    let docs = kubernetes_docs();
    for kind in ["ConfigMap", "Deployment", "Service", "NetworkPolicy"] {
        assert!(
            docs.iter().any(|d| d["kind"].as_str() == Some(kind)),
            "no {kind}"
        );
    }
    let pod = pod_spec(&docs);
    for name in ["app", "envoy", "service-auth"] {
        assert_pinned(pod_container(pod, name)["image"].as_str().expect("image"));
    }

    // Envoy's config and its SDS files are in the orders-envoy ConfigMap.
    let envoy = pod_container(pod, "envoy");
    let config = flag_value(&strings(&envoy["command"]), "-c");
    let (kind, name, key) = mounted_source(pod, envoy, &config);
    assert_eq!((kind.as_str(), key.as_str()), ("ConfigMap", "envoy.yaml"));
    assert!(find(&docs, "ConfigMap", &name)["data"]["envoy.yaml"].is_string());

    // The hop is a Unix socket in an emptyDir that only Envoy and the
    // sidecar mount: the app shares the pod's loopback, not that volume.
    let socket = kubernetes_socket(&docs);
    let socket_dir = socket.parent().unwrap().to_str().unwrap();
    let sidecar = pod_container(pod, "service-auth");
    let volume = volume_at(pod, sidecar, socket_dir);
    assert!(
        volume["emptyDir"].is_mapping(),
        "the socket is not in an emptyDir"
    );
    assert!(std::ptr::eq(volume, volume_at(pod, envoy, socket_dir)));
    let volume_name = volume["name"].as_str().unwrap();
    let mounted_by: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .filter_map(|list| pod[*list].as_sequence())
        .flatten()
        .filter(|c| {
            c["volumeMounts"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|m| m["name"].as_str() == Some(volume_name))
        })
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(mounted_by, vec!["envoy", "service-auth"]);

    // The registry is a ConfigMap; every file it names is mounted (the
    // signing key from a Secret, the public mesh bundle from a ConfigMap),
    // and with dev-pki files in their place, it is valid as a whole.
    let static_config = kubernetes_static_config(&docs);
    let (kind, name, key) =
        mounted_source(pod, sidecar, static_config.registry.main.to_str().unwrap());
    assert_eq!(kind, "ConfigMap", "the registry is a ConfigMap");
    let registry_text = find(&docs, &kind, &name)["data"][key.as_str()]
        .as_str()
        .unwrap()
        .to_owned();
    let registry: RegistryFile = parse_yaml(Path::new(&key), &registry_text).unwrap();
    let pki = DevPki::generate();
    let stand_in = |path: &mut PathBuf| {
        let (kind, _, key) = mounted_source(pod, sidecar, path.to_str().unwrap());
        let (expected_kind, generated) = match key.as_str() {
            "jwt-signing.key" => ("Secret", "secrets/jwt-signing.key"),
            "mesh-bundle.pem" => ("ConfigMap", "certs/mesh-bundle.pem"),
            other => panic!("unexpected file {other}"),
        };
        assert_eq!(kind, expected_kind, "where {} comes from", path.display());
        *path = pki.dir.join(generated);
    };
    let mut relocated = registry.clone();
    let secret_files = relocated
        .token
        .keys
        .iter_mut()
        .filter_map(|k| k.secret_file.as_mut());
    let bundles = relocated.trust_domains.values_mut();
    let mut named = Vec::new();
    for path in secret_files.chain(bundles) {
        stand_in(path);
        named.push(path.clone());
    }
    assert_eq!(
        named,
        [
            pki.dir.join("secrets/jwt-signing.key"),
            pki.dir.join("certs/mesh-bundle.pem")
        ]
    );
    assert!(
        relocated.services.iter().all(|s| s.ca_file.is_none()),
        "the trust domain's bundle vouches for every service"
    );
    let file = pki.dir.join("k8s-registry.yaml");
    std::fs::write(&file, serde_yaml::to_string(&relocated).unwrap()).unwrap();
    if let Err(errors) = Registry::load(&file) {
        panic!(
            "the Kubernetes registry is invalid: {:?}",
            errors.iter().map(|e| e.to_string()).collect::<Vec<_>>()
        );
    }
    // Envoy's private key never reaches the sidecar: no volume of its
    // comes from Envoy's TLS Secret.
    for mount in sidecar["volumeMounts"].as_sequence().unwrap() {
        let path = mount["mountPath"].as_str().unwrap();
        assert_ne!(
            volume_at(pod, sidecar, path)["secret"]["secretName"].as_str(),
            Some("orders-envoy-tls"),
            "the sidecar mounts Envoy's TLS Secret at {path}"
        );
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

#[test]
fn kubernetes_sidecar_is_native_and_its_probes_outlast_their_command() {
    let docs = kubernetes_docs();
    let pod = pod_spec(&docs);
    // A native sidecar: an init container that keeps running, so it serves
    // before Envoy starts (its startupProbe gates the pod) and outlives it.
    let sidecar = pod["initContainers"]
        .as_sequence()
        .expect("initContainers")
        .iter()
        .find(|c| c["name"].as_str() == Some("service-auth"))
        .expect("service-auth is not an init container");
    assert_eq!(sidecar["restartPolicy"].as_str(), Some("Always"));
    assert!(
        pod["containers"]
            .as_sequence()
            .unwrap()
            .iter()
            .all(|c| c["name"].as_str() != Some("service-auth"))
    );

    let socket = format!("unix:{}", kubernetes_socket(&docs).display());
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let command = strings(&sidecar[probe]["exec"]["command"]);
        assert_eq!(
            command.get(1).map(String::as_str),
            Some("health"),
            "{probe}"
        );
        assert_eq!(flag_value(&command, "--addr"), socket, "{probe}");
        let own = humantime::parse_duration(&flag_value(&command, "--timeout")).unwrap();
        // Kubernetes' default timeoutSeconds is 1.
        let limit = sidecar[probe]["timeoutSeconds"].as_u64().unwrap_or(1);
        assert!(
            Duration::from_secs(limit) > own,
            "{probe}: timeoutSeconds {limit} would kill `health --timeout {own:?}` mid-way"
        );
    }
}

#[test]
fn kubernetes_replicas_report_metrics_as_themselves() {
    let docs = kubernetes_docs();
    let sidecar = pod_container(pod_spec(&docs), "service-auth");
    let env = sidecar["env"].as_sequence().unwrap();
    let at = |name: &str| {
        env.iter()
            .position(|e| e["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let pod_name = &env[at("POD_NAME")];
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("metadata.name")
    );
    let attributes = env[at("OTEL_RESOURCE_ATTRIBUTES")]["value"]
        .as_str()
        .unwrap();
    assert!(
        attributes
            .split(',')
            .any(|kv| kv == "service.instance.id=$(POD_NAME)"),
        "{attributes}"
    );
    // $(VAR) expands only variables defined earlier in the list.
    assert!(at("POD_NAME") < at("OTEL_RESOURCE_ATTRIBUTES"));
}

#[test]
fn kubernetes_envoy_drains_before_it_is_stopped() {
    let docs = kubernetes_docs();
    let pod = pod_spec(&docs);
    let envoy = pod_container(pod, "envoy");
    let script = strings(&envoy["lifecycle"]["preStop"]["exec"]["command"]).join(" ");
    let config: Value = serde_yaml::from_str(
        find(&docs, "ConfigMap", "orders-envoy")["data"]["envoy.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let admin = &config["admin"]["address"]["socket_address"];
    let target = format!(
        "/dev/tcp/{}/{}",
        admin["address"].as_str().unwrap(),
        admin["port_value"].as_u64().unwrap()
    );
    assert!(
        script.contains(&target),
        "preStop does not talk to Envoy's admin: {script}"
    );
    assert!(script.contains("POST /drain_listeners"), "{script}");
    let sleep: u64 = script
        .split("sleep ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("preStop waits while the drain runs");
    let command = strings(&envoy["command"]);
    assert_eq!(flag_value(&command, "--drain-strategy"), "immediate");
    let drain: u64 = flag_value(&command, "--drain-time-s").parse().unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        drain <= sleep && sleep < grace,
        "drain {drain}s, sleep {sleep}s, grace {grace}s"
    );
}

/// Moves every absolute path the Envoy container mounts (and the socket
/// directory) under `root`: each mount path, whole, wherever it is a path
/// or a path's prefix.
fn rebase(text: &str, mount_paths: &[String], root: &Path) -> String {
    let mut out = text.to_owned();
    for m in mount_paths {
        let mut rebased = String::new();
        let mut rest = out.as_str();
        while let Some(at) = rest.find(m.as_str()) {
            let after = &rest[at + m.len()..];
            let whole = after.is_empty() || after.starts_with(['/', ' ', '}', '\n', '"', '\'']);
            rebased.push_str(&rest[..at]);
            if whole {
                rebased.push_str(&root.display().to_string());
            }
            rebased.push_str(m);
            rest = after;
        }
        rebased.push_str(rest);
        out = rebased;
    }
    out
}

/// Publishes `files` into `dir` the way the kubelet updates a Secret
/// volume: a new `..<version>` directory, an atomic rename of the `..data`
/// symlink onto it, and one `name -> ..data/name` symlink per file.
fn kubelet_publish(dir: &Path, version: &str, files: &[(&str, String)]) {
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&data).unwrap();
    for (name, contents) in files {
        std::fs::write(data.join(name), contents).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), link).unwrap();
        }
    }
}

/// The example's Envoy, laid out under `root` as the pod's envoy container
/// sees it (ConfigMap files, the TLS Secret from `pki`), with every path
/// moved under `root`. Returns the config text.
fn lay_out_kubernetes_envoy(docs: &[Value], root: &Path, pki: &DevPki) -> String {
    let pod = pod_spec(docs);
    let envoy = pod_container(pod, "envoy");
    let mounts: Vec<String> = envoy["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap().to_owned())
        .collect();
    let config_path = flag_value(&strings(&envoy["command"]), "-c");
    let (config_dir, config_file) = config_path.rsplit_once('/').unwrap();
    let configmap = volume_at(pod, envoy, config_dir)["configMap"]["name"]
        .as_str()
        .unwrap();
    for (dir, volume) in mounts.iter().map(|m| (m, volume_at(pod, envoy, m))) {
        let local = root.join(dir.trim_start_matches('/'));
        std::fs::create_dir_all(&local).unwrap();
        if volume["configMap"]["name"].as_str() == Some(configmap) {
            for (key, text) in find(docs, "ConfigMap", configmap)["data"]
                .as_mapping()
                .unwrap()
            {
                let text = rebase(text.as_str().unwrap(), &mounts, root);
                std::fs::write(local.join(key.as_str().unwrap()), text).unwrap();
            }
        } else if volume["secret"].is_mapping() {
            kubelet_publish(&local, "v1", &envoy_tls_secret(pki));
        }
    }
    std::fs::read_to_string(
        root.join(config_dir.trim_start_matches('/'))
            .join(config_file),
    )
    .unwrap()
}

/// The orders-envoy-tls Secret's keys, filled from a dev-pki output.
fn envoy_tls_secret(pki: &DevPki) -> Vec<(&'static str, String)> {
    vec![
        ("ca.crt", pki.read("certs/ca.crt")),
        ("tls.crt", pki.read("certs/envoy.crt")),
        ("tls.key", pki.read("certs/envoy.key")),
    ]
}

#[test]
fn kubernetes_envoy_config_is_the_uds_hop_file_with_certificates_from_sds() {
    let docs = kubernetes_docs();
    let pod = pod_spec(&docs);
    let envoy = pod_container(pod, "envoy");
    let data = &find(&docs, "ConfigMap", "orders-envoy")["data"];
    let mut config: Value = serde_yaml::from_str(data["envoy.yaml"].as_str().unwrap()).unwrap();
    let mut shipped: Value = yaml_file("envoy/envoy-uds-hop.yaml");

    // Certificates, key and CA come from file-based SDS, each watching the
    // directory the kubelet swaps, so rotation needs no restart.
    let tls_path = ["static_resources", "listeners"];
    let context = |doc: &mut Value| -> Value {
        let mut v = &mut *doc;
        for k in tls_path {
            v = &mut v[k];
        }
        std::mem::take(
            &mut v[0]["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"],
        )
    };
    let sds = context(&mut config);
    let files = context(&mut shipped);
    assert!(files["tls_certificates"].is_sequence());
    let sources = [
        &sds["tls_certificate_sds_secret_configs"][0],
        &sds["validation_context_sds_secret_config"],
    ];
    for source in sources {
        let name = source["name"].as_str().expect("SDS secret name");
        let path_source = &source["sds_config"]["path_config_source"];
        let path = path_source["path"].as_str().expect("file-based SDS");
        let (dir, key) = path.rsplit_once('/').unwrap();
        assert_eq!(path_source["watched_directory"]["path"].as_str(), Some(dir));
        let (kind, _, _) = mounted_source(pod, envoy, path);
        assert_eq!(kind, "ConfigMap");
        let secret: Value = serde_yaml::from_str(data[key].as_str().unwrap()).unwrap();
        let resource = &secret["resources"][0];
        assert_eq!(resource["name"].as_str(), Some(name), "{key}");
        let body = resource
            .get("tls_certificate")
            .or_else(|| resource.get("validation_context"))
            .expect("a certificate or a validation context");
        let mut filenames = Vec::new();
        envoy_filenames(body, &mut filenames);
        assert!(!filenames.is_empty());
        for file in filenames {
            let (dir, _) = file.rsplit_once('/').unwrap();
            assert_eq!(
                body["watched_directory"]["path"].as_str(),
                Some(dir),
                "{file}"
            );
            let (kind, secret_name, _) = mounted_source(pod, envoy, &file);
            assert_eq!(
                (kind.as_str(), secret_name.as_str()),
                ("Secret", "orders-envoy-tls")
            );
        }
    }

    // SDS needs a node; everything else is envoy-uds-hop.yaml, the file the
    // tests run, socket path included.
    config
        .as_mapping_mut()
        .unwrap()
        .remove("node")
        .expect("an SDS node");
    assert_eq!(
        config, shipped,
        "the Kubernetes Envoy config drifted from envoy/envoy-uds-hop.yaml"
    );

    // And Envoy accepts it, laid out as in the pod.
    let pki = DevPki::generate();
    let root = tempfile::tempdir().unwrap();
    let text = lay_out_kubernetes_envoy(&docs, root.path(), &pki);
    let config_file = root.path().join("k8s-envoy.yaml");
    std::fs::write(&config_file, text).unwrap();
    let out = Command::new(envoy_binary())
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&config_file)
        .stdin(Stdio::null())
        .output()
        .expect("run envoy");
    assert!(
        out.status.success(),
        "envoy rejects the Kubernetes config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The leaf certificate Envoy presents to a new handshake made with `tls`.
async fn presented_leaf(port: u16, tls: std::sync::Arc<rustls::ClientConfig>) -> Option<Vec<u8>> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, stream)
        .await
        .ok()?;
    Some(tls.get_ref().1.peer_certificates()?.first()?.to_vec())
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn kubernetes_envoy_serves_rotated_certificates_without_a_restart() {
    let docs = kubernetes_docs();
    let pki = DevPki::generate();
    let root = tempfile::tempdir().unwrap();
    let text = lay_out_kubernetes_envoy(&docs, root.path(), &pki);

    // The sidecar on the example's socket, moved under root like Envoy's.
    let socket = root
        .path()
        .join(kubernetes_socket(&docs).strip_prefix("/").unwrap());
    let mut config = pki.static_config();
    config.listen.grpc = ListenAddr::Unix(socket.clone());
    let mut sidecar = Sidecar::spawn(&pki.write_config(&config), &[]);
    let addr = sidecar.listening().await;
    assert_eq!(addr, ListenAddr::Unix(socket.clone()));
    common::procs::poll(
        "the sidecar's socket to serve",
        Duration::from_secs(30),
        || {
            sidecar.assert_running();
            let addr = addr.clone();
            async move {
                service_auth::health::probe(&addr, None, Duration::from_secs(1))
                    .await
                    .ok()
            }
        },
    )
    .await;

    // Envoy as laid out, on kernel-chosen ports, in front of the echo app.
    // Its sidecar cluster is a pipe to the socket above: Envoy never dials a
    // TCP address for it, so a loopback port that refuses connections fills
    // the field.
    let echo = Echo::start().await;
    let (_refusing, unused) = common::procs::refusing_addr();
    let ports = common::procs::EnvoyPorts {
        sidecar: unused,
        app: echo.addr,
    };
    let workdir = root.path().join("etc/envoy");
    let envoy = Envoy::start(
        &workdir,
        &common::procs::envoy_config_text(&text, &ports, Some(&socket)),
    )
    .await;
    let url = format!("{}/orders", envoy.base_url());
    let key = pki.api_key("billing");
    let status = pki
        .client("billing")
        .get(&url)
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);

    // cert-manager renews: a new CA, certificate and key, published as the
    // kubelet does. New handshakes get the new certificate...
    let renewed = DevPki::generate();
    let tls_dir = root.path().join("etc/envoy/tls");
    kubelet_publish(&tls_dir, "v2", &envoy_tls_secret(&renewed));
    let new_leaf = der(&renewed.read("certs/envoy.crt"));
    let client =
        renewed.rustls_client("certs/ca.crt", "clients/billing.crt", "clients/billing.key");
    let listener = envoy.listener;
    common::procs::poll(
        "Envoy to serve the renewed certificate",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            let new_leaf = new_leaf.clone();
            async move { (presented_leaf(listener, client).await? == new_leaf).then_some(()) }
        },
    )
    .await;
    // ...and callers are checked against the new CA: one from the old CA is
    // refused at the handshake.
    let old = pki
        .client("billing")
        .get(&url)
        .header("x-api-key", &key)
        .send()
        .await;
    assert!(
        old.is_err(),
        "a certificate from the replaced CA got in: {old:?}"
    );
}
