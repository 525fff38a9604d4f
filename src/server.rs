//! The gRPC transport: Envoy's `Authorization/Check` and `grpc.health.v1`.
//!
//! This layer only translates. It loads the current registry snapshot,
//! hands the request to `check::decide`, and turns the `Decision` into a
//! `CheckResponse`. Every outcome, including a panic in the decision, is an
//! answer inside a `CheckResponse`: a gRPC error would let the request
//! through wherever Envoy runs with `failure_mode_allow: true`.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderAppendAction, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{BoolValue, Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

use crate::check::{self, Decision, Outcome};
use crate::config::Limits;
use crate::listener::Incoming;
use crate::registry::Registry;
use crate::telemetry;

/// Shared handle to the registry snapshot that Checks read and reloads replace.
pub type SharedRegistry = Arc<ArcSwap<Registry>>;

/// The `Authorization` service.
#[derive(Clone)]
pub struct AuthzService {
    registry: SharedRegistry,
}

impl AuthzService {
    pub fn new(registry: SharedRegistry) -> Self {
        AuthzService { registry }
    }

    /// Decides one request against the current snapshot. In-flight Checks
    /// keep the snapshot they started with even if a reload swaps it.
    pub fn check_now(&self, req: &CheckRequest) -> CheckResponse {
        let snapshot = self.registry.load();
        let now = unix_now();
        // A panic in the decision is a bug, and still a denial (fail closed).
        let decision =
            std::panic::catch_unwind(AssertUnwindSafe(|| check::decide(req, &snapshot, now)))
                .unwrap_or(Decision::Deny(check::Denial {
                    mode: check::Mode::Issue,
                    reason: check::Reason::InternalError,
                    service: None,
                    token_error: None,
                }));
        telemetry::observe_check(req, &decision);
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

/// Serves Checks and health on `incoming` until `shutdown` resolves, then
/// stops accepting and lets in-flight Checks finish.
pub async fn serve(
    incoming: Incoming,
    registry: SharedRegistry,
    limits: &Limits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AuthorizationServer<AuthzService>>()
        .await;
    let authz = AuthorizationServer::new(AuthzService::new(registry))
        .max_decoding_message_size(limits.max_message_bytes);
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .http2_max_header_list_size(Some(limits.max_header_list_bytes))
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .timeout(limits.request_timeout)
        .add_service(health_service)
        .add_service(authz)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
