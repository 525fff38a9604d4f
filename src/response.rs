//! The steps after the decision: signing the token a grant calls for
//! ([`Answer`]), and Envoy's `CheckResponse` for each outcome
//! ([`Responses`]).
//!
//! The response shape is the contract with Envoy: an OK response replaces
//! the token header on every Envoy version and strips the API key; a denial
//! carries the HTTP status, a generic JSON body and the gRPC code, while the
//! precise reason goes only to Envoy's dynamic metadata (for its access log).
//! The bytes come from `wire`: denials are encoded once per reason, and OK
//! responses from a template per registry snapshot. A denial only reported
//! (report mode, see `enforcement`) is an OK that adds nothing and says
//! `would_deny` in the metadata; a throttled caller gets 429 with
//! `retry-after`.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use envoy_types::ext_authz::v3::pb::{CheckResponse, HttpResponse, HttpStatusCode, OkHttpResponse};

use crate::check::{Decision, Denial, Grant, Mode, Outcome, Reason, SERVICE_ID_HEADER};
use crate::enforcement::{self, Disposition};
use crate::registry::Registry;
use crate::request::Attributes;
use crate::throttle::Throttled;
use crate::token::{self, Issued};
use crate::wire::{self, EncodedResponse, OkFields, OkTemplate};

/// A decision with the token its grant calls for, ready to answer.
#[derive(Debug)]
pub struct Answer<'r> {
    pub decision: Decision<'r>,
    /// The token signed for an issue-mode grant.
    pub issued: Option<Issued<'r>>,
    /// Whether a denial is refused or only reported.
    pub disposition: Disposition,
}

impl<'r> Answer<'r> {
    /// Signs the token an issue-mode grant calls for. Failing to sign is an
    /// internal error: the answer becomes a denial (fail closed).
    pub fn sign(decision: Decision<'r>, registry: &'r Registry, now: i64) -> Answer<'r> {
        match decision {
            Decision::Allow(Grant::Issue(grant)) => {
                match token::issue(&registry.token, &grant.subject(), now) {
                    Ok(issued) => Answer {
                        decision: Decision::Allow(Grant::Issue(grant)),
                        issued: Some(issued),
                        disposition: Disposition::Enforced,
                    },
                    Err(_) => Answer::denied(Denial::internal(Mode::Issue)),
                }
            }
            decision => Answer {
                decision,
                issued: None,
                disposition: Disposition::Enforced,
            },
        }
    }

    /// An answer that refuses.
    pub fn denied(denial: Denial<'r>) -> Answer<'r> {
        Answer {
            decision: Decision::Deny(denial),
            issued: None,
            disposition: Disposition::Enforced,
        }
    }

    /// Applies report mode: a denial that `enforcement` says is only
    /// reported for this Check is answered OK, without a token.
    pub fn enforced(mut self, attributes: &Attributes<'_>, registry: &Registry) -> Answer<'r> {
        self.disposition = enforcement::disposition(&self.decision, attributes, registry);
        self
    }

    /// The kid that signed the issued token, if one was.
    pub fn kid(&self) -> Option<&'r str> {
        self.issued.as_ref().map(|t| t.kid)
    }
}

/// How a denial for `reason` looks to the caller.
pub fn denial(reason: Reason) -> wire::Denial {
    let (grpc, http, body) = match reason.outcome() {
        Outcome::Unauthenticated => (
            tonic::Code::Unauthenticated,
            HttpStatusCode::Unauthorized,
            r#"{"error":"unauthenticated"}"#,
        ),
        Outcome::Forbidden => (
            tonic::Code::PermissionDenied,
            HttpStatusCode::Forbidden,
            r#"{"error":"forbidden"}"#,
        ),
        Outcome::TooManyRequests => (
            tonic::Code::ResourceExhausted,
            HttpStatusCode::TooManyRequests,
            r#"{"error":"too_many_requests"}"#,
        ),
        Outcome::BadRequest => (
            tonic::Code::InvalidArgument,
            HttpStatusCode::BadRequest,
            r#"{"error":"bad_request"}"#,
        ),
        Outcome::Unavailable => (
            tonic::Code::Unavailable,
            HttpStatusCode::ServiceUnavailable,
            r#"{"error":"unavailable"}"#,
        ),
    };
    wire::Denial {
        grpc,
        http,
        body,
        reason: reason.as_str(),
    }
}

/// The encoded denial for `reason`: built once, shared afterwards.
pub fn denied(reason: Reason) -> EncodedResponse {
    static DENIALS: OnceLock<Vec<EncodedResponse>> = OnceLock::new();
    let all = DENIALS.get_or_init(|| Reason::ALL.iter().map(|r| denial(*r).encode()).collect());
    match Reason::ALL.iter().position(|r| *r == reason) {
        Some(i) => all[i].clone(),
        None => denial(reason).encode(),
    }
}

