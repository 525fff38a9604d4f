//! The steps after the decision: signing the token a grant calls for, and
//! Envoy's `CheckResponse` for each outcome.
//!
//! The response shape is the contract with Envoy: an OK response replaces
//! the token header on every Envoy version and strips the API key; a denial
//! carries the HTTP status, a generic JSON body and the gRPC code, while the
//! precise reason goes only to Envoy's dynamic metadata (for its access log).
//! A denial only reported (report mode, see `enforcement`) is an OK that
//! adds nothing and says `would_deny` in the metadata; a throttled caller
//! gets 429 with `retry-after`.

use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, HttpStatusCode, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{BoolValue, Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;

use crate::check::{
    Decision, Denial, Grant, Mode, Outcome, Reason, SERVICE_ID_HEADER, VerifyGrant,
};
use crate::enforcement::{self, Disposition};
use crate::registry::Registry;
use crate::request::Attributes;
use crate::throttle::Throttled;
use crate::token::{self, Issued};

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

    /// Envoy's response.
    pub fn into_response(self, registry: &Registry) -> CheckResponse {
        if let (Decision::Deny(denial), Disposition::Reported) = (&self.decision, self.disposition)
        {
            return would_deny(registry, denial.reason);
        }
        match (self.decision, self.issued) {
            (Decision::Allow(Grant::Issue(grant)), Some(token)) => {
                issued(registry, &grant.service.id, token)
            }
            (Decision::Allow(Grant::Verify(grant)), _) => verified(registry, grant),
            (Decision::Deny(denial), _) => denied(denial.reason),
            // Not built by `sign`; fail closed all the same.
            (Decision::Allow(Grant::Issue(_)), None) => denied(Reason::InternalError),
        }
    }
}

/// OK for an issue-mode Check: the token header set, the API key header
/// removed (unless the registry forwards it).
pub fn issued(registry: &Registry, service: &str, token: Issued<'_>) -> CheckResponse {
    ok(
        vec![overwrite_header(&registry.token.header, token.token)],
        api_key_removal(registry),
        vec![
            ("service", service.to_owned()),
            ("kid", token.kid.to_owned()),
            ("jti", token.jti),
        ],
    )
}

/// OK for a verify-mode Check: `x-service-id` set to the token's subject,
/// the API key header removed (unless the registry forwards it).
pub fn verified(registry: &Registry, grant: VerifyGrant<'_>) -> CheckResponse {
    ok(
        vec![overwrite_header(SERVICE_ID_HEADER, grant.subject)],
        api_key_removal(registry),
        vec![
            ("service", grant.service.id.clone()),
            ("kid", grant.kid.to_owned()),
            ("jti", grant.jti),
        ],
    )
}

/// OK for a denial that report mode only reports: no token, and the
/// headers an upstream could take for verified identity (the token header,
/// `x-service-id`) removed along with the API key header, so nothing
/// unverified reaches the upstream looking verified.
pub fn would_deny(registry: &Registry, reason: Reason) -> CheckResponse {
    let mut remove = vec![registry.token.header.clone(), SERVICE_ID_HEADER.to_owned()];
    remove.extend(api_key_removal(registry));
    ok(
        Vec::new(),
        remove,
        vec![("would_deny", reason.as_str().to_owned())],
    )
}

/// The API key header must not reach the upstream unless configured to.
/// Never the token header: Envoy applies removals after additions.
fn api_key_removal(registry: &Registry) -> Vec<String> {
    if registry.request.forward_api_key {
        Vec::new()
    } else {
        vec![registry.request.api_key_header.clone()]
    }
}

fn ok(
    headers: Vec<HeaderValueOption>,
    remove: Vec<String>,
    metadata: Vec<(&str, String)>,
) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: tonic::Code::Ok as i32,
            ..Default::default()
        }),
        dynamic_metadata: Some(service_auth_metadata(metadata)),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove: remove,
            ..Default::default()
        })),
    }
}

/// The denial for `reason`: status class, generic body, reason in metadata.
pub fn denied(reason: Reason) -> CheckResponse {
    denial(reason, Vec::new())
}

/// The refusal of a throttled caller: 429 (`too_many_failures`), and
/// `retry-after` in seconds.
pub fn throttled(throttled: &Throttled) -> CheckResponse {
    denial(
        Reason::TooManyFailures,
        vec![overwrite_header(
            "retry-after",
            throttled.retry_after_secs().to_string(),
        )],
    )
}

fn denial(reason: Reason, mut headers: Vec<HeaderValueOption>) -> CheckResponse {
    let (code, http, body) = match reason.outcome() {
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
        Outcome::Unavailable => (
            tonic::Code::Unavailable,
            HttpStatusCode::ServiceUnavailable,
            r#"{"error":"unavailable"}"#,
        ),
    };
    headers.insert(
        0,
        overwrite_header("content-type", "application/json".into()),
    );
    CheckResponse {
        status: Some(rpc::Status {
            code: code as i32,
            ..Default::default()
        }),
        dynamic_metadata: Some(service_auth_metadata(vec![(
            "reason",
            reason.as_str().to_owned(),
        )])),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http as i32 }),
            headers,
            body: body.into(),
        })),
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
