//! Wiring the sidecar together: everything `service-auth serve` runs, as a
//! library call that tests run in-process.
//!
//! [`Sidecar::start`] binds the listener (health NOT_SERVING) and the
//! optional admin listener, starts the metrics pipeline, and loads the
//! registry off the workers; once it is installed, health turns SERVING and
//! the reloader keeps it current.
//! [`run`] does that and serves until a shutdown future resolves.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::admin;
use crate::config::{ListenAddr, RegistryPaths, StaticConfig};
use crate::listener::{self, ListenError, TlsState};
use crate::preflight::{self, Preflight, PreflightError};
use crate::registry::{LoadError, Registry, Snapshot};
use crate::reload::Reloader;
use crate::server::{self, AuthzService, Readiness};
use crate::telemetry::credentials::{Expiry, ExpirySource, ExpirySources};
use crate::telemetry::export::{MetricsExport, TelemetryError};
use crate::telemetry::{self, Observer};
use crate::throttle::Throttle;

/// How long shutdown waits for the last metrics export: a dead or hanging
/// collector must not keep a terminating pod alive.
const METRICS_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the sidecar did not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// What `preflight` refused (the same as `check-config` reports).
    #[error("{}", joined("refusing to start", .0))]
    Preflight(Vec<PreflightError>),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error("{}", joined("invalid registry", .0))]
    Registry(Vec<LoadError>),
    /// The cause is the source (tonic's own message says only "transport
    /// error"), for the caller to print with the chain.
    #[error("the gRPC server failed")]
    Serve(#[from] tonic::transport::Error),
    #[error("a sidecar task panicked")]
    Panicked,
}

/// One error as it is; several under a heading, one per line.
fn joined<E: std::fmt::Display>(heading: &str, errors: &[E]) -> String {
    match errors {
        [one] => one.to_string(),
        many => {
            let lines: Vec<String> = many.iter().map(ToString::to_string).collect();
            format!("{heading}:\n  {}", lines.join("\n  "))
        }
    }
}

/// A running sidecar.
pub struct Sidecar {
    local_addr: ListenAddr,
    admin_addr: Option<ListenAddr>,
    snapshot: Snapshot,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    loaded: Option<oneshot::Receiver<Result<(), Vec<LoadError>>>>,
    /// The registry loader, then reloader; the listener's TLS watcher.
    background: Vec<JoinHandle<()>>,
    metrics: Option<MetricsExport>,
}

impl Sidecar {
    /// Checks `config` as `check-config` does ([`preflight::check`], with
    /// the process environment), then binds and starts serving
    /// (NOT_SERVING until the registry is installed). Returns once the
    /// listener is bound; see [`Sidecar::ready`].
    pub async fn start(config: &StaticConfig) -> Result<Sidecar, RunError> {
        let checked =
            preflight::check(config, |var| std::env::var(var).ok()).map_err(RunError::Preflight)?;
        Sidecar::start_checked(config, checked).await
    }

