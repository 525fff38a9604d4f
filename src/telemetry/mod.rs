//! Observing the sidecar: structured logs and OTLP metrics.
//!
//! Telemetry only observes. It receives decisions after they are made and
//! never influences one; nothing here may block a Check or log a secret.
//! `export` runs the OTLP pipeline, `metrics` owns the instruments,
//! `credentials` lists what expires.

pub mod credentials;
pub mod export;
pub mod metrics;

use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;

use crate::check::Decision;
use crate::config::{ConfigError, Log, LogFormat};
use crate::registry::Registry;

/// Installs the global `tracing` subscriber (JSON or text, to stderr).
/// `RUST_LOG` overrides the configured level when set.
pub fn init_logging(log: &Log) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&log.level))
        .map_err(|e| format!("log.level {:?}: {e}", log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// Records one Check that took `elapsed`: metrics for every decision, and
/// for denials a log line with the reason, the service (when known), Envoy's
/// request id and the peer address; never a credential.
pub fn observe_check(req: &CheckRequest, decision: &Decision<'_>, elapsed: Duration) {
    metrics::record_check(decision, elapsed);
    let Decision::Deny(denial) = decision else {
        return;
    };
    let attrs = req.attributes.as_ref();
    let request_id = attrs
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .map_or("", |h| h.id.as_str());
    let peer = attrs
        .and_then(|a| a.source.as_ref())
        .and_then(|s| s.address.as_ref())
        .and_then(|a| a.address.as_ref())
        .and_then(|a| match a {
            envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s) => Some(s),
            _ => None,
        });
    let peer_address = peer.map_or("", |s| s.address.as_str());
    let peer_port = peer.map_or(0, |s| match s.port_specifier {
        Some(
            envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p),
        ) => p,
        _ => 0,
    });
    tracing::warn!(
        event = "check_denied",
        reason = denial.reason.as_str(),
        mode = denial.mode.as_str(),
        service = denial.service.unwrap_or(metrics::UNKNOWN_SERVICE),
        request_id = truncate(request_id, 128),
        peer_address = truncate(peer_address, 64),
        peer_port,
        "check denied"
    );
}

/// Bounds attacker-influenced strings before they reach a log line.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Records one registry reload attempt: one log line either way.
pub fn observe_reload(result: Result<&Registry, &[ConfigError]>) {
    metrics::record_reload(result.is_ok());
    match result {
        Ok(registry) => {
            tracing::info!(
                event = "registry_reload",
                result = "success",
                services = registry.services().len(),
                "registry reloaded"
            );
            for warning in registry.warnings() {
                tracing::warn!(event = "registry_warning", warning = %warning);
            }
        }
        Err(errors) => {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            tracing::error!(
                event = "registry_reload",
                result = "failure",
                errors = ?errors,
                "registry rejected; still serving the previous one"
            );
        }
    }
}
