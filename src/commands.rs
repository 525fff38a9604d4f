//! The bodies of the subcommands: the binary's edge, where library errors
//! get context and become messages.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use service_auth::check::unix_now;
use service_auth::config::{ListenAddr, StaticConfig};
use service_auth::registry::{self, Registry};
use service_auth::{alloc, devpki, health, telemetry, token};

/// Loads the static config and its registry, joining every error into one message.
fn load(config_path: &Path) -> anyhow::Result<(StaticConfig, Registry)> {
    let config = StaticConfig::load(config_path)?;
    let registry =
        Registry::load_paths(&config.registry).map_err(service_auth::RunError::Registry)?;
    Ok((config, registry))
}

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

pub fn gen_key() -> anyhow::Result<()> {
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

pub fn gen_secret() -> anyhow::Result<()> {
    println!("{}", registry::random_secret());
    Ok(())
}

pub fn hash_key() -> anyhow::Result<()> {
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

pub fn token_issue(config_path: &Path, service_id: &str, scopes: &[String]) -> anyhow::Result<()> {
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
    let subject = token::Subject {
        service: &service.id,
        principal: service.principals.first().map_or("", String::as_str),
        scope: scope.into(),
        certificate_sha256: None,
    };
    let issued = token::issue(&registry.token, &subject, unix_now())?;
    println!("{}", issued.token);
    Ok(())
}

pub fn token_verify(config_path: &Path, token: &str) -> anyhow::Result<()> {
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
