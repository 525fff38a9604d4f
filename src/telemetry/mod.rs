//! Observing the sidecar: structured logs and OTLP metrics.
//!
//! Telemetry only observes. An [`Observer`] receives what happened (a Check's
//! attributes and decision, a reload's outcome) after it happened and never
//! influences it; nothing here may block a Check or log a secret. `export`
//! runs the OTLP pipeline, `metrics` owns the instruments, `credentials`
//! lists what expires.

pub mod credentials;
pub mod export;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::Meter;

use crate::check::Decision;
use crate::config::{Log, LogFormat};
use crate::enforcement::Disposition;
use crate::registry::{LoadError, Registry, Snapshot};
use crate::request::Attributes;
use crate::throttle::Throttle;
use credentials::ExpirySources;
use metrics::Instruments;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log.level {level:?}: {error}")]
    Level {
        level: String,
        error: tracing_subscriber::filter::ParseError,
    },
    #[error("cannot install the log subscriber: {0}")]
    Install(String),
}

/// Installs the global `tracing` subscriber (JSON or text, to stderr).
/// `RUST_LOG` overrides the configured level when set.
pub fn init_logging(log: &Log) -> Result<(), LogError> {
    let filter = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(_) => {
            tracing_subscriber::EnvFilter::try_new(&log.level).map_err(|error| LogError::Level {
                level: log.level.clone(),
                error,
            })?
        }
    };
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
    result.map_err(|e| LogError::Install(e.to_string()))
}

/// One decided Check, as telemetry sees it.
pub struct CheckEvent<'a> {
    /// What the request said; `None` when it could not be read.
    pub attributes: Option<&'a Attributes<'a>>,
    pub decision: &'a Decision<'a>,
    /// Whether a denial was refused or only reported (`would_deny`).
    pub disposition: Disposition,
    /// The kid that signed the issued token (issue mode, allowed).
    pub issued_kid: Option<&'a str>,
    /// More about a denial decided outside the decision (why a request
    /// could not be read), for the log line.
    pub detail: Option<&'a dyn std::fmt::Display>,
    pub elapsed: Duration,
}

/// Where the server and the reloader report what happened. Cheap to clone.
#[derive(Clone, Default)]
pub struct Observer {
    instruments: Option<Arc<Instruments>>,
}

impl Observer {
    /// An observer that logs but records no metrics.
    pub fn logs_only() -> Self {
        Observer::default()
    }

    /// An observer that also records metrics on `meter`; the gauges read
    /// `snapshot`, `expiries` and `throttle` when collected.
    pub fn with_metrics(
        meter: &Meter,
        snapshot: Snapshot,
        expiries: ExpirySources,
        throttle: Arc<Throttle>,
    ) -> Self {
        Observer {
            instruments: Some(Arc::new(Instruments::new(
                meter, snapshot, expiries, throttle,
            ))),
        }
    }

    /// Records one Check: metrics for every decision, and for denials (and
    /// denials only reported) a log line with the reason, the service (when
    /// known), Envoy's request id and the peer address; never a credential.
    pub fn check(&self, event: &CheckEvent<'_>) {
        if let Some(m) = &self.instruments {
            m.record_check(
                event.decision,
                event.disposition,
                event.issued_kid,
                event.elapsed,
            );
        }
        let Decision::Deny(denial) = event.decision else {
            return;
        };
        let request_id = event.attributes.map_or("", |a| a.request_id);
        let (peer_address, peer_port) = event
            .attributes
            .and_then(|a| a.source_address)
            .unwrap_or(("", 0));
        let (name, message) = match event.disposition {
            Disposition::Enforced => ("check_denied", "check denied"),
            Disposition::Reported => ("check_would_deny", "check would be denied (report mode)"),
        };
        tracing::warn!(
            event = name,
            reason = denial.reason.as_str(),
            mode = denial.mode.as_str(),
            service = denial.service.unwrap_or(metrics::UNKNOWN_SERVICE),
            request_id = truncate(request_id, 128),
            peer_address = truncate(peer_address, 64),
            peer_port,
            detail = event.detail.map(tracing::field::display),
            "{message}"
        );
    }

    /// Records one registry reload attempt: one log line either way.
    pub fn reload(&self, result: Result<&Registry, &[LoadError]>) {
        if let Some(m) = &self.instruments {
            m.record_reload(result.is_ok());
        }
        match result {
            Ok(registry) => {
                tracing::info!(
                    event = "registry_reload",
                    result = "success",
                    services = registry.services().len(),
                    "registry reloaded"
                );
                log_registry_warnings(registry);
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
}

/// Logs what an operator should know about a registry that loaded: its
/// warnings and the development secret.
pub fn log_registry_warnings(registry: &Registry) {
    if registry.uses_dev_secret {
        tracing::warn!(
            event = "dev_signing_secret",
            "signing tokens with the bundled DEVELOPMENT secret: anyone with this repository can forge tokens; generate your own with `service-auth gen-secret`"
        );
    }
    for warning in registry.warnings() {
        tracing::warn!(event = "registry_warning", warning = %warning);
    }
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
