//! Registry fragments: `registry` as a list of files and directories, merged
//! into one snapshot; duplicates across files rejected naming both; every
//! fragment and fragment directory watched, the whole set swapped at once.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::load::AllowLoad;
use common::procs::{Sidecar, poll};
use common::{Ca, ClientSpec, Fixture, InProcess, Req, Svc, tcp0};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use service_auth::config::{
    ConfigError, RegistryFile, RegistryFragment, RegistryPaths, RevocationSection, StaticConfig,
};
use service_auth::registry::{LoadError, Origin, Problem, Registry};
use service_auth::testkit::{decide, fragment, grpc, unix_now};
use tonic::transport::Channel;

const A_URI: &str = "spiffe://mesh.test/a";
const B_URI: &str = "spiffe://mesh.test/b";
const C_URI: &str = "spiffe://mesh.test/c";
const A_KEY: &str = "key-of-a-0123456789";
const B_KEY: &str = "key-of-b-0123456789";
const C_KEY: &str = "key-of-c-0123456789";
const WAIT: Duration = Duration::from_secs(15);

fn ids(registry: &Registry) -> Vec<&str> {
    registry.services().iter().map(|s| s.id.as_str()).collect()
}

/// `registry.yaml` plus `extra` fragment entries (relative to the fixture).
fn paths(f: &Fixture, extra: &[&str]) -> RegistryPaths {
    RegistryPaths {
        main: f.registry_path(),
        fragments: extra.iter().map(|p| f.path().join(p)).collect(),
    }
}

fn load(paths: &RegistryPaths) -> Registry {
    Registry::load_paths(paths).unwrap_or_else(|errors| {
        panic!(
            "registry rejected: {:#?}",
            errors.iter().map(ToString::to_string).collect::<Vec<_>>()
        )
    })
}

fn rejected(paths: &RegistryPaths) -> Vec<LoadError> {
    match Registry::load_paths(paths) {
        Ok(_) => panic!("the registry loaded"),
        Err(errors) => errors,
    }
}

/// A mounted ConfigMap as the kubelet writes it: the files live in a
/// timestamped directory, `..data` links to it, and each key is a symlink
/// through `..data`. Publishing again swaps `..data` atomically.
struct ConfigMapDir {
    dir: PathBuf,
    generation: u32,
}

impl ConfigMapDir {
    fn new(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        ConfigMapDir { dir, generation: 0 }
    }

    fn publish(&mut self, files: &[(&str, &RegistryFragment)]) {
        self.generation += 1;
        let n = self.generation;
        let data = self.dir.join(format!("..2026_11_29_00_00_{n:02}.000{n}"));
        std::fs::create_dir(&data).unwrap();
        for (name, fragment) in files {
            std::fs::write(data.join(name), serde_yaml::to_string(fragment).unwrap()).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(data.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        for (name, _) in files {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), &link).unwrap();
            }
        }
    }
}

#[test]
fn fragments_add_services_from_files_and_directories_in_order() {
    let f = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    f.write_fragment("teams/b.yaml", &fragment(&[Svc::new("b", B_URI, B_KEY)]));
    f.write_fragment(
        "teams/0-d.yaml",
        &fragment(&[Svc::new("d", "spiffe://mesh.test/d", "key-of-d-0123456789")]),
    );
    f.write_fragment("c.yaml", &fragment(&[Svc::new("c", C_URI, C_KEY)]));
    // Not fragments: hidden, another extension, a subdirectory.
    f.write_file("teams/.hidden.yaml", "token: broken\n");
    f.write_file("teams/README.txt", "not yaml at all: [");
    f.write_file("teams/sub.yaml/x.yaml", "token: broken\n");

    let paths = paths(&f, &["teams", "c.yaml"]);
    let registry = load(&paths);
    assert_eq!(ids(&registry), ["a", "d", "b", "c"]);
    let sources = registry.sources();
    for watched in [
        f.registry_path(),
        f.path().join("teams"),
        f.path().join("teams/0-d.yaml"),
        f.path().join("teams/b.yaml"),
        f.path().join("c.yaml"),
    ] {
        assert!(sources.contains(&watched), "{watched:?} not in {sources:?}");
    }

    // Each fragment's service authenticates like one from the main file.
    let ca = Ca::new("fragments CA");
    let b = Req::cert(ca.client(&ClientSpec::uri(B_URI)).forwarded()).key(B_KEY);
    assert!(matches!(
        decide(&b.build(), &registry, unix_now()),
        service_auth::check::Decision::Allow(_)
    ));
}