/// The refusal of a throttled caller: 429 (`too_many_failures`) and
/// `retry-after` in seconds. Encoded per Check (the seconds vary); a
/// throttled Check does nothing else.
pub fn throttled(throttled: &Throttled) -> EncodedResponse {
    let mut message = denial(Reason::TooManyFailures).message();
    if let Some(HttpResponse::DeniedResponse(denied)) = &mut message.http_response {
        // The same overwriting header shape as the denial's content-type.
        let mut retry_after = denied.headers[0].clone();
        if let Some(header) = &mut retry_after.header {
            header.key = "retry-after".into();
            header.value = throttled.retry_after_secs().to_string();
        }
        denied.headers.push(retry_after);
    }
    EncodedResponse::from_message(&message)
}

/// OK for a denial that report mode only reports: no token, and the
/// headers an upstream could take for verified identity (the token header,
/// `x-service-id`) removed along with the API key header, so nothing
/// unverified reaches the upstream looking verified.
pub fn would_deny(registry: &Registry, reason: Reason) -> EncodedResponse {
    let mut remove = vec![registry.token.header.clone(), SERVICE_ID_HEADER.to_owned()];
    if !registry.request.forward_api_key {
        remove.push(registry.request.api_key_header.clone());
    }
    EncodedResponse::from_message(&CheckResponse {
        status: Some(wire::ok_status()),
        dynamic_metadata: Some(wire::service_auth_metadata([(
            "would_deny",
            reason.as_str(),
        )])),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers_to_remove: remove,
            ..Default::default()
        })),
    })
}

/// The OK templates of one registry snapshot.
struct Templates {
    generation: u64,
    issued: OkTemplate,
    verified: OkTemplate,
}

impl Templates {
    fn new(registry: &Registry) -> Self {
        // The API key header must not reach the upstream unless configured
        // to. Never the token header: Envoy applies removals after additions.
        let remove =
            (!registry.request.forward_api_key).then_some(registry.request.api_key_header.as_str());
        Templates {
            generation: registry.generation,
            issued: OkTemplate::new(&registry.token.header, remove),
            verified: OkTemplate::new(SERVICE_ID_HEADER, remove),
        }
    }
}

/// Encodes answers, keeping the OK templates of the serving snapshot.
#[derive(Default)]
pub struct Responses {
    templates: ArcSwapOption<Templates>,
}

impl Responses {
    /// Envoy's response to `answer`, decided under `registry`.
    pub fn encode(&self, answer: Answer<'_>, registry: &Registry) -> EncodedResponse {
        if let (Decision::Deny(denial), Disposition::Reported) =
            (&answer.decision, answer.disposition)
        {
            return would_deny(registry, denial.reason);
        }
        let templates = self.templates(registry);
        match (answer.decision, answer.issued) {
            (Decision::Allow(Grant::Issue(grant)), Some(token)) => {
                templates.issued.encode(&OkFields {
                    token: &token.token,
                    kid: token.kid,
                    jti: &token.jti,
                    service: Some(&grant.service.id),
                })
            }
            (Decision::Allow(Grant::Verify(grant)), _) => templates.verified.encode(&OkFields {
                token: &grant.subject,
                kid: grant.kid,
                jti: &grant.jti,
                service: Some(&grant.service.id),
            }),
            (Decision::Deny(denial), _) => denied(denial.reason),
            // Not built by `Answer::sign`; fail closed all the same.
            (Decision::Allow(Grant::Issue(_)), None) => denied(Reason::InternalError),
        }
    }

    fn templates(&self, registry: &Registry) -> Arc<Templates> {
        match self.templates.load_full() {
            Some(t) if t.generation == registry.generation => t,
            _ => {
                let fresh = Arc::new(Templates::new(registry));
                self.templates.store(Some(fresh.clone()));
                fresh
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_status_body_and_metadata() {
        use envoy_types::ext_authz::v3::pb::HttpResponse;
        for reason in Reason::ALL {
            let resp = denied(reason).decode().unwrap();
            let Some(HttpResponse::DeniedResponse(d)) = resp.http_response else {
                panic!("{reason}: not a denial");
            };
            let (grpc, http, body) = match reason {
                Reason::ScopeNotAllowed => (7, 403, "forbidden"),
                Reason::MalformedRequest => (3, 400, "bad_request"),
                Reason::TooManyFailures => (8, 429, "too_many_requests"),
                Reason::InternalError => (14, 503, "unavailable"),
                _ => (16, 401, "unauthenticated"),
            };
            assert_eq!(resp.status.unwrap().code, grpc, "{reason}");
            assert_eq!(d.status.unwrap().code, http, "{reason}");
            assert_eq!(d.body, format!(r#"{{"error":"{body}"}}"#), "{reason}");
            assert!(!d.body.contains(reason.as_str()));
            let meta = format!("{:?}", resp.dynamic_metadata.unwrap());
            assert!(meta.contains(reason.as_str()), "{reason}");
        }
    }
}
