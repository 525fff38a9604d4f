//! The OTLP metrics pipeline: settings from config and environment, the
//! exporter, and a bounded flush at shutdown.
//!
//! Export runs on the SDK's `PeriodicReader` thread, never on a request:
//! recording only updates in-memory aggregates, whose size is bounded by the
//! attribute sets (see `metrics`). Each interval the reader collects and
//! exports once; a failed export is dropped, not queued, so an absent or
//! slow collector costs one blocked background thread and no memory.
//!
//! The gRPC exporter's channel lives on the Tokio runtime while the reader
//! thread blocks on its futures; a runtime worker must therefore never wait
//! for the reader (the deadlock in opentelemetry-rust #2056/#3380). The only
//! calls that wait for it are [`MetricsExport::shutdown`], which main makes
//! from its own thread outside the runtime, with a deadline.

use std::sync::mpsc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider;
use opentelemetry_otlp::{MetricExporter, Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

use crate::config::{OtlpProtocol, Telemetry};

/// Export interval when neither the config nor `OTEL_METRIC_EXPORT_INTERVAL` sets one.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// The collector when neither the config nor an `OTEL_EXPORTER_OTLP_*`
/// endpoint variable names one: the OTLP exporter's own defaults.
pub const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
pub const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";
/// `service.name` when neither the config nor `OTEL_SERVICE_NAME` sets one.
pub const DEFAULT_SERVICE_NAME: &str = "service-auth";

/// What to export, where, and how often, after merging config and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSettings {
    pub protocol: OtlpProtocol,
    /// From `telemetry.otlp.endpoint`, else the default collector when no
    /// endpoint variable is set. `None` leaves the endpoint to the exporter,
    /// which reads `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, then
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: Option<String>,
    pub interval: Duration,
    pub service_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{var}={value:?}: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("telemetry.otlp.endpoint: {value:?} {problem}")]
    ConfigEndpoint { value: String, problem: BadEndpoint },
    #[error("{var}={value:?}: the endpoint {problem}")]
    EnvEndpoint {
        var: &'static str,
        value: String,
        problem: BadEndpoint,
    },
    #[error("cannot build the OTLP metrics exporter: {0}")]
    Exporter(opentelemetry_otlp::ExporterBuildError),
}

/// Why an OTLP endpoint cannot be used. Checked before anything is built,
/// so `check-config` refuses what the exporter would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadEndpoint {
    #[error("is not a URL such as http://127.0.0.1:4317")]
    NotAUrl,
    #[error(
        "uses https, which this build's exporter cannot speak: use http:// (a collector on the node, or a TLS-terminating proxy beside the sidecar)"
    )]
    Https,
    #[error("must be an http:// URL")]
    Scheme,
    #[error("has no host")]
    NoHost,
}

/// An endpoint the exporter can use: an `http://` URL with a host.
pub fn check_endpoint(endpoint: &str) -> Result<(), BadEndpoint> {
    let uri: http::Uri = endpoint.parse().map_err(|_| BadEndpoint::NotAUrl)?;
    match uri.scheme_str() {
        None => return Err(BadEndpoint::NotAUrl),
        Some("http") => {}
        Some("https") => return Err(BadEndpoint::Https),
        Some(_) => return Err(BadEndpoint::Scheme),
    }
    match uri.host() {
        Some(host) if !host.is_empty() => Ok(()),
        _ => Err(BadEndpoint::NoHost),
    }
}

// By hand: `#[from]` would also make the error its source, and a caller
// printing the chain would print it twice.
impl From<opentelemetry_otlp::ExporterBuildError> for TelemetryError {
    fn from(error: opentelemetry_otlp::ExporterBuildError) -> Self {
        TelemetryError::Exporter(error)
    }
}

/// Why the last metrics export at shutdown did not complete.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("metrics flush failed: {0}")]
    Failed(String),
    #[error("metrics flush did not finish within {0:?}")]
    Timeout(Duration),
    #[error("cannot start the metrics shutdown thread: {0}")]
    Thread(std::io::Error),
}

