//! Running and probing the sidecar: `serve`, `check-config`, `health`, and
//! `dev-pki`. The binary's edge, where library errors get context and
//! become messages.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use service_auth::config::{ListenAddr, ListenTls, StaticConfig};
use service_auth::registry::Registry;
use service_auth::{RunError, alloc, devpki, health, preflight, telemetry};

/// Looks an environment variable up, for `preflight`.
fn env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

pub fn serve(config_path: &Path) -> anyhow::Result<()> {
    alloc::tune();
    let config = StaticConfig::load(config_path)?;
    let checked = preflight::check(&config, env).map_err(RunError::Preflight)?;
    telemetry::init_logging(checked.log_filter.clone(), config.log.format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(service_auth::run(&config, checked, shutdown_signal()))?;
    runtime.shutdown_timeout(Duration::from_secs(1));
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

/// Runs every check `serve` runs at start (the static config, `preflight`,
/// the registry) and reports every error at once: the result line alone on
/// stdout; warnings, errors and the error count on stderr.
pub fn check_config(config_path: &Path) -> anyhow::Result<()> {
    let mut errors: Vec<String> = Vec::new();
    let config = match StaticConfig::load_partial(config_path) {
        Ok(config) => Some(config),
        Err(refused) => {
            errors.extend(refused.errors.iter().map(ToString::to_string));
            refused.value.map(|config| *config)
        }
    };
    // Without a static config there is no registry to check.
    let Some(config) = config else {
        return failed(&errors);
    };
    if let Err(problems) = preflight::check(&config, env) {
        errors.extend(problems.iter().map(|e| match e.in_config_file() {
            true => format!("{}: {e}", config_path.display()),
            false => e.to_string(),
        }));
    }
    if let Some(warning) = config
        .listen
        .tls
        .as_ref()
        .and_then(ListenTls::allow_list_warning)
    {
        eprintln!("warning: {warning}");
    }
    let services = match Registry::load_paths(&config.registry) {
        Ok(registry) => {
            for warning in registry.warnings() {
                eprintln!("warning: {warning}");
            }
            // Which SPIFFE trust domain vouches for each service.
            for service in registry.services() {
                match service.trust_domains().as_slice() {
                    [] => eprintln!("service {}: no SPIFFE trust domain", service.id),
                    [one] => eprintln!("service {}: trust domain {one}", service.id),
                    many => eprintln!("service {}: trust domains {}", service.id, many.join(", ")),
                }
            }
            registry.services().len()
        }
        Err(invalid) => {
            errors.extend(invalid.iter().map(ToString::to_string));
            0
        }
    };
    if !errors.is_empty() {
        return failed(&errors);
    }
    println!(
        "ok: {} and {} ({services} {})",
        config_path.display(),
        config.registry,
        if services == 1 { "service" } else { "services" }
    );
    Ok(())
}

/// Prints each error on its own line and fails with their count.
fn failed(errors: &[String]) -> anyhow::Result<()> {
    for e in errors {
        eprintln!("{e}");
    }
    bail!("{} error(s)", errors.len());
}

pub fn health(
    addr: Option<ListenAddr>,
    tls: Option<health::ProbeTls>,
    config_path: &Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    let addr = match addr {
        Some(addr) => addr,
        None => StaticConfig::load(config_path)?.listen.grpc,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(health::probe(&addr, tls.as_ref(), timeout))?;
    println!("SERVING");
    Ok(())
}

/// Prints the API keys as `export` lines and comments, so the output can be
/// `eval`ed into a shell for the README's curl walk-through.
pub fn dev_pki(dir: &Path, force: bool) -> anyhow::Result<()> {
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
