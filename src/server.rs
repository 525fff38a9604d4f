//! The gRPC transport: Envoy's `Authorization/Check` and `grpc.health.v1`.
//!
//! This layer only translates and sequences. For each Check it parses the
//! request's attributes once, asks the `throttle` whether the caller may be
//! heard at all, gathers the certificate evidence (memoized), calls the pure
//! `check::decide`, signs a token when the decision grants one and applies
//! report mode (`response::Answer`), tells the throttle the outcome, reports
//! to telemetry, and answers.
//! Every outcome, including a panic, is an answer inside a `CheckResponse`:
//! a gRPC error would let the request through wherever Envoy runs with
//! `failure_mode_allow: true`.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::{HealthReporter, HealthService};

use crate::check::{self, Decision, Denial, Input, Mode, Reason, unix_now};
use crate::config::Limits;
use crate::enforcement::Disposition;
use crate::evidence::EvidenceCache;
use crate::listener::Incoming;
use crate::registry::{Registry, Snapshot};
use crate::request::{Attributes, RouteMode};
use crate::response::{self, Answer, Responses};
use crate::telemetry::{CheckEvent, Observer};
use crate::throttle::{Throttle, Throttled};
use crate::wire::{CheckHandler, CheckService, CheckView, EncodedResponse, Malformed};

/// How long SIGTERM waits for in-flight Checks. Envoy gives up on a Check
/// far sooner (0.5 s in `envoy/envoy.yaml`); this only stops a stuck client
/// from holding the process past Kubernetes' default 30 s grace period.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Parsed client certificates kept across Checks: a mesh has few callers,
/// each on long-lived connections. About 3 KiB each.
const EVIDENCE_CACHE_ENTRIES: usize = 1024;

/// Answers Checks: the handler behind `wire::CheckService`.
pub struct AuthzService {
    snapshot: Snapshot,
    evidence: EvidenceCache,
    responses: Responses,
    observer: Observer,
    throttle: Arc<Throttle>,
}

impl AuthzService {
    /// `throttle` keeps its failure counts across registry reloads; the
    /// serving registry's `throttle` settings apply to each Check.
    pub fn new(snapshot: Snapshot, observer: Observer, throttle: Arc<Throttle>) -> Self {
        AuthzService {
            snapshot,
            evidence: EvidenceCache::new(EVIDENCE_CACHE_ENTRIES),
            responses: Responses::default(),
            observer,
            throttle,
        }
    }