impl ExportSettings {
    /// Merges the config with the standard environment variables (`env`
    /// looks one up; empty values count as unset). The file wins wherever
    /// it sets a value; the environment fills the rest. Export is on when the
    /// config has a `telemetry.otlp` block or an OTLP endpoint variable is
    /// set; `None` means no export.
    pub fn resolve(
        config: &Telemetry,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ExportSettings>, TelemetryError> {
        let env = |var: &str| env(var).filter(|v| !v.trim().is_empty());
        let from_env = env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").is_some()
            || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        let otlp = match (&config.otlp, from_env) {
            (Some(otlp), _) => otlp.clone(),
            (None, true) => Default::default(),
            (None, false) => return Ok(None),
        };
        let protocol = match otlp.protocol {
            Some(p) => p,
            None => env_protocol(&env)?,
        };
        let interval = match otlp.interval {
            Some(i) => i,
            None => env_interval(&env)?,
        };
        match &otlp.endpoint {
            Some(value) => {
                check_endpoint(value).map_err(|problem| TelemetryError::ConfigEndpoint {
                    value: value.clone(),
                    problem,
                })?
            }
            // The exporter reads the variable in effect: check that one.
            None => env_endpoint(&env)?,
        }
        // No endpoint anywhere: the exporter's default, spelled out so the
        // start-up line names it instead of pointing at an empty environment.
        let endpoint = match (otlp.endpoint, from_env) {
            (Some(e), _) => Some(e),
            (None, true) => None,
            (None, false) => Some(
                match protocol {
                    OtlpProtocol::Grpc => DEFAULT_GRPC_ENDPOINT,
                    OtlpProtocol::HttpProtobuf => DEFAULT_HTTP_ENDPOINT,
                }
                .to_owned(),
            ),
        }
        .map(|e| match protocol {
            OtlpProtocol::Grpc => e,
            OtlpProtocol::HttpProtobuf => http_metrics_url(&e),
        });
        let service_name = config
            .service_name
            .clone()
            .or_else(|| env("OTEL_SERVICE_NAME"))
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
        Ok(Some(ExportSettings {
            protocol,
            endpoint,
            interval,
            service_name,
        }))
    }
}

/// Checks the endpoint variable the exporter will read, if one is set.
fn env_endpoint(env: &impl Fn(&str) -> Option<String>) -> Result<(), TelemetryError> {
    for var in [
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        if let Some(value) = env(var) {
            return check_endpoint(&value).map_err(|problem| TelemetryError::EnvEndpoint {
                var,
                value,
                problem,
            });
        }
    }
    Ok(())
}

fn env_protocol(env: &impl Fn(&str) -> Option<String>) -> Result<OtlpProtocol, TelemetryError> {
    for var in [
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(value) = env(var) {
            return match value.trim() {
                "grpc" => Ok(OtlpProtocol::Grpc),
                "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
                _ => Err(TelemetryError::Env {
                    var,
                    value,
                    reason: "supported protocols are grpc and http/protobuf",
                }),
            };
        }
    }
    Ok(OtlpProtocol::Grpc)
}

fn env_interval(env: &impl Fn(&str) -> Option<String>) -> Result<Duration, TelemetryError> {
    const VAR: &str = "OTEL_METRIC_EXPORT_INTERVAL";
    let Some(value) = env(VAR) else {
        return Ok(DEFAULT_INTERVAL);
    };
    match value.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(TelemetryError::Env {
            var: VAR,
            value,
            reason: "expected a positive number of milliseconds",
        }),
    }
}

/// `telemetry.otlp.endpoint` is a base URL, like `OTEL_EXPORTER_OTLP_ENDPOINT`:
/// over HTTP the metrics path is appended (unless it is already there).
fn http_metrics_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/metrics") {
        base.to_owned()
    } else {
        format!("{base}/v1/metrics")
    }
}

/// A running export pipeline. Shut it down to flush the last interval.
pub struct MetricsExport {
    provider: SdkMeterProvider,
}

