//! Running and probing the sidecar: `serve`, `check-config`, `health`, and
//! `dev-pki`. The binary's edge, where library errors get context and
//! become messages.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use service_auth::config::{ListenAddr, StaticConfig};
use service_auth::registry::Registry;
use service_auth::{alloc, devpki, health, telemetry};

pub fn serve(config_path: &Path) -> anyhow::Result<()> {
    alloc::tune();
    let config = StaticConfig::load(config_path)?;
    telemetry::init_logging(&config.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(service_auth::run(&config, shutdown_signal()))?;
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

pub fn check_config(config_path: &Path) -> anyhow::Result<()> {
    let config = StaticConfig::load(config_path)?;
    match Registry::load_paths(&config.registry) {
        Ok(registry) => {
            for warning in registry.warnings() {
                eprintln!("warning: {warning}");
            }
            // Which SPIFFE trust domain vouches for each service (stderr:
            // stdout holds only the result line).
            for service in registry.services() {
                match service.trust_domains().as_slice() {
                    [] => eprintln!("service {}: no SPIFFE trust domain", service.id),
                    [one] => eprintln!("service {}: trust domain {one}", service.id),
                    many => eprintln!("service {}: trust domains {}", service.id, many.join(", ")),
                }
            }
            println!(
                "ok: {} and {} ({} services)",
                config_path.display(),
                config.registry,
                registry.services().len()
            );
            Ok(())
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            bail!("{} error(s)", errors.len());
        }
    }
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
