//! Hot reload against the real binary: every change takes effect without a
//! restart, a broken registry never replaces a good one, and no Check fails
//! while the registry is being rewritten. Outcomes are polled, never slept on.

mod common;

use std::time::Duration;

use common::load::AllowLoad;
use common::procs::{Sidecar, poll};
use common::{Ca, ClientSpec, Fixture, Req, Svc, tcp0};
use envoy_types::ext_authz::v3::pb::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use service_auth::config::{KeyEntry, RegistryFile};
use service_auth::testkit::grpc;
use tonic::transport::Channel;

const A_URI: &str = "spiffe://mesh.test/a";
const B_URI: &str = "spiffe://mesh.test/b";
const A_KEY: &str = "key-of-a-0123456789";
const B_KEY: &str = "key-of-b-0123456789";
const WAIT: Duration = Duration::from_secs(15);

struct Harness {
    fixture: Fixture,
    sidecar: Sidecar,
    client: AuthorizationClient<Channel>,
    ca: Ca,
}

async fn start(services: &[Svc]) -> Harness {
    let fixture = Fixture::new(services);
    let config = fixture.write_config(&fixture.static_config(tcp0()));
    let sidecar = Sidecar::start(&config).await;
    let client = sidecar.client().await;
    Harness {
        fixture,
        sidecar,
        client,
        ca: Ca::new("reload CA"),
    }
}

/// "allow", or the denial reason.
async fn outcome(client: &mut AuthorizationClient<Channel>, req: &Req) -> String {
    let resp = client.check(req.build()).await.expect("Check").into_inner();
    grpc::outcome(&resp)
}

impl Harness {
    fn cert_req(&self, uri: &str, key: &str) -> Req {
        Req::cert(self.ca.client(&ClientSpec::uri(uri)).forwarded()).key(key)
    }

    async fn outcome(&mut self, req: &Req) -> String {
        outcome(&mut self.client, req).await
    }

