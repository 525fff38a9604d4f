//! The gRPC transport: Envoy's `Authorization/Check` and `grpc.health.v1`.
//!
//! This layer only translates. It loads the current registry snapshot,
//! hands the request to `check::decide`, and turns the `Decision` into a
//! `CheckResponse`. Every outcome, including a panic in the decision, is an
//! answer inside a `CheckResponse`: a gRPC error would let the request
//! through wherever Envoy runs with `failure_mode_allow: true`.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderAppendAction, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{BoolValue, Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::{HealthReporter, HealthService};

use crate::check::{self, Decision, Outcome};
use crate::config::Limits;
use crate::identity::CertCache;
use crate::listener::Incoming;
use crate::registry::Registry;
use crate::telemetry;

/// Shared handle to the registry snapshot that Checks read and reloads replace.
pub type SharedRegistry = Arc<ArcSwap<Registry>>;

/// Where Checks find the registry: empty until the first one is loaded. The
/// listener is up before that (so health checks can say NOT_SERVING), and a
/// Check that arrives meanwhile fails closed with `internal_error` (503).
pub type RegistrySlot = Arc<OnceLock<SharedRegistry>>;

/// How long SIGTERM waits for in-flight Checks. Envoy gives up on a Check
/// far sooner (0.5 s in `envoy/envoy.yaml`); this only stops a stuck client
/// from holding the process past Kubernetes' default 30 s grace period.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Parsed client certificates kept across Checks: a mesh has few callers,
/// each on long-lived connections. About 3 KiB each.
const CERT_CACHE_ENTRIES: usize = 1024;

/// The `Authorization` service.
#[derive(Clone)]
pub struct AuthzService {
    registry: RegistrySlot,
    certs: Arc<CertCache>,
}

impl AuthzService {
    pub fn new(registry: RegistrySlot) -> Self {
        AuthzService {
            registry,
            certs: Arc::new(CertCache::new(CERT_CACHE_ENTRIES)),
        }
    }

    /// Decides one request against the current snapshot. In-flight Checks
    /// keep the snapshot they started with even if a reload swaps it.
    pub fn check_now(&self, req: &CheckRequest) -> CheckResponse {
        let started = Instant::now();
        let internal_error = Decision::Deny(check::Denial {
            mode: check::Mode::Issue,
            reason: check::Reason::InternalError,
            service: None,
            token_error: None,
        });
        let snapshot = self.registry.get().map(|shared| shared.load_full());
        let decision = match &snapshot {
            // A panic in the decision is a bug, and still a denial (fail closed).
            Some(registry) => std::panic::catch_unwind(AssertUnwindSafe(|| {
                check::decide_with(req, registry, unix_now(), self.certs.as_ref())
            }))
            .unwrap_or(internal_error),
            None => internal_error,
        };
        telemetry::observe_check(req, &decision, started.elapsed());
        to_response(decision)
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.check_now(request.get_ref())))
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Translates a decision into Envoy's response.
pub fn to_response(decision: Decision<'_>) -> CheckResponse {
    match decision {
        Decision::Allow(allow) => {
            let (name, value) = allow.set_header;
            let mut metadata = vec![("kid", allow.kid.to_owned()), ("jti", allow.jti)];
            if let Some(service) = allow.service {
                metadata.push(("service", service.to_owned()));
            }
            CheckResponse {
                status: Some(rpc::Status {
                    code: tonic::Code::Ok as i32,
                    ..Default::default()
                }),
                dynamic_metadata: Some(service_auth_metadata(metadata)),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![overwrite_header(name, value)],
                    headers_to_remove: allow.remove_header.map(str::to_owned).into_iter().collect(),
                    ..Default::default()
                })),
            }
        }
        Decision::Deny(denial) => {
            let (code, http, body) = match denial.reason.outcome() {
                Outcome::Unauthenticated => (
                    tonic::Code::Unauthenticated,
                    envoy_types::ext_authz::v3::pb::HttpStatusCode::Unauthorized,
                    r#"{"error":"unauthenticated"}"#,
                ),
                Outcome::Forbidden => (
                    tonic::Code::PermissionDenied,
                    envoy_types::ext_authz::v3::pb::HttpStatusCode::Forbidden,
                    r#"{"error":"forbidden"}"#,
                ),
                Outcome::Unavailable => (
                    tonic::Code::Unavailable,
                    envoy_types::ext_authz::v3::pb::HttpStatusCode::ServiceUnavailable,
                    r#"{"error":"unavailable"}"#,
                ),
            };
            CheckResponse {
                status: Some(rpc::Status {
                    code: code as i32,
                    ..Default::default()
                }),
                dynamic_metadata: Some(service_auth_metadata(vec![(
                    "reason",
                    denial.reason.as_str().to_owned(),
                )])),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: http as i32 }),
                    headers: vec![overwrite_header("content-type", "application/json".into())],
                    body: body.into(),
                })),
            }
        }
    }
}