#[test]
fn a_configmap_directory_contributes_its_keys_not_its_internals() {
    let f = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let mut teams = ConfigMapDir::new(f.path().join("teams"));
    teams.publish(&[
        ("payments.yaml", &fragment(&[Svc::new("b", B_URI, B_KEY)])),
        ("search.yaml", &fragment(&[Svc::new("c", C_URI, C_KEY)])),
    ]);
    let registry = load(&paths(&f, &["teams"]));
    assert_eq!(ids(&registry), ["a", "b", "c"]);
}

#[test]
fn duplicates_across_files_reject_the_whole_set_naming_both_files() {
    let f = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let team = f.write_fragment(
        "teams/team.yaml",
        &fragment(&[
            Svc::new("ok", "spiffe://mesh.test/ok", "key-of-ok-0123456789"),
            // Same id, principal and key as `a` in the main file.
            Svc::new("a", A_URI, A_KEY),
        ]),
    );
    let other = f.write_fragment(
        "other.yaml",
        &fragment(&[Svc::new("ok", B_URI, "another-key-0123456789")]),
    );
    let errors = rejected(&paths(&f, &["teams", "other.yaml"]));
    let main = f.registry_path();
    let at = |file: &Path, at: &str| Origin {
        file: file.to_path_buf(),
        at: at.into(),
    };
    let got: Vec<(PathBuf, String, String)> = errors
        .iter()
        .map(|e| match e {
            LoadError::Invalid { file, at, problem } => {
                let what = match problem {
                    Problem::DuplicateServiceId { id, first } => format!("id {id} first {first}"),
                    Problem::PrincipalClaimed {
                        principal,
                        owner,
                        first,
                    } => format!("principal {principal} of {owner} first {first}"),
                    Problem::DuplicateKeyHash { key, owner, first } => {
                        format!("key {key} of {owner} first {first}")
                    }
                    other => panic!("unexpected {other:?}"),
                };
                (file.clone(), at.clone(), what)
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let expected = vec![
        (
            team.clone(),
            "services[1].id".to_string(),
            format!("id a first {}", at(&main, "services[0].id")),
        ),
        (
            team.clone(),
            "services[1].principals[0]".to_string(),
            format!(
                "principal {A_URI} of a first {}",
                at(&main, "services[0].principals[0]")
            ),
        ),
        (
            team.clone(),
            "services[1].api_keys[0].sha256".to_string(),
            format!(
                "key k1 of a first {}",
                at(&main, "services[0].api_keys[0].sha256")
            ),
        ),
        (
            other.clone(),
            "services[0].id".to_string(),
            format!("id ok first {}", at(&team, "services[0].id")),
        ),
    ];
    assert_eq!(got, expected);
    // The message an operator reads names both files.
    let message = errors[0].to_string();
    assert!(
        message.contains(&team.display().to_string())
            && message.contains(&main.display().to_string()),
        "{message}"
    );
}

#[test]
fn a_fragment_holds_only_services_and_revocation() {
    let f = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    // The whole main file as a fragment: `token` is not a fragment's key.
    let main_as_fragment = f.write_file(
        "teams/main-copy.yaml",
        serde_yaml::to_string(&f.registry_file(&[])).unwrap(),
    );
    let empty = f.write_fragment("teams/empty.yaml", &RegistryFragment::default());
    let errors = rejected(&paths(&f, &["teams"]));
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(
        matches!(&errors[0], LoadError::Invalid { file, at, problem: Problem::EmptyFragment } if *file == empty && at == "services"),
        "{:?}",
        errors[0]
    );
    // Every key a fragment may not hold, each at its own line.
    for (error, key) in errors[1..].iter().zip(["token", "identity", "request"]) {
        assert!(
            matches!(error, LoadError::File(ConfigError::Yaml { path, message, column: 1, .. })
                if *path == main_as_fragment && message.contains(&format!("unknown field `{key}`"))),
            "{error:?}"
        );
    }
}

#[test]
fn the_first_entry_must_be_a_file_and_listed_entries_must_exist() {
    let f = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    std::fs::create_dir(f.path().join("teams")).unwrap();
    let dir_first = RegistryPaths::file(f.path().join("teams"));
    let errors = rejected(&dir_first);
    assert!(
        matches!(&errors[..], [LoadError::File(ConfigError::Read { path, .. })] if *path == f.path().join("teams")),
        "{errors:#?}"
    );
    let missing = f.path().join("nowhere.yaml");
    let errors = rejected(&paths(&f, &["nowhere.yaml"]));
    assert!(
        matches!(&errors[..], [LoadError::File(ConfigError::Read { path, .. })] if *path == missing),
        "{errors:#?}"
    );
    // An empty directory is fine: a team with no services yet.
    assert_eq!(ids(&load(&paths(&f, &["teams"]))), ["a"]);
}

#[test]
fn fragment_paths_resolve_against_the_fragment_and_its_revocations_apply() {
    let f = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let ca = Ca::new("team CA");
    let revoked = ca.client(&ClientSpec::uri(B_URI).serial(&[0x4f, 0x1a]));
    let good = ca.client(&ClientSpec::uri(C_URI));
    // Relative to teams/, not to the main registry's directory.
    f.write_file("teams/ca.pem", ca.cert_pem());
    let mut b = Svc::new("b", B_URI, B_KEY);
    b.ca_file = Some("ca.pem".into());
    let mut c = Svc::new("c", C_URI, C_KEY);
    c.ca_file = Some("ca.pem".into());
    let mut team = fragment(&[b, c]);
    team.revocation = Some(RevocationSection {
        serials: vec!["4f:1a".into()],
        crl_files: Vec::new(),
    });
    f.write_fragment("teams/team.yaml", &team);
    let registry = load(&paths(&f, &["teams"]));
    assert!(registry.sources().contains(&f.path().join("teams/ca.pem")));
    let outcome = |req: Req| match decide(&req.build(), &registry, unix_now()) {
        service_auth::check::Decision::Allow(_) => "allow".to_string(),
        service_auth::check::Decision::Deny(d) => d.reason.to_string(),
    };
    assert_eq!(outcome(Req::cert(good.forwarded()).key(C_KEY)), "allow");
    assert_eq!(
        outcome(Req::cert(revoked.forwarded()).key(B_KEY)),
        "certificate_revoked"
    );
}

// ---------------------------------------------------------------------------
// Reloads: the in-process sidecar runs the real watcher and reloader.
// ---------------------------------------------------------------------------

/// "allow", or the denial reason.
async fn outcome(client: &mut AuthorizationClient<Channel>, req: &Req) -> String {
    let resp = client.check(req.build()).await.expect("Check").into_inner();
    grpc::outcome(&resp)
}

async fn until(client: &AuthorizationClient<Channel>, what: &str, req: &Req, want: &str) {
    poll(what, WAIT, || {
        let mut client = client.clone();
        let req = req.clone();
        let want = want.to_owned();
        async move { (outcome(&mut client, &req).await == want).then_some(()) }
    })
    .await;
}

fn config_with(f: &Fixture, fragments: &[&str], poll_interval: Duration) -> StaticConfig {
    let mut config = f.static_config(tcp0());
    config.registry.fragments = fragments.iter().map(|p| f.path().join(p)).collect();
    config.reload.poll_interval = poll_interval;
    config
}

/// Writes `file` next to `path` and renames it over `path` (what editors
/// and most tools do).
fn replace(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn yaml(value: &impl serde::Serialize) -> String {
    serde_yaml::to_string(value).unwrap()
}

#[tokio::test]
async fn fragments_and_new_files_in_directories_are_picked_up() {
    let f = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let team = f.write_fragment("teams/b.yaml", &fragment(&[Svc::new("b", B_URI, B_KEY)]));
    // Polling an hour apart: only the file events can see these changes.
    let sidecar = InProcess::start(&config_with(&f, &["teams"], Duration::from_secs(3600))).await;
    let client = sidecar.client().await;
    let ca = Ca::new("fragments CA");
    let req =
        |uri: &str, key: &str| Req::cert(ca.client(&ClientSpec::uri(uri)).forwarded()).key(key);
    let (b, b2, c) = (
        req(B_URI, B_KEY),
        req(B_URI, "second-key-of-b-0123"),
        req(C_URI, C_KEY),
    );
    assert_eq!(outcome(&mut client.clone(), &b).await, "allow");
    assert_eq!(outcome(&mut client.clone(), &c).await, "unknown_principal");

    // An edited fragment.
    let mut b_svc = Svc::new("b", B_URI, B_KEY);
    b_svc
        .keys
        .push(("k2".into(), "second-key-of-b-0123".into(), None));
    replace(&team, &yaml(&fragment(&[b_svc])));
    until(&client, "the edited fragment", &b2, "allow").await;

    // A file that did not exist when the sidecar started.
    f.write_fragment("teams/c.yaml", &fragment(&[Svc::new("c", C_URI, C_KEY)]));
    until(&client, "the new fragment file", &c, "allow").await;

    // A removed file takes its services with it.
    std::fs::remove_file(f.path().join("teams/c.yaml")).unwrap();
    until(
        &client,
        "the removed fragment file",
        &c,
        "unknown_principal",
    )
    .await;
    sidecar.sidecar.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_configmap_swap_of_a_fragment_directory_is_picked_up() {
    let f = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let mut teams = ConfigMapDir::new(f.path().join("teams"));
    teams.publish(&[("payments.yaml", &fragment(&[Svc::new("b", B_URI, B_KEY)]))]);
    let sidecar = InProcess::start(&config_with(&f, &["teams"], Duration::from_secs(3600))).await;
    let client = sidecar.client().await;
    let ca = Ca::new("configmap CA");
    let c = Req::cert(ca.client(&ClientSpec::uri(C_URI)).forwarded()).key(C_KEY);
    assert_eq!(outcome(&mut client.clone(), &c).await, "unknown_principal");
    // A new key appears in the ConfigMap: a new symlink and a new ..data.
    teams.publish(&[
        ("payments.yaml", &fragment(&[Svc::new("b", B_URI, B_KEY)])),
        ("search.yaml", &fragment(&[Svc::new("c", C_URI, C_KEY)])),
    ]);
    until(&client, "the ConfigMap swap", &c, "allow").await;
    sidecar.sidecar.shutdown().await.unwrap();
}

/// Reload attempts with `result` in the binary's JSON log so far.
fn reloads(sidecar: &Sidecar, result: &str) -> usize {
    sidecar
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "registry_reload" && v["result"] == result)
        .count()
}

#[tokio::test]
async fn a_bad_fragment_never_replaces_the_good_set() {
    let f = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let team = f.write_fragment("teams/b.yaml", &fragment(&[Svc::new("b", B_URI, B_KEY)]));
    let config = f.write_config(&config_with(&f, &["teams"], Duration::from_millis(200)));
    let sidecar = Sidecar::start(&config).await;
    let mut client = sidecar.client().await;
    let ca = Ca::new("fragments CA");
    let b = Req::cert(ca.client(&ClientSpec::uri(B_URI)).forwarded()).key(B_KEY);
    let c = Req::cert(ca.client(&ClientSpec::uri(C_URI)).forwarded()).key(C_KEY);

    // One good change (c) and one bad one (b claims a's principal) in the
    // same set: none of it is applied, and b keeps working.
    let mut b_bad = Svc::new("b", B_URI, B_KEY);
    b_bad.principals.push(A_URI.into());
    replace(
        &team,
        &yaml(&fragment(&[b_bad, Svc::new("c", C_URI, C_KEY)])),
    );
    poll("the rejected reload", WAIT, || {
        let n = reloads(&sidecar, "failure");
        async move { (n > 0).then_some(()) }
    })
    .await;
    assert_eq!(outcome(&mut client, &b).await, "allow");
    assert_eq!(outcome(&mut client, &c).await, "unknown_principal");
    assert_eq!(reloads(&sidecar, "success"), 0);
    let log = sidecar.log_text();
    assert!(
        log.contains(&team.display().to_string())
            && log.contains(&f.registry_path().display().to_string()),
        "the rejection names both files:\n{log}"
    );

    // Fixed: the whole set is applied.
    replace(
        &team,
        &yaml(&fragment(&[
            Svc::new("b", B_URI, B_KEY),
            Svc::new("c", C_URI, C_KEY),
        ])),
    );
    until(&client, "the fixed fragment", &c, "allow").await;
}

/// Clients Check a fragment's service continuously while that fragment is
/// rewritten over and over (renames and in-place writes a reload may catch
/// half-written): the settle and retry logic covers fragments too, so not
/// one Check fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_check_fails_while_a_fragment_churns() {
    let f = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let team = f.write_fragment("teams/b.yaml", &fragment(&[Svc::new("b", B_URI, B_KEY)]));
    let config = f.write_config(&config_with(&f, &["teams"], Duration::from_millis(200)));
    let sidecar = Sidecar::start(&config).await;
    let ca = Ca::new("churn CA");
    let b = Req::cert(ca.client(&ClientSpec::uri(B_URI)).forwarded()).key(B_KEY);
    let attempts = |sidecar: &Sidecar| reloads(sidecar, "success") + reloads(sidecar, "failure");
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(sidecar.client().await);
    }
    let load = AllowLoad::start(clients, b.build());
    let mut extra = Svc::new("c", C_URI, C_KEY);
    for round in 0..20u32 {
        extra.scopes = vec![format!("scope{round}")];
        let text = yaml(&fragment(&[Svc::new("b", B_URI, B_KEY), extra.clone()]));
        let before = attempts(&sidecar);
        if round % 2 == 0 {
            replace(&team, &text);
        } else {
            std::fs::write(&team, &text).unwrap();
        }
        poll("a reload attempt", WAIT, || {
            let n = attempts(&sidecar);
            async move { (n > before).then_some(()) }
        })
        .await;
    }
    let (checks, wrong) = load.stop().await;
    assert!(checks > 50, "too few Checks");
    assert!(
        wrong.is_empty(),
        "{} failed Checks: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

#[tokio::test]
async fn sighup_reloads_every_fragment() {
    let f = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    f.write_fragment("teams/b.yaml", &fragment(&[Svc::new("b", B_URI, B_KEY)]));
    f.write_fragment("c.yaml", &fragment(&[Svc::new("c", C_URI, C_KEY)]));
    let config = f.write_config(&config_with(
        &f,
        &["teams", "c.yaml"],
        Duration::from_secs(3600),
    ));
    let sidecar = Sidecar::start(&config).await;
    let reloaded = |sidecar: &Sidecar| -> Vec<u64> {
        sidecar
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == "registry_reload" && v["result"] == "success")
            .filter_map(|v| v["services"].as_u64())
            .collect()
    };
    assert!(reloaded(&sidecar).is_empty());
    let status = std::process::Command::new("kill")
        .args(["-HUP", &sidecar.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    poll("the SIGHUP reload", WAIT, || {
        let services = reloaded(&sidecar);
        async move { (!services.is_empty()).then_some(services) }
    })
    .await;
    assert_eq!(reloaded(&sidecar), [3], "main + both fragments");
}

// ---------------------------------------------------------------------------
// The Kubernetes example: team ConfigMaps projected into one directory.
// ---------------------------------------------------------------------------

#[test]
fn kubernetes_example_projects_team_configmaps_beside_the_registry() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/kubernetes/service-auth.yaml"),
    )
    .unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|d: &serde_yaml::Value| !d.is_null())
        .collect();
    let configmap = |name: &str| -> &serde_yaml::Mapping {
        docs.iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
            .and_then(|d| d["data"].as_mapping())
            .unwrap_or_else(|| panic!("no ConfigMap {name}"))
    };
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    // A container, or a native sidecar (an init container that keeps running).
    let sidecar = ["containers", "initContainers"]
        .iter()
        .filter_map(|list| pod[*list].as_sequence())
        .flatten()
        .find(|c| c["name"] == "service-auth")
        .expect("a service-auth container");
    let config_path = sidecar["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SERVICE_AUTH_CONFIG")
        .and_then(|e| e["value"].as_str())
        .unwrap();
    // The volume mounted at `dir`.
    let volume_at = |dir: &Path| -> &serde_yaml::Value {
        let mount = sidecar["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"].as_str().map(Path::new) == Some(dir))
            .unwrap_or_else(|| panic!("nothing mounted at {}", dir.display()));
        pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap()
    };
    let config_dir = Path::new(config_path).parent().unwrap();
    let config_map = volume_at(config_dir)["configMap"]["name"].as_str().unwrap();
    let static_text = configmap(config_map)[Path::new(config_path)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()]
    .as_str()
    .unwrap();
    let static_config: StaticConfig = serde_yaml::from_str(static_text).unwrap();
    let [teams_dir] = &static_config.registry.fragments[..] else {
        panic!(
            "expected one fragment directory: {}",
            static_config.registry
        );
    };

    // The directory is one projected volume of (at least) two team ConfigMaps.
    let projected = volume_at(teams_dir)["projected"]["sources"]
        .as_sequence()
        .expect("the team directory is a projected volume");
    let teams: Vec<&str> = projected
        .iter()
        .filter_map(|s| s["configMap"]["name"].as_str())
        .collect();
    assert!(teams.len() >= 2, "{teams:?}");

    // Laid out as the kubelet would, with the main registry beside it, the
    // set loads as one registry (secrets, CA files and trust bundles replaced
    // by stand-ins).
    let f = Fixture::new(&[]);
    let ca = Ca::new("k8s example CA");
    let ca_file = f.write_file("ca.crt", ca.cert_pem());
    let stand_in = |services: &mut Vec<service_auth::config::ServiceEntry>| {
        for s in services {
            if s.ca_file.is_some() {
                s.ca_file = Some(ca_file.clone());
            }
        }
    };
    let main_dir = Path::new(&static_config.registry.main).parent().unwrap();
    let main_map = volume_at(main_dir)["configMap"]["name"].as_str().unwrap();
    let main_name = static_config
        .registry
        .main
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let mut main: RegistryFile =
        serde_yaml::from_str(configmap(main_map)[main_name].as_str().unwrap()).unwrap();
    for key in &mut main.token.keys {
        key.secret_file = Some(f.path().join("secrets/jwt.key"));
    }
    stand_in(&mut main.services);
    let bundle = f.write_file("mesh-bundle.pem", ca.cert_pem());
    for path in main.trust_domains.values_mut() {
        *path = bundle.clone();
    }
    f.write(&main);
    let mut fragment_services = 0;
    for team in &teams {
        for (name, value) in configmap(team) {
            let name = name.as_str().unwrap();
            assert!(name.ends_with(".yaml"), "{team}: {name} would be skipped");
            let mut fragment: RegistryFragment = serde_yaml::from_str(value.as_str().unwrap())
                .unwrap_or_else(|e| panic!("{team}/{name} is not a fragment: {e}"));
            let services = fragment
                .services
                .as_mut()
                .expect("a team fragment lists services");
            fragment_services += services.len();
            stand_in(services);
            f.write_fragment(&format!("teams/{name}"), &fragment);
        }
    }
    let registry = load(&paths(&f, &["teams"]));
    assert_eq!(
        registry.services().len(),
        main.services.len() + fragment_services
    );
    assert!(fragment_services >= 2);
}
