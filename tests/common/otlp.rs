//! A real OTLP metrics receiver for tests, over gRPC (the generated
//! `MetricsService` from `opentelemetry-proto`) or HTTP/protobuf
//! (`POST /v1/metrics`). It keeps every export request and answers queries
//! about the latest cumulative value of each series.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric, number_data_point};
use prost::Message;

type Store = Arc<Mutex<Vec<ExportMetricsServiceRequest>>>;

/// One data point: its attributes, its value (a histogram's count) and time.
#[derive(Debug, Clone)]
pub struct Point {
    pub attrs: BTreeMap<String, String>,
    pub value: f64,
    pub time: u64,
}

pub struct Receiver {
    pub addr: SocketAddr,
    store: Store,
    task: tokio::task::JoinHandle<()>,
}

struct Grpc(Store);

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Receiver {
    /// An OTLP/gRPC receiver on a free loopback port.
    pub async fn grpc() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store = Store::default();
        let service = MetricsServiceServer::new(Grpc(store.clone()));
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Receiver { addr, store, task }
    }

    /// An OTLP/HTTP receiver (protobuf bodies on `/v1/metrics`).
    pub async fn http() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store = Store::default();
        let accepted = store.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let store = accepted.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let store = store.clone();
                        async move { Ok::<_, Infallible>(handle_http(req, &store).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Receiver { addr, store, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The most recent definition of metric `name` (unit, kind).
    pub fn metric(&self, name: &str) -> Option<Metric> {
        let store = self.store.lock().unwrap();
        store
            .iter()
            .rev()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .find(|m| m.name == name)
            .cloned()
    }

    /// A resource attribute of the latest export.
    pub fn resource_attr(&self, key: &str) -> Option<String> {
        let store = self.store.lock().unwrap();
        let resource = store.last()?.resource_metrics.first()?.resource.as_ref()?;
        attrs(&resource.attributes).remove(key)
    }

    /// The latest point of each series (attribute set) of metric `name`.
    pub fn latest(&self, name: &str) -> Vec<Point> {
        let mut series: BTreeMap<BTreeMap<String, String>, Point> = BTreeMap::new();
        for point in self.points(name) {
            match series.get(&point.attrs) {
                Some(seen) if seen.time > point.time => {}
                _ => {
                    series.insert(point.attrs.clone(), point);
                }
            }
        }
        series.into_values().collect()
    }

    /// The sum of the latest values of every series of `name` whose
    /// attributes include all of `wanted`; `None` if there is none.
    pub fn value(&self, name: &str, wanted: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<Point> = self
            .latest(name)
            .into_iter()
            .filter(|p| {
                wanted
                    .iter()
                    .all(|(k, v)| p.attrs.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        (!matching.is_empty()).then(|| matching.iter().map(|p| p.value).sum())
    }

    /// Every distinct value attribute `key` took in metric `name`.
    pub fn attribute_values(&self, name: &str, key: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .points(name)
            .into_iter()
            .filter_map(|p| p.attrs.get(key).cloned())
            .collect();
        values.sort();
        values.dedup();
        values
    }

    /// Every data point of `name` received so far.
    fn points(&self, name: &str) -> Vec<Point> {
        let store = self.store.lock().unwrap();
        let mut out = Vec::new();
        let metrics = store
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .filter(|m| m.name == name);
        for m in metrics {
            match &m.data {
                Some(metric::Data::Sum(s)) => out.extend(s.data_points.iter().map(|p| Point {
                    attrs: attrs(&p.attributes),
                    value: number(&p.value),
                    time: p.time_unix_nano,
                })),
                Some(metric::Data::Gauge(g)) => out.extend(g.data_points.iter().map(|p| Point {
                    attrs: attrs(&p.attributes),
                    value: number(&p.value),
                    time: p.time_unix_nano,
                })),
                Some(metric::Data::Histogram(h)) => {
                    out.extend(h.data_points.iter().map(|p| Point {
                        attrs: attrs(&p.attributes),
                        value: p.count as f64,
                        time: p.time_unix_nano,
                    }))
                }
                _ => {}
            }
        }
        out
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle_http(
    req: hyper::Request<hyper::body::Incoming>,
    store: &Store,
) -> hyper::Response<Full<Bytes>> {
    let status = |code: u16| {
        hyper::Response::builder()
            .status(code)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    if req.method() != hyper::Method::POST || req.uri().path() != "/v1/metrics" {
        return status(404);
    }
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if content_type != "application/x-protobuf" {
        return status(415);
    }
    let Ok(body) = req.into_body().collect().await else {
        return status(400);
    };
    let Ok(export) = ExportMetricsServiceRequest::decode(body.to_bytes()) else {
        return status(400);
    };
    store.lock().unwrap().push(export);
    hyper::Response::builder()
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::from(
            ExportMetricsServiceResponse::default().encode_to_vec(),
        )))
        .unwrap()
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn number(value: &Option<number_data_point::Value>) -> f64 {
    match value {
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        Some(number_data_point::Value::AsDouble(d)) => *d,
        None => f64::NAN,
    }
}