    /// Polls Checks until `req` has outcome `want`; on timeout, says what it
    /// saw last and shows the sidecar's log.
    async fn until(&self, what: &str, req: &Req, want: &str) {
        let deadline = std::time::Instant::now() + WAIT;
        let mut client = self.client.clone();
        loop {
            let got = outcome(&mut client, req).await;
            if got == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: still {got:?}\nlog:\n{}",
                self.sidecar.log_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Reload attempts with `result` in the sidecar's JSON log so far.
    fn reloads(&self, result: &str) -> usize {
        self.sidecar
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == "registry_reload" && v["result"] == result)
            .count()
    }

    /// Waits until the log shows more reload attempts with `result` than `before`.
    async fn until_reloads(&self, result: &str, before: usize) {
        poll(&format!("a reload {result}"), WAIT, || {
            let n = self.reloads(result);
            async move { (n > before).then_some(()) }
        })
        .await;
    }

    /// Atomic replace (write + rename), as most tools and editors do.
    fn replace_registry(&self, file: &RegistryFile) {
        self.replace_registry_text(&yaml(file));
    }

    /// [`Harness::replace_registry`] with text, for broken registries.
    fn replace_registry_text(&self, text: &str) {
        let tmp = self.fixture.path().join(".registry.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.fixture.registry_path()).unwrap();
    }

    /// The fixture's registry file for `services`.
    fn registry(&self, services: &[Svc]) -> RegistryFile {
        self.fixture.registry_file(services)
    }
}

#[tokio::test]
async fn keys_and_services_come_and_go_without_restart() {
    let mut h = start(&[Svc::new("a", A_URI, A_KEY)]).await;
    let a_new = h.cert_req(A_URI, "second-key-of-a-0123");
    let b = h.cert_req(B_URI, B_KEY);
    let a = h.cert_req(A_URI, A_KEY);
    assert_eq!(h.outcome(&a).await, "allow");
    assert_eq!(h.outcome(&a_new).await, "invalid_api_key");
    assert_eq!(h.outcome(&b).await, "unknown_principal");

    let mut a_svc = Svc::new("a", A_URI, A_KEY);
    a_svc
        .keys
        .push(("k2".into(), "second-key-of-a-0123".into(), None));
    h.fixture.write_registry(&[a_svc.clone()]);
    h.until("the added key", &a_new, "allow").await;
    assert_eq!(
        h.outcome(&a).await,
        "allow",
        "the old key keeps working during rotation"
    );

    h.replace_registry(&h.registry(&[a_svc, Svc::new("b", B_URI, B_KEY)]));
    h.until("the added service", &b, "allow").await;

    h.replace_registry(&h.registry(&[Svc::new("b", B_URI, B_KEY)]));
    h.until("the removed service", &a, "unknown_principal")
        .await;
    assert_eq!(h.outcome(&b).await, "allow");
}

#[tokio::test]
async fn revocations_take_effect() {
    let mut h = start(&[Svc::new("a", A_URI, A_KEY)]).await;
    let first = Req::cert(
        h.ca.client(&ClientSpec::uri(A_URI).serial(&[0x11, 0x22]))
            .forwarded(),
    )
    .key(A_KEY);
    let second = Req::cert(
        h.ca.client(&ClientSpec::uri(A_URI).serial(&[0x33, 0x44]))
            .forwarded(),
    )
    .key(A_KEY);
    assert_eq!(h.outcome(&first).await, "allow");

    let mut file = h.registry(&[Svc::new("a", A_URI, A_KEY)]);
    file.revocation.serials = vec!["1122".into()];
    h.replace_registry(&file);
    h.until("the revoked serial", &first, "certificate_revoked")
        .await;
    assert_eq!(h.outcome(&second).await, "allow");

    h.fixture
        .write_file("mesh.crl.pem", h.ca.crl_pem(&[&[0x33, 0x44]]));
    file.revocation.crl_files = vec!["mesh.crl.pem".into()];
    h.replace_registry(&file);
    h.until("the CRL", &second, "certificate_revoked").await;
}

#[tokio::test]
async fn signing_key_rotation_and_removal() {
    let mut h = start(&[Svc::new("a", A_URI, A_KEY)]).await;
    let cert = h.ca.client(&ClientSpec::uri(A_URI));
    let issue = Req::cert(cert.forwarded()).key(A_KEY);
    let resp = h.client.check(issue.build()).await.unwrap().into_inner();
    let Some(HttpResponse::OkResponse(ok)) = resp.http_response else {
        panic!()
    };
    let old_token = ok.headers[0].header.as_ref().unwrap().value.clone();
    let verify_old = Req::cert(cert.forwarded())
        .header("x-service-jwt", &old_token)
        .ext("mode", "verify");
    assert_eq!(h.outcome(&verify_old).await, "allow");

    // New key signs; the old one only verifies.
    h.fixture.write_file(
        "secrets/jwt-2.key",
        "second-signing-secret-0123456789abcdef",
    );
    let new_key = KeyEntry {
        kid: "test-2".into(),
        secret_file: Some("secrets/jwt-2.key".into()),
        ..Default::default()
    };
    let mut rotated = h.registry(&[Svc::new("a", A_URI, A_KEY)]);
    let old_key = rotated.token.keys.remove(0);
    assert_eq!(old_key.kid, "test-1");
    rotated.token.keys = vec![
        new_key.clone(),
        KeyEntry {
            verify_only: true,
            ..old_key
        },
    ];
    h.replace_registry(&rotated);
    let client = h.client.clone();
    poll("tokens signed with the new kid", WAIT, || {
        let mut client = client.clone();
        let req = issue.build();
        async move {
            let resp = client.check(req).await.ok()?.into_inner();
            (grpc::metadata(&resp, "kid")? == "test-2").then_some(())
        }
    })
    .await;
    assert_eq!(
        h.outcome(&verify_old).await,
        "allow",
        "verify_only keys still verify"
    );

    // Removing the old key stops its tokens verifying.
    let mut removed = rotated;
    removed.token.keys = vec![new_key];
    h.replace_registry(&removed);
    h.until(
        "the removed key's token to be refused",
        &verify_old,
        "invalid_token",
    )
    .await;
}

#[tokio::test]
async fn broken_registries_never_replace_the_good_one() {
    let mut h = start(&[Svc::new("a", A_URI, A_KEY), Svc::new("b", B_URI, B_KEY)]).await;
    let a = h.cert_req(A_URI, A_KEY);
    let good = h.registry(&[Svc::new("a", A_URI, A_KEY), Svc::new("b", B_URI, B_KEY)]);
    h.fixture.write_file("secrets/short.key", "short");
    let with_secret = |secret: &str| {
        let mut file = good.clone();
        file.token.keys[0].secret_file = Some(secret.into());
        yaml(&file)
    };
    // An unknown field cannot be written from the typed file: add it to the
    // YAML document built from one.
    let mut unknown_field = serde_yaml::to_value(&good).unwrap();
    unknown_field["token"]["tll"] = "6m".into();
    let broken = [
        ("broken YAML", "token: [unclosed\n".to_string()),
        (
            "unknown field",
            serde_yaml::to_string(&unknown_field).unwrap(),
        ),
        (
            "duplicate principal",
            yaml(&h.registry(&[Svc::new("a", A_URI, A_KEY), Svc::new("b", A_URI, B_KEY)])),
        ),
        ("missing secret file", with_secret("secrets/absent.key")),
        ("too-short secret", with_secret("secrets/short.key")),
        ("empty file", String::new()),
    ];
    for (name, text) in broken {
        let failures = h.reloads("failure");
        h.replace_registry_text(&text);
        h.until_reloads("failure", failures).await;
        assert_eq!(
            h.outcome(&a).await,
            "allow",
            "{name}: the old snapshot must keep serving"
        );
    }
    // A file that is briefly missing, then back.
    let failures = h.reloads("failure");
    std::fs::remove_file(h.fixture.registry_path()).unwrap();
    h.until_reloads("failure", failures).await;
    assert_eq!(h.outcome(&a).await, "allow");
    let successes = h.reloads("success");
    h.replace_registry(&h.registry(&[Svc::new("b", B_URI, B_KEY)]));
    h.until_reloads("success", successes).await;
    h.until("the fixed registry", &a, "unknown_principal").await;
    assert!(!h.sidecar.log_text().contains(common::SECRET));
}

#[tokio::test]
async fn in_place_writes_are_seen() {
    let h = start(&[Svc::new("a", A_URI, A_KEY)]).await;
    let b = h.cert_req(B_URI, B_KEY);
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(h.fixture.registry_path())
        .unwrap();
    file.write_all(
        yaml(&h.registry(&[Svc::new("a", A_URI, A_KEY), Svc::new("b", B_URI, B_KEY)])).as_bytes(),
    )
    .unwrap();
    drop(file);
    h.until("the in-place write", &b, "allow").await;
}

/// Kubernetes ConfigMap volumes: files are symlinks into `..data`, itself a
/// symlink to a timestamped directory; an update writes a new directory and
/// atomically renames a new `..data` symlink over the old one (kubelet's
/// AtomicWriter). The file's own path never changes.
#[tokio::test]
async fn configmap_data_symlink_swap() {
    let fixture = Fixture::new(&[]);
    let volume = fixture.path().join("configmap");
    std::fs::create_dir(&volume).unwrap();
    // The registry resolves relative paths against its own (symlinked)
    // directory: name the fixture's secret by its absolute path.
    let secret = fixture.path().join("secrets/jwt.key");
    let publish = |n: u32, services: &[Svc]| {
        let dir = volume.join(format!("..2026_11_29_00_00_{n:02}.000{n}"));
        std::fs::create_dir(&dir).unwrap();
        let mut file = fixture.registry_file(services);
        file.token.keys[0].secret_file = Some(secret.clone());
        std::fs::write(dir.join("registry.yaml"), yaml(&file)).unwrap();
        let tmp = volume.join("..data_tmp");
        std::os::unix::fs::symlink(dir.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, volume.join("..data")).unwrap();
        if !volume.join("registry.yaml").exists() {
            std::os::unix::fs::symlink("..data/registry.yaml", volume.join("registry.yaml"))
                .unwrap();
        }
        dir
    };
    let first = publish(1, &[Svc::new("a", A_URI, A_KEY)]);
    let mut config = fixture.static_config(tcp0());
    config.registry = "configmap/registry.yaml".into();
    config.reload.poll_interval = Duration::from_secs(3600);
    let sidecar = Sidecar::start(&fixture.write_config(&config)).await;
    let mut client = sidecar.client().await;
    let ca = Ca::new("configmap CA");
    let b = Req::cert(ca.client(&ClientSpec::uri(B_URI)).forwarded()).key(B_KEY);
    assert_eq!(outcome(&mut client, &b).await, "unknown_principal");

    // The poll interval is an hour: only the directory watch can see this.
    publish(
        2,
        &[Svc::new("a", A_URI, A_KEY), Svc::new("b", B_URI, B_KEY)],
    );
    std::fs::remove_dir_all(first).unwrap();
    poll("the ..data swap to be picked up", WAIT, || {
        let mut client = client.clone();
        let b = b.clone();
        async move { (outcome(&mut client, &b).await == "allow").then_some(()) }
    })
    .await;
}

/// A directory symlink retargeted (`sec -> secA`, then `secB`, then
/// `secC`, each an atomic rename as a Secret or ConfigMap mount does):
/// each switch is seen, and so is a later change inside the new target.
/// The poll interval is an hour: only file events can explain any of it.
#[tokio::test]
async fn retargeted_directory_symlinks_keep_file_events() {
    let fixture = Fixture::new(&[]);
    let root = fixture.path();
    let secret = root.join("secrets/jwt.key");
    let write_in = |dir: &str, services: &[Svc]| {
        std::fs::create_dir_all(root.join(dir)).unwrap();
        let mut file = fixture.registry_file(services);
        file.token.keys[0].secret_file = Some(secret.clone());
        // Atomic, as an editor or the kubelet writes.
        let tmp = root.join(dir).join(".registry.yaml.tmp");
        std::fs::write(&tmp, yaml(&file)).unwrap();
        std::fs::rename(&tmp, root.join(dir).join("registry.yaml")).unwrap();
    };
    let point_at = |target: &str| {
        let tmp = root.join("sec.tmp");
        std::os::unix::fs::symlink(target, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("sec")).unwrap();
    };
    let a = Svc::new("a", A_URI, A_KEY);
    let b = Svc::new("b", B_URI, B_KEY);
    write_in("secA", std::slice::from_ref(&a));
    write_in("secB", &[a.clone(), b.clone()]);
    write_in("secC", std::slice::from_ref(&a));
    point_at("secA");
    let mut config = fixture.static_config(tcp0());
    config.registry = "sec/registry.yaml".into();
    config.reload.poll_interval = Duration::from_secs(3600);
    let sidecar = Sidecar::start(&fixture.write_config(&config)).await;
    let client = sidecar.client().await;
    let ca = Ca::new("retarget CA");
    let b_req = Req::cert(ca.client(&ClientSpec::uri(B_URI)).forwarded()).key(B_KEY);
    let until = |what: &'static str, want: &'static str| {
        let (client, b_req) = (client.clone(), b_req.clone());
        poll(what, WAIT, move || {
            let (mut client, b_req) = (client.clone(), b_req.clone());
            async move { (outcome(&mut client, &b_req).await == want).then_some(()) }
        })
    };
    until("the first registry", "unknown_principal").await;

    point_at("secB");
    until("sec -> secB to be picked up", "allow").await;
    point_at("secC");
    until("sec -> secC to be picked up", "unknown_principal").await;
    // Inside the new target: only a watch on secC itself can see this.
    write_in("secC", &[a, b]);
    until("the change inside secC to be picked up", "allow").await;
}

#[tokio::test]
async fn sighup_forces_a_reload() {
    let h = start(&[Svc::new("a", A_URI, A_KEY)]).await;
    let before = h.reloads("success");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &h.sidecar.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    h.until_reloads("success", before).await;
}

/// Several clients Check continuously while the registry is rewritten
/// dozens of times (atomic renames and in-place writes, which a reload may
/// catch half-written): not one Check may fail or be wrongly denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_check_fails_while_the_registry_churns() {
    let h = start(&[Svc::new("a", A_URI, A_KEY)]).await;
    let a = h.cert_req(A_URI, A_KEY);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(h.sidecar.client().await);
    }
    let load = AllowLoad::start(clients, a.build());
    let mut extra = Svc::new("c", "spiffe://mesh.test/c", "key-of-c-0123456789");
    for round in 0..40u32 {
        extra.scopes = vec![format!("scope{round}")];
        let file = h.registry(&[Svc::new("a", A_URI, A_KEY), extra.clone()]);
        let before = h.reloads("success") + h.reloads("failure");
        if round % 2 == 0 {
            h.replace_registry(&file);
        } else {
            // In place: `Fixture::write` truncates and rewrites the file.
            h.fixture.write(&file);
        }
        // Pace the rewrites by the reloader, not by a clock.
        h.until_reloads_any(before).await;
    }
    let (checks, wrong) = load.stop().await;
    assert!(checks > 100, "the clients made too few Checks");
    assert!(
        wrong.is_empty(),
        "{} failed or wrongly denied Checks: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(
        h.reloads("success") >= 20,
        "most rewrites should have been reloaded"
    );
}

/// `file` as YAML text, as `Fixture::write` writes it.
fn yaml(file: &RegistryFile) -> String {
    serde_yaml::to_string(file).unwrap()
}

impl Harness {
    async fn until_reloads_any(&self, before: usize) {
        poll("a reload attempt", WAIT, || {
            let n = self.reloads("success") + self.reloads("failure");
            async move { (n > before).then_some(()) }
        })
        .await;
    }
}