    /// Answers one request against the current snapshot. In-flight Checks
    /// keep the snapshot they started with even if a reload swaps it.
    fn answer_view(&self, view: &CheckView<'_>, started: Instant) -> EncodedResponse {
        let attributes = Attributes::from_view(view);
        let answered = match self.snapshot.load() {
            // A panic in the decision is a bug, and still a denial (fail closed).
            Some(registry) => std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.answer(&attributes, &registry, started)
            }))
            .ok(),
            // No registry yet: health says NOT_SERVING, and Checks fail closed.
            None => None,
        };
        answered.unwrap_or_else(|| {
            self.refuse(
                Some(&attributes),
                Denial::internal(Mode::Issue),
                None,
                started,
            )
        })
    }

    fn answer(
        &self,
        attributes: &Attributes<'_>,
        registry: &Registry,
        started: Instant,
    ) -> EncodedResponse {
        let now = unix_now();
        // A throttled caller is refused before any hashing or signature work.
        let admitted = match self.throttle.admit(attributes, registry.throttle.as_ref()) {
            Ok(admitted) => admitted,
            Err(throttled) => return self.throttled(attributes, &throttled, started),
        };
        let evidence = (!attributes.certificate.is_empty())
            .then(|| self.evidence.resolve(attributes.certificate, registry, now));
        let input = Input {
            attributes: *attributes,
            certificate: evidence
                .as_ref()
                .map(|e| e.as_ref().map(Arc::as_ref).map_err(|e| *e)),
        };
        let answer = Answer::sign(check::decide(&input, registry, now), registry, now)
            .enforced(attributes, registry);
        admitted.record(&answer.decision, answer.disposition);
        let presented_sans = match &answer.decision {
            Decision::Deny(d) if d.reason == Reason::UnknownPrincipal => {
                Some(input.presented_sans())
            }
            _ => None,
        };
        self.observer.check(&CheckEvent {
            attributes: Some(attributes),
            decision: &answer.decision,
            disposition: answer.disposition,
            issued_kid: answer.kid(),
            detail: None,
            presented_sans: presented_sans.as_deref(),
            elapsed: started.elapsed(),
        });
        self.responses.encode(answer, registry)
    }

    /// A denial decided outside `check::decide` (unreadable request, no
    /// registry, a panic), observed like any other.
    fn refuse(
        &self,
        attributes: Option<&Attributes<'_>>,
        denial: Denial<'_>,
        detail: Option<&dyn std::fmt::Display>,
        started: Instant,
    ) -> EncodedResponse {
        let reason = denial.reason;
        self.observer.check(&CheckEvent {
            attributes,
            decision: &Decision::Deny(denial),
            disposition: Disposition::Enforced,
            issued_kid: None,
            detail,
            presented_sans: None,
            elapsed: started.elapsed(),
        });
        response::denied(reason)
    }

    fn throttled(
        &self,
        attributes: &Attributes<'_>,
        throttled: &Throttled,
        started: Instant,
    ) -> EncodedResponse {
        let mode = match attributes.mode {
            RouteMode::Verify => Mode::Verify,
            RouteMode::Issue | RouteMode::Unknown => Mode::Issue,
        };
        self.observer.check(&CheckEvent {
            attributes: Some(attributes),
            decision: &Decision::Deny(Denial::throttled(mode)),
            disposition: Disposition::Enforced,
            issued_kid: None,
            detail: None,
            presented_sans: None,
            elapsed: started.elapsed(),
        });
        response::throttled(throttled)
    }
}

impl CheckHandler for AuthzService {
    fn check(&self, request: Result<CheckView<'_>, Malformed>) -> EncodedResponse {
        let started = Instant::now();
        match request {
            Ok(view) => self.answer_view(&view, started),
            // Undecodable or too large: a denial, never a gRPC error that
            // `failure_mode_allow` would let through.
            Err(malformed) => {
                let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    self.refuse(None, Denial::malformed(), Some(&malformed), started)
                }));
                caught.unwrap_or_else(|_| response::denied(Reason::MalformedRequest))
            }
        }
    }
}

/// What `grpc.health.v1.Health` reports, for the overall server (`""`) and
/// for `envoy.service.auth.v3.Authorization`: NOT_SERVING until a registry
/// is installed, SERVING while Checks can be decided, NOT_SERVING again once
/// shutdown begins.
#[derive(Clone)]
pub struct Readiness {
    health: HealthReporter,
}

impl Readiness {
    /// Starts NOT_SERVING.
    pub async fn new() -> Readiness {
        let readiness = Readiness {
            health: HealthReporter::new(),
        };
        readiness.set(ServingStatus::NotServing).await;
        readiness
    }

    /// Reports SERVING: a registry is installed.
    pub async fn serving(&self) {
        self.set(ServingStatus::Serving).await;
    }

    /// Reports NOT_SERVING: load balancers and probes stop sending work.
    pub async fn not_serving(&self) {
        self.set(ServingStatus::NotServing).await;
    }

    async fn set(&self, status: ServingStatus) {
        self.health.set_service_status("", status).await;
        self.health
            .set_service_status(<CheckService<AuthzService> as NamedService>::NAME, status)
            .await;
    }
}

/// Serves Checks and health on `incoming` until `shutdown` resolves; then
/// reports NOT_SERVING, stops accepting, and lets in-flight Checks finish
/// (for at most [`DRAIN_TIMEOUT`]).
pub async fn serve(
    incoming: Incoming,
    authz: AuthzService,
    readiness: Readiness,
    limits: &Limits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (draining, drain_started) = tokio::sync::oneshot::channel::<()>();
    let health = tonic_health::pb::health_server::HealthServer::new(
        HealthService::from_health_reporter(readiness.health.clone()),
    );
    let authz = CheckService::new(authz, limits.max_message_bytes);
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
