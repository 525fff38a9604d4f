//! The steps after the decision: signing the token a grant calls for
//! ([`Answer`]), and Envoy's `CheckResponse` for each outcome
//! ([`Responses`]).
//!
//! The response shape is the contract with Envoy: an OK response replaces
//! the token header on every Envoy version and strips the API key; a denial
//! carries the HTTP status, a generic JSON body and the gRPC code, while the
//! precise reason goes only to Envoy's dynamic metadata (for its access log).
//! The bytes come from `wire`: denials are encoded once per reason, and OK
//! responses from a template per registry snapshot.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use envoy_types::ext_authz::v3::pb::HttpStatusCode;

use crate::check::{Decision, Denial, Grant, Mode, Outcome, Reason, SERVICE_ID_HEADER};
use crate::registry::Registry;
use crate::token::{self, Issued};
use crate::wire::{self, EncodedResponse, OkFields, OkTemplate};

/// A decision with the token its grant calls for, ready to answer.
#[derive(Debug)]
pub struct Answer<'r> {
    pub decision: Decision<'r>,
    /// The token signed for an issue-mode grant.
    pub issued: Option<Issued<'r>>,
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
                    },
                    Err(_) => Answer::denied(Denial::internal(Mode::Issue)),
                }
            }
            decision => Answer {
                decision,
                issued: None,
            },
        }
    }

    /// An answer that refuses.
    pub fn denied(denial: Denial<'r>) -> Answer<'r> {
        Answer {
            decision: Decision::Deny(denial),
            issued: None,
        }
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