/// A header that replaces any client-sent copy on every Envoy version:
/// `append_action` for 1.37+, and the deprecated `append: false` because
/// 1.37.0 briefly honoured only one of them and merged a forged value in.
#[allow(deprecated)] // `append` is deprecated, and still needed: see above.
fn overwrite_header(key: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value,
            ..Default::default()
        }),
        append: Some(BoolValue { value: false }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// `{"service_auth": {...}}` for Envoy's access log.
fn service_auth_metadata(fields: Vec<(&str, String)>) -> Struct {
    let inner = Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_owned(),
                    Value {
                        kind: Some(Kind::StringValue(v)),
                    },
                )
            })
            .collect(),
    };
    Struct {
        fields: [(
            "service_auth".to_owned(),
            Value {
                kind: Some(Kind::StructValue(inner)),
            },
        )]
        .into(),
    }
}

/// What `grpc.health.v1.Health` reports, for the overall server (`""`) and
/// for `envoy.service.auth.v3.Authorization`: NOT_SERVING until a registry
/// is installed, SERVING while Checks can be decided, NOT_SERVING again once
/// shutdown begins.
#[derive(Clone)]
pub struct Readiness {
    health: HealthReporter,
    registry: RegistrySlot,
}

impl Readiness {
    /// Starts NOT_SERVING, with Checks reading `registry` once it is filled.
    pub async fn new(registry: RegistrySlot) -> Readiness {
        let readiness = Readiness {
            health: HealthReporter::new(),
            registry,
        };
        readiness.set(ServingStatus::NotServing).await;
        readiness
    }

    /// Installs the first registry and reports SERVING. Later registries
    /// arrive by swapping inside `shared` (the reloader), not through here.
    pub async fn serving(&self, shared: SharedRegistry) {
        // Only main installs, once; a second call would change nothing Checks read.
        let _ = self.registry.set(shared);
        self.set(ServingStatus::Serving).await;
    }

    /// Reports NOT_SERVING: load balancers and probes stop sending work.
    pub async fn not_serving(&self) {
        self.set(ServingStatus::NotServing).await;
    }

    async fn set(&self, status: ServingStatus) {
        self.health.set_service_status("", status).await;
        self.health
            .set_service_status(
                <AuthorizationServer<AuthzService> as NamedService>::NAME,
                status,
            )
            .await;
    }
}

/// Serves Checks and health on `incoming` until `shutdown` resolves; then
/// reports NOT_SERVING, stops accepting, and lets in-flight Checks finish
/// (for at most [`DRAIN_TIMEOUT`]).
pub async fn serve(
    incoming: Incoming,
    readiness: Readiness,
    limits: &Limits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (draining, drain_started) = tokio::sync::oneshot::channel::<()>();
    let health = tonic_health::pb::health_server::HealthServer::new(
        HealthService::from_health_reporter(readiness.health.clone()),
    );
    let authz = AuthorizationServer::new(AuthzService::new(readiness.registry.clone()))
        .max_decoding_message_size(limits.max_message_bytes);
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .http2_max_header_list_size(Some(limits.max_header_list_bytes))
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .timeout(limits.request_timeout)
        .add_service(health)
        .add_service(authz);
    let shutdown = async move {
        shutdown.await;
        readiness.not_serving().await;
        let _ = draining.send(());
    };
    let deadline = async move {
        if drain_started.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        result = router.serve_with_incoming_shutdown(incoming, shutdown) => result,
        () = deadline => {
            tracing::warn!(event = "drain_timeout", timeout = ?DRAIN_TIMEOUT, "in-flight checks did not finish in time; stopping anyway");
            Ok(())
        }
    }
}
