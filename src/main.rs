//! The `service-auth` command line: the binary's edge, where library errors
//! become messages and exit codes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};

use service_auth::config::{self, ConfigError, ListenAddr, StaticConfig};
use service_auth::registry::{self, Registry};
use service_auth::reload::Reloader;
use service_auth::server::{Readiness, RegistrySlot};
use service_auth::telemetry::export::{ExportSettings, MetricsExport};
use service_auth::{devpki, health, listener, server, telemetry, token};

#[derive(Parser)]
#[command(
    name = "service-auth",
    version,
    about = "Envoy external-authorization sidecar"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Static config file.
    #[arg(long, env = "SERVICE_AUTH_CONFIG", default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Serve(ConfigArg),
    /// Validate the config, the registry and every file they name.
    CheckConfig(ConfigArg),
    /// Print a new random API key and its registry entry.
    GenKey,
    /// Read an API key on stdin and print its registry hash.
    HashKey,
    /// Print a new HS256 signing secret for a key file.
    GenSecret,
    /// Issue or verify mesh tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Ask a running sidecar's gRPC health service; exit 0 only when SERVING.
    Health {
        /// `IP:PORT` or `unix:PATH`; default: `listen.grpc` of the config.
        #[arg(long)]
        addr: Option<ListenAddr>,
        #[command(flatten)]
        config: ConfigArg,
        /// Give up (and fail) after this long, e.g. `2s`.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Generate a DEVELOPMENT CA, certificates, API keys, signing secret and
    /// configs for the docker-compose demo into DIR. Prints the API keys once.
    DevPki {
        dir: PathBuf,
        /// Overwrite existing files (invalidates what was handed out before).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue a token exactly as a Check would; prints only the token.
    Issue {
        #[command(flatten)]
        config: ConfigArg,
        /// Registered service id (the `sub` claim).
        #[arg(long)]
        service: String,
        /// Scope to include (repeatable); default: all of the service's scopes.
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// Verify a token and print its claims as JSON.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// The token, or `-` (the default) to read it from stdin.
        #[arg(default_value = "-")]
        token: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(c) => serve(&c.config),
        Command::CheckConfig(c) => return check_config(&c.config),
        Command::GenKey => gen_key(),
        Command::HashKey => hash_key(),
        Command::GenSecret => {
            println!("{}", registry::random_secret());
            Ok(())
        }
        Command::Token(TokenCommand::Issue {
            config,
            service,
            scopes,
        }) => token_issue(&config.config, &service, &scopes),
        Command::Token(TokenCommand::Verify { config, token }) => {
            token_verify(&config.config, &token)
        }
        Command::Health {
            addr,
            config,
            timeout,
        } => health(addr, &config.config, timeout),
        Command::DevPki { dir, force } => dev_pki(&dir, force),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("service-auth: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the static config and its registry, joining every error into one message.
fn load(config_path: &Path) -> anyhow::Result<(StaticConfig, Registry)> {
    let config = StaticConfig::load(config_path)?;
    let registry = Registry::load(&config.registry).map_err(|errors| joined(&errors))?;
    Ok((config, registry))
}

fn joined(errors: &[ConfigError]) -> anyhow::Error {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    anyhow::anyhow!("invalid registry:\n  {}", lines.join("\n  "))
}

/// How long shutdown waits for the last metrics export: a dead or hanging
/// collector must not keep a terminating pod alive.
const METRICS_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// glibc adapts its trim and mmap thresholds upwards after large frees and
/// then keeps tens of MiB that a registry reload freed. Fixed thresholds
/// give large parse buffers back to the OS: with a 10,000-service registry,
/// peak RSS during reloads drops from ~65 to ~53 MiB and the steady state
/// from ~36 to ~17 MiB (see the README's benchmark).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn serve(config_path: &Path) -> anyhow::Result<()> {
    tune_allocator();
    let config = StaticConfig::load(config_path)?;
    telemetry::init_logging(&config.log).map_err(anyhow::Error::msg)?;
    let export = ExportSettings::resolve(&config.telemetry, |var| std::env::var(var).ok())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let slot = RegistrySlot::default();
    let metrics = match &export {
        Some(settings) => {
            // The gRPC exporter's channel is spawned on the runtime.
            let _context = runtime.enter();
            let metrics = MetricsExport::start(settings, slot.clone())?;
            tracing::info!(
                event = "metrics_export",
                protocol = ?settings.protocol,
                endpoint = settings.endpoint.as_deref().unwrap_or("(from OTEL_EXPORTER_OTLP_* environment)"),
                interval = ?settings.interval,
                service_name = %settings.service_name,
            );
            Some(metrics)
        }
        None => None,
    };
    let result = runtime.block_on(run(&config, slot));
    // Flush from this thread, outside the runtime's workers: the exporter's
    // channel needs them running while the flush waits (PITFALLS: tonic
    // exporter deadlock).
    if let Some(metrics) = metrics {
        match metrics.shutdown(METRICS_FLUSH_TIMEOUT) {
            Ok(()) => tracing::info!(event = "metrics_flushed"),
            Err(e) => tracing::warn!(event = "metrics_flush_failed", error = %e),
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Listens first (health NOT_SERVING), then loads the registry off the
/// workers, installs it (SERVING) and serves until SIGTERM or Ctrl-C.
async fn run(config: &StaticConfig, slot: RegistrySlot) -> anyhow::Result<()> {
    let tls = match &config.listen.tls {
        Some(files) => {
            let (tls_config, not_after) = listener::load_tls(files).context("listen.tls")?;
            let state = Arc::new(listener::TlsState {
                config: ArcSwap::from_pointee(tls_config),
                not_after: not_after.into(),
            });
            let id = files
                .cert
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            telemetry::credentials::track_listener_certificate(state.clone(), id);
            tokio::spawn(listener::watch_tls(
                files.clone(),
                state.clone(),
                config.reload.poll_interval,
            ));
            Some(state)
        }
        None => None,
    };
    let incoming = listener::bind(&config.listen.grpc, tls.clone(), &config.limits)?;
    tracing::info!(
        event = "listening",
        address = %config.listen.grpc,
        tls = tls.is_some(),
    );
    let readiness = Readiness::new(slot).await;
    let readiness_for_server = readiness.clone();
    let (abort, aborted) = tokio::sync::oneshot::channel::<()>();
    let stop = async {
        tokio::select! {
            () = shutdown_signal() => {}
            _ = aborted => {}
        }
    };
    let limits = config.limits.clone();
    let server =
        tokio::spawn(
            async move { server::serve(incoming, readiness_for_server, &limits, stop).await },
        );

    let path = config.registry.clone();
    let loaded = tokio::task::spawn_blocking(move || Registry::load(&path))
        .await
        .context("loading the registry panicked")?;
    let registry = match loaded {
        Ok(registry) => registry,
        Err(errors) => {
            let _ = abort.send(());
            let _ = server.await;
            return Err(joined(&errors));
        }
    };
    if registry.uses_dev_secret {
        tracing::warn!(
            event = "dev_signing_secret",
            "signing tokens with the bundled DEVELOPMENT secret: anyone with this repository can forge tokens; generate your own with `service-auth gen-secret`"
        );
    }
    tracing::info!(
        event = "registry_loaded",
        path = %config.registry.display(),
        services = registry.services().len(),
    );
    for warning in registry.warnings() {
        tracing::warn!(event = "registry_warning", warning = %warning);
    }
    let shared = Arc::new(ArcSwap::from_pointee(registry));
    let reloader = Reloader::start(
        config.registry.clone(),
        shared.clone(),
        config.reload.poll_interval,
    );
    tokio::spawn(reloader.run());
    readiness.serving(shared).await;
    server.await.context("the server task panicked")??;
    tracing::info!(event = "stopped", "drained in-flight checks; exiting");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        // Without a SIGTERM handler, Ctrl-C still stops us.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!(
        event = "shutdown",
        "stop accepting; draining in-flight checks"
    );
}

fn check_config(config_path: &Path) -> ExitCode {
    let config = match StaticConfig::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match Registry::load(&config.registry) {
        Ok(registry) => {
            for warning in registry.warnings() {
                eprintln!("warning: {warning}");
            }
            println!(
                "ok: {} and {} ({} services)",
                config_path.display(),
                config.registry.display(),
                registry.services().len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{} error(s)", errors.len());
            ExitCode::FAILURE
        }
    }
}

fn gen_key() -> anyhow::Result<()> {
    let key = registry::random_secret();
    let hash = hex::encode(registry::hash_api_key(key.as_bytes()));
    let id = time::OffsetDateTime::now_utc().date().to_string();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{key}")?;
    writeln!(out, "# registry entry (under the service's api_keys):")?;
    writeln!(out, "- id: {id}")?;
    writeln!(out, "  sha256: \"{hash}\"")?;
    Ok(())
}

fn hash_key() -> anyhow::Result<()> {
    let mut key = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut key)
        .context("cannot read the key from stdin")?;
    let key = key.trim_end_matches(['\n', '\r']);
    if key.is_empty() {
        bail!("no key on stdin");
    }
    println!("{}", hex::encode(registry::hash_api_key(key.as_bytes())));
    Ok(())
}

fn token_issue(config_path: &Path, service_id: &str, scopes: &[String]) -> anyhow::Result<()> {
    let (_, registry) = load(config_path)?;
    let service = registry
        .service(service_id)
        .with_context(|| format!("no service {service_id:?} in the registry"))?;
    if let Some(bad) = scopes.iter().find(|s| !service.allows_scope(s)) {
        bail!("scope {bad:?} is not allowed for service {service_id:?}");
    }
    let scope = if scopes.is_empty() {
        service.all_scopes.clone()
    } else {
        scopes.join(" ")
    };
    let principal = service.principals.first().map_or("", String::as_str);
    let subject = token::Subject {
        service: &service.id,
        principal,
        scope: &scope,
        certificate_sha256: None,
    };
    let issued = token::issue(&registry.token, subject, unix_now())?;
    println!("{}", issued.token);
    Ok(())
}

fn token_verify(config_path: &Path, token: &str) -> anyhow::Result<()> {
    let (_, registry) = load(config_path)?;
    let mut input = String::new();
    let token = if token == "-" {
        std::io::stdin()
            .take(token::MAX_TOKEN_LEN as u64 + 2)
            .read_to_string(&mut input)
            .context("cannot read the token from stdin")?;
        input.trim()
    } else {
        token
    };
    let verified = token::verify(&registry.token, token, unix_now())
        .map_err(|e| anyhow::anyhow!("invalid token ({}): {e}", e.as_str()))?;
    println!("{}", serde_json::to_string_pretty(&verified.claims)?);
    Ok(())
}

fn health(addr: Option<ListenAddr>, config_path: &Path, timeout: Duration) -> anyhow::Result<()> {
    let addr = match addr {
        Some(addr) => addr,
        None => StaticConfig::load(config_path)?.listen.grpc,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(health::probe(&addr, timeout))?;
    println!("SERVING");
    Ok(())
}

/// Prints the API keys as `export` lines and comments, so the output can be
/// `eval`ed into a shell for the README's curl walk-through.
fn dev_pki(dir: &Path, force: bool) -> anyhow::Result<()> {
    let generated = devpki::generate(dir, force)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "# DEVELOPMENT PKI written to {}. Not for production.",
        dir.display()
    )?;
    writeln!(
        out,
        "# API keys, shown only now (the registry stores their SHA-256):"
    )?;
    for service in &generated.services {
        writeln!(
            out,
            "export {}_API_KEY={}  # {}: cert {}, key {}",
            service.id.to_uppercase(),
            service.api_key,
            service.principal,
            service.cert.display(),
            service.key.display()
        )?;
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
