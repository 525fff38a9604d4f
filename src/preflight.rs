//! Everything `serve` checks in its static config before it binds, as one
//! step that `check-config` runs too: the log filter, the listener's TLS
//! files, the OTLP settings. It reads files and the environment; it binds
//! nothing, starts no exporter and contacts no collector.
//!
//! The static config's own rules are `config`'s and the registry's are
//! `registry`'s; both commands run those as well, so a config that passes
//! all three starts (unless an address is taken or a socket path cannot be
//! written, which only binding tells).

use rustls::ServerConfig;
use tracing_subscriber::EnvFilter;

use crate::config::{ListenTls, StaticConfig};
use crate::listener::{self, TlsError};
use crate::telemetry::export::{ExportSettings, TelemetryError};
use crate::telemetry::{self, BadLogFilter};

/// The checked settings `serve` starts from.
pub struct Preflight {
    /// `RUST_LOG` when set, else `log.level`.
    pub log_filter: EnvFilter,
    /// `listen.tls`, loaded; `None`: plaintext.
    pub tls: Option<CheckedTls>,
    /// OTLP export, the config merged with the environment; `None`: off.
    pub export: Option<ExportSettings>,
}

/// The listener's TLS files and what they hold: the listener serves
/// these, and watches these files for changes.
pub struct CheckedTls {
    pub files: ListenTls,
    pub server: ServerConfig,
    /// The leaf certificate's `notAfter`, Unix seconds.
    pub not_after: i64,
}

/// A setting `serve` would refuse.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("log.level: {0}")]
    LogLevel(BadLogFilter),
    #[error("RUST_LOG={value:?}: {problem}")]
    RustLog {
        value: String,
        problem: BadLogFilter,
    },
    #[error(transparent)]
    Tls(TlsError),
    #[error(transparent)]
    Telemetry(TelemetryError),
}

impl PreflightError {
    /// Whether the setting is in the static config file; otherwise it is an
    /// environment variable.
    pub fn in_config_file(&self) -> bool {
        match self {
            PreflightError::LogLevel(_) | PreflightError::Tls(_) => true,
            PreflightError::RustLog { .. } => false,
            PreflightError::Telemetry(e) => matches!(e, TelemetryError::ConfigEndpoint { .. }),
        }
    }
}

/// Checks `config` (already parsed and validated by `config`) as `serve`
/// would at start, with `env` looking up environment variables. Returns
/// every problem at once.
pub fn check(
    config: &StaticConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Preflight, Vec<PreflightError>> {
    let mut errors = Vec::new();
    // The file must be right even while RUST_LOG overrides it.
    let file_filter = telemetry::log_filter(&config.log.level)
        .map_err(|e| errors.push(PreflightError::LogLevel(e)))
        .ok();
    let log_filter = match env("RUST_LOG").filter(|v| !v.trim().is_empty()) {
        Some(value) => telemetry::log_filter(&value)
            .map_err(|problem| errors.push(PreflightError::RustLog { value, problem }))
            .ok(),
        None => file_filter,
    };
    let tls = match &config.listen.tls {
        Some(files) => listener::load_tls(files)
            .map(|(server, not_after)| {
                Some(CheckedTls {
                    files: files.clone(),
                    server,
                    not_after,
                })
            })
            .map_err(|e| errors.extend(e.0.into_iter().map(PreflightError::Tls)))
            .ok(),
        None => Some(None),
    };
    let export = ExportSettings::resolve(&config.telemetry, env)
        .map_err(|e| errors.push(PreflightError::Telemetry(e)))
        .ok();
    match (log_filter, tls, export) {
        (Some(log_filter), Some(tls), Some(export)) if errors.is_empty() => Ok(Preflight {
            log_filter,
            tls,
            export,
        }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> StaticConfig {
        let text = format!("listen:\n  grpc: 127.0.0.1:1\nregistry: r.yaml\n{extra}");
        serde_yaml::from_str(&text).unwrap()
    }

    fn errors(config: &StaticConfig, env: &[(&str, &str)]) -> Vec<String> {
        let lookup = |var: &str| {
            env.iter()
                .find(|(k, _)| *k == var)
                .map(|(_, v)| (*v).to_owned())
        };
        match check(config, lookup) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn levels_and_directives_that_end_in_one_pass() {
        for ok in [
            "info",
            "WARN",
            "error",
            "info,service_auth=debug",
            "service_auth=trace",
            " debug , h2=warn ",
        ] {
            assert_eq!(
                errors(&config(&format!("log:\n  level: {ok:?}\n")), &[]),
                Vec::<String>::new(),
                "{ok}"
            );
        }
    }

    #[test]
    fn a_word_that_is_not_a_level_is_refused_in_the_file_and_in_rust_log() {
        for bad in [
            "warning",
            "verbose",
            "info,verbose",
            "notalevel[[[",
            "",
            "off",
            "3",
        ] {
            let got = errors(&config(&format!("log:\n  level: {bad:?}\n")), &[]);
            assert_eq!(got.len(), 1, "{bad}: {got:?}");
            assert!(got[0].starts_with("log.level: "), "{got:?}");
            assert!(got[0].contains("is not a level"), "{got:?}");
        }
        let got = errors(&config(""), &[("RUST_LOG", "warning")]);
        assert_eq!(
            got,
            [
                "RUST_LOG=\"warning\": \"warning\" is not a level, nor target=level: use error, warn, info, debug or trace, or directives such as info,service_auth=debug"
            ]
        );
        // An empty RUST_LOG is unset.
        assert!(errors(&config(""), &[("RUST_LOG", " ")]).is_empty());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "listen:\n  grpc: 127.0.0.1:1\n  tls:\n    cert: /nonexistent/c.crt\n    key: /nonexistent/c.key\n    client_ca: /nonexistent/ca.crt\nregistry: r.yaml\nlog:\n  level: warning\ntelemetry:\n  otlp:\n    endpoint: not a url\n";
        let config: StaticConfig = serde_yaml::from_str(text).unwrap();
        let Err(errors) = check(&config, |_| None) else {
            panic!("passed");
        };
        let kinds: Vec<_> = errors
            .iter()
            .map(|e| match e {
                PreflightError::LogLevel(_) => "log",
                PreflightError::Tls(_) => "tls",
                PreflightError::Telemetry(_) => "otlp",
                PreflightError::RustLog { .. } => "env",
            })
            .collect();
        assert_eq!(
            kinds,
            ["log", "tls", "tls", "tls", "otlp"],
            "each missing TLS file"
        );
        assert!(errors.iter().all(PreflightError::in_config_file));
    }
}