    /// [`Sidecar::start`] with the settings `preflight::check` returned for
    /// this `config` (`serve` installs the log filter from them first).
    pub async fn start_checked(
        config: &StaticConfig,
        checked: Preflight,
    ) -> Result<Sidecar, RunError> {
        let snapshot = Snapshot::default();
        let mut background = Vec::new();
        let mut expiries = ExpirySources::default();
        let tls = match checked.tls {
            Some(tls) => {
                let state = Arc::new(TlsState {
                    config: ArcSwap::from_pointee(tls.server),
                    not_after: tls.not_after.into(),
                });
                expiries
                    .0
                    .push(listener_expiry(state.clone(), &tls.files.cert));
                background.push(tokio::spawn(listener::watch_tls(
                    tls.files,
                    state.clone(),
                    config.reload.poll_interval,
                )));
                Some(state)
            }
            None => None,
        };
        let throttle = Arc::new(Throttle::new());
        let (metrics, observer) = match &checked.export {
            Some(settings) => {
                let metrics = MetricsExport::start(settings)?;
                let observer = Observer::with_metrics(
                    &metrics.meter(),
                    snapshot.clone(),
                    expiries,
                    throttle.clone(),
                );
                tracing::info!(
                    event = "metrics_export",
                    protocol = ?settings.protocol,
                    endpoint = settings.endpoint.as_deref().unwrap_or("(from OTEL_EXPORTER_OTLP_METRICS_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT)"),
                    interval = ?settings.interval,
                    service_name = %settings.service_name,
                );
                (Some(metrics), observer)
            }
            None => (None, Observer::logs_only()),
        };

        let (incoming, local_addr) =
            listener::bind(&config.listen.grpc, tls.clone(), &config.limits)?;
        tracing::info!(
            event = "listening",
            address = %local_addr,
            tls = tls.is_some(),
        );
        let admin_addr = match &config.admin {
            Some(settings) => {
                let (incoming, addr) = admin::bind(settings)?;
                tracing::info!(event = "admin_listening", address = %addr);
                background.push(tokio::spawn(admin::serve(
                    incoming,
                    snapshot.clone(),
                    settings.header_timeout,
                )));
                Some(addr)
            }
            None => None,
        };
        let readiness = Readiness::new().await;
        let (stop, stopped) = oneshot::channel::<()>();
        let limits = config.limits.clone();
        let authz = AuthzService::new(snapshot.clone(), observer.clone(), throttle);
        let server_readiness = readiness.clone();
        let server = tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            server::serve(incoming, authz, server_readiness, &limits, stopped).await
        });

        let (loaded_tx, loaded) = oneshot::channel();
        background.push(tokio::spawn(load_then_reload(
            config.registry.clone(),
            config.reload.clone(),
            snapshot.clone(),
            readiness,
            observer,
            loaded_tx,
        )));
        Ok(Sidecar {
            local_addr,
            admin_addr,
            snapshot,
            stop: Some(stop),
            server,
            loaded: Some(loaded),
            background,
            metrics,
        })
    }

    /// The address the listener bound (a real port where the config said 0).
    pub fn local_addr(&self) -> &ListenAddr {
        &self.local_addr
    }

    /// The address the admin listener bound, when `admin:` is configured.
    pub fn admin_addr(&self) -> Option<&ListenAddr> {
        self.admin_addr.as_ref()
    }

    /// The registry handle Checks read.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Waits until the first registry is installed (SERVING), or returns
    /// why it could not be loaded. Later calls return at once.
    pub async fn ready(&mut self) -> Result<(), RunError> {
        match self.loaded.take() {
            Some(loaded) => match loaded.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(errors)) => Err(RunError::Registry(errors)),
                Err(_) => Err(RunError::Panicked),
            },
            None => Ok(()),
        }
    }

    /// Stops accepting, lets in-flight Checks finish (bounded), stops the
    /// background tasks and flushes metrics (bounded).
    pub async fn shutdown(mut self) -> Result<(), RunError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = (&mut self.server).await;
        for task in &self.background {
            task.abort();
        }
        if let Some(metrics) = self.metrics.take() {
            // Off the workers: the exporter's channel needs them while the
            // flush waits (the tonic exporter deadlock, see telemetry::export).
            let flushed =
                tokio::task::spawn_blocking(move || metrics.shutdown(METRICS_FLUSH_TIMEOUT)).await;
            match flushed {
                Ok(Ok(())) => tracing::info!(event = "metrics_flushed"),
                Ok(Err(e)) => tracing::warn!(event = "metrics_flush_failed", error = %e),
                Err(e) => tracing::warn!(event = "metrics_flush_failed", error = %e),
            }
        }
        match served {
            Ok(result) => Ok(result?),
            Err(_) => Err(RunError::Panicked),
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        // A sidecar dropped without `shutdown` (a failed test) must not leave
        // its tasks serving.
        self.server.abort();
        for task in &self.background {
            task.abort();
        }
    }
}

/// Runs the sidecar until `shutdown` resolves, then drains and stops.
/// `checked` is what `preflight::check` returned for `config`.
pub async fn run(
    config: &StaticConfig,
    checked: Preflight,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let mut sidecar = Sidecar::start_checked(config, checked).await?;
    tokio::pin!(shutdown);
    tokio::select! {
        ready = sidecar.ready() => {
            if let Err(e) = ready {
                let _ = sidecar.shutdown().await;
                return Err(e);
            }
        }
        () = &mut shutdown => return sidecar.shutdown().await,
    }
    shutdown.await;
    let result = sidecar.shutdown().await;
    tracing::info!(event = "stopped", "drained in-flight checks; exiting");
    result
}

/// Loads the registry off the workers, installs it and reports SERVING,
/// then keeps it current.
async fn load_then_reload(
    paths: RegistryPaths,
    reload: crate::config::Reload,
    snapshot: Snapshot,
    readiness: Readiness,
    observer: Observer,
    loaded: oneshot::Sender<Result<(), Vec<LoadError>>>,
) {
    let load_paths = paths.clone();
    let attempt = tokio::task::spawn_blocking(move || Registry::load_tracked(&load_paths)).await;
    let Ok(attempt) = attempt else {
        // Dropping `loaded` reports the panic.
        return;
    };
    let registry = match attempt.result {
        Ok(registry) => registry,
        Err(errors) => {
            let _ = loaded.send(Err(errors));
            return;
        }
    };
    telemetry::log_registry_warnings(&registry);
    tracing::info!(
        event = "registry_loaded",
        path = %paths,
        services = registry.services().len(),
    );
    snapshot.store(Arc::new(registry));
    let reloader = Reloader::start(paths, attempt.sources, snapshot, observer, &reload);
    readiness.serving().await;
    let _ = loaded.send(Ok(()));
    reloader.run().await;
}

/// The listener certificate's expiry, read from its live TLS state so a
/// rotation shows at once.
fn listener_expiry(state: Arc<TlsState>, cert: &std::path::Path) -> ExpirySource {
    let id = cert
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    Arc::new(move || {
        Some(Expiry {
            kind: "listener_certificate",
            service: "listener".to_owned(),
            id: id.clone(),
            not_after: state.not_after.load(std::sync::atomic::Ordering::Relaxed),
        })
    })
}
