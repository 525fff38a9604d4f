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
use crate::config::LogFormat;
use crate::enforcement::Disposition;
use crate::identity::{San, SanKind};
use crate::registry::{LoadError, Registry, Snapshot};
use crate::request::Attributes;
use crate::throttle::Throttle;
use credentials::ExpirySources;
use metrics::Instruments;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot install the log subscriber: {0}")]
    Install(String),
}

/// The levels a log filter may name (in any case).
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// Why a log filter (`log.level`, `RUST_LOG`) is refused.
#[derive(Debug, thiserror::Error)]
pub enum BadLogFilter {
    /// `tracing` would read a bare word as a target name and log nothing
    /// else, so a directive must be a level or end in `=level`.
    #[error(
        "{0:?} is not a level, nor target=level: use error, warn, info, debug or trace, or directives such as info,service_auth=debug"
    )]
    NoLevel(String),
    #[error("{0}")]
    Syntax(tracing_subscriber::filter::ParseError),
}

/// Parses a log filter: comma-separated directives, each a level or
/// `target[span]=level`, the level one of [`LOG_LEVELS`]. `serve` and
/// `check-config` both read `log.level` (or `RUST_LOG`) through this.
pub fn log_filter(spec: &str) -> Result<tracing_subscriber::EnvFilter, BadLogFilter> {
    let is_level = |word: &str| LOG_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(word));
    let directives: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return Err(BadLogFilter::NoLevel(spec.to_owned()));
    }
    for directive in &directives {
        // The level is after the last `=`; without one, the whole directive.
        let level = directive
            .rsplit_once('=')
            .map_or(*directive, |(_, level)| level);
        if !is_level(level.trim()) {
            return Err(BadLogFilter::NoLevel((*directive).to_owned()));
        }
    }
    // `tracing` itself does not trim around commas.
    tracing_subscriber::EnvFilter::try_new(directives.join(",")).map_err(BadLogFilter::Syntax)
}

/// Installs the global `tracing` subscriber (JSON or text, to stderr) with
/// `filter` (see [`log_filter`]).
pub fn init_logging(
    filter: tracing_subscriber::EnvFilter,
    format: LogFormat,
) -> Result<(), LogError> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        // Colour codes belong on a terminal, not in a file or a collector.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
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
    /// The SANs presented, for an `unknown_principal` denial: logged
    /// (bounded and escaped) so an operator can tell what to register.
    /// Never a metric attribute: the caller chooses them.
    pub presented_sans: Option<&'a [San]>,
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
            presented_sans = event
                .presented_sans
                .map(|s| tracing::field::display(SanList(s))),
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

/// At most this many presented SANs are logged, each cut at
/// [`MAX_LOGGED_SAN`] bytes: a certificate may carry many, and long ones.
const MAX_LOGGED_SANS: usize = 4;
const MAX_LOGGED_SAN: usize = 256;

/// Presented SANs for a log line: `uri "spiffe://…", dns "a.example"`, each
/// quoted and escaped (`Debug`), so a hostile value cannot forge log syntax.
struct SanList<'a>(&'a [San]);

impl std::fmt::Display for SanList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, san) in self.0.iter().take(MAX_LOGGED_SANS).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            let kind = match san.kind {
                SanKind::Uri => "uri",
                SanKind::Dns => "dns",
            };
            write!(f, "{kind} {:?}", truncate(&san.value, MAX_LOGGED_SAN))?;
        }
        if self.0.len() > MAX_LOGGED_SANS {
            write!(f, " and {} more", self.0.len() - MAX_LOGGED_SANS)?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presented_sans_are_quoted_escaped_and_bounded() {
        let sans = [
            San::new(SanKind::Uri, "spiffe://mesh.test/ns/a/sa/b"),
            San::new(SanKind::Dns, "a.example"),
        ];
        assert_eq!(
            SanList(&sans).to_string(),
            r#"uri "spiffe://mesh.test/ns/a/sa/b", dns "a.example""#
        );
        let hostile = [San::new(SanKind::Uri, "x\" forged=\"1\n")];
        assert_eq!(SanList(&hostile).to_string(), r#"uri "x\" forged=\"1\n""#);
        let many: Vec<San> = (0..10)
            .map(|i| San::new(SanKind::Dns, &format!("{}{i}", "a".repeat(1000))))
            .collect();
        let text = SanList(&many).to_string();
        assert!(text.ends_with(" and 6 more"), "{text}");
        assert!(
            text.len() < MAX_LOGGED_SANS * (MAX_LOGGED_SAN + 10) + 20,
            "{text}"
        );
        assert_eq!(SanList(&[]).to_string(), "none");
    }
}