impl MetricsExport {
    /// Builds the exporter and the periodic reader. Must run inside the
    /// Tokio runtime: the gRPC exporter's channel is spawned on it.
    pub fn start(settings: &ExportSettings) -> Result<MetricsExport, TelemetryError> {
        let exporter = match settings.protocol {
            OtlpProtocol::Grpc => {
                let builder = MetricExporter::builder()
                    .with_tonic()
                    .with_protocol(Protocol::Grpc);
                match &settings.endpoint {
                    Some(e) => builder.with_endpoint(e).build()?,
                    None => builder.build()?,
                }
            }
            OtlpProtocol::HttpProtobuf => {
                let builder = MetricExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary);
                match &settings.endpoint {
                    Some(e) => builder.with_endpoint(e).build()?,
                    None => builder.build()?,
                }
            }
        };
        let reader = PeriodicReader::builder(exporter)
            .with_interval(settings.interval)
            .build();
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader)
            .build();
        Ok(MetricsExport { provider })
    }

    /// The meter the sidecar's instruments are created on.
    pub fn meter(&self) -> opentelemetry::metrics::Meter {
        self.provider.meter("service-auth")
    }

    /// Exports what was recorded since the last interval and stops the
    /// reader, giving up after `timeout` so a dead or hanging collector
    /// cannot hold the process. Call from a thread that is not a Tokio
    /// worker (see the module doc).
    pub fn shutdown(self, timeout: Duration) -> Result<(), FlushError> {
        let (done, wait) = mpsc::channel();
        let provider = self.provider;
        std::thread::Builder::new()
            .name("metrics-shutdown".into())
            .spawn(move || {
                let _ = done.send(provider.shutdown().map_err(|e| e.to_string()));
            })
            .map_err(FlushError::Thread)?;
        match wait.recv_timeout(timeout) {
            Ok(result) => result.map_err(FlushError::Failed),
            Err(_) => Err(FlushError::Timeout(timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Otlp;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn otlp(endpoint: Option<&str>, protocol: Option<OtlpProtocol>) -> Telemetry {
        Telemetry {
            otlp: Some(Otlp {
                endpoint: endpoint.map(str::to_owned),
                protocol,
                interval: None,
            }),
            service_name: None,
        }
    }

    #[test]
    fn endpoints_the_exporter_cannot_use_are_refused_before_it_is_built() {
        for ok in [
            "http://127.0.0.1:4317",
            "http://collector",
            "http://c:4318/v1/metrics",
        ] {
            assert_eq!(check_endpoint(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("not a url", BadEndpoint::NotAUrl),
            ("collector:4317", BadEndpoint::NotAUrl),
            ("https://collector:4317", BadEndpoint::Https),
            ("ftp://collector", BadEndpoint::Scheme),
            ("/v1/metrics", BadEndpoint::NotAUrl),
        ] {
            assert_eq!(check_endpoint(bad), Err(why), "{bad}");
        }
        let err =
            ExportSettings::resolve(&otlp(Some("https://c:4317"), None), env(&[])).unwrap_err();
        assert!(
            matches!(
                err,
                TelemetryError::ConfigEndpoint {
                    problem: BadEndpoint::Https,
                    ..
                }
            ),
            "{err}"
        );
        // The variable the exporter would read is checked; the file wins.
        let vars = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")]);
        let err = ExportSettings::resolve(&Telemetry::default(), vars).unwrap_err();
        assert_eq!(
            err.to_string(),
            "OTEL_EXPORTER_OTLP_ENDPOINT=\"not a url\": the endpoint is not a URL such as http://127.0.0.1:4317"
        );
        let vars = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")]);
        assert!(ExportSettings::resolve(&otlp(Some("http://c:4317"), None), vars).is_ok());
    }

    #[test]
    fn no_config_and_no_endpoint_variable_means_no_export() {
        let none = Telemetry::default();
        assert_eq!(ExportSettings::resolve(&none, env(&[])).unwrap(), None);
        let blank = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]);
        assert_eq!(ExportSettings::resolve(&none, blank).unwrap(), None);
    }

    #[test]
    fn an_endpoint_variable_alone_turns_export_on_with_env_settings() {
        let vars = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1500"),
            ("OTEL_SERVICE_NAME", "authz-east"),
        ]);
        let s = ExportSettings::resolve(&Telemetry::default(), vars)
            .unwrap()
            .unwrap();
        assert_eq!(s.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(
            s.endpoint, None,
            "left to the exporter, which reads the variable"
        );
        assert_eq!(s.interval, Duration::from_millis(1500));
        assert_eq!(s.service_name, "authz-east");
    }

    #[test]
    fn the_file_wins_over_the_environment() {
        let mut config = otlp(
            Some("http://127.0.0.1:4318/"),
            Some(OtlpProtocol::HttpProtobuf),
        );
        config.service_name = Some("from-file".into());
        if let Some(o) = &mut config.otlp {
            o.interval = Some(Duration::from_millis(200));
        }
        let vars = env(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "9000"),
            ("OTEL_SERVICE_NAME", "from-env"),
        ]);
        let s = ExportSettings::resolve(&config, vars).unwrap().unwrap();
        assert_eq!(s.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(
            s.endpoint.as_deref(),
            Some("http://127.0.0.1:4318/v1/metrics")
        );
        assert_eq!(s.interval, Duration::from_millis(200));
        assert_eq!(s.service_name, "from-file");
    }

    #[test]
    fn defaults_and_signal_specific_variables() {
        let s = ExportSettings::resolve(&otlp(None, None), env(&[]))
            .unwrap()
            .unwrap();
        assert_eq!(s.protocol, OtlpProtocol::Grpc);
        assert_eq!(s.endpoint.as_deref(), Some("http://localhost:4317"));
        assert_eq!(s.interval, DEFAULT_INTERVAL);
        assert_eq!(s.service_name, DEFAULT_SERVICE_NAME);
        let http = ExportSettings::resolve(&otlp(None, Some(OtlpProtocol::HttpProtobuf)), env(&[]))
            .unwrap()
            .unwrap();
        assert_eq!(
            http.endpoint.as_deref(),
            Some("http://localhost:4318/v1/metrics")
        );
        let vars = env(&[
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        let s = ExportSettings::resolve(&otlp(Some("http://c:4318/v1/metrics"), None), vars)
            .unwrap()
            .unwrap();
        assert_eq!(s.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(s.endpoint.as_deref(), Some("http://c:4318/v1/metrics"));
        let grpc = ExportSettings::resolve(&otlp(Some("http://c:4317"), None), env(&[]))
            .unwrap()
            .unwrap();
        assert_eq!(grpc.endpoint.as_deref(), Some("http://c:4317"));
    }

    #[test]
    fn bad_environment_values_are_errors() {
        let json = env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]);
        assert!(ExportSettings::resolve(&otlp(None, None), json).is_err());
        let interval = env(&[("OTEL_METRIC_EXPORT_INTERVAL", "10s")]);
        assert!(ExportSettings::resolve(&otlp(None, None), interval).is_err());
    }
}
