//! What Envoy asked: the attributes of one Check that anything downstream
//! reads, taken once from the decoded request.
//!
//! The decision and telemetry both read [`Attributes`]; neither looks at the
//! request again. Everything here borrows from the request bytes (through
//! `wire::CheckView`): reading a Check copies no strings.

use crate::wire::{CheckView, Port};

use crate::config::Enforcement;

/// The per-route mode, from `context_extensions["mode"]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMode {
    /// Authenticate certificate + API key and issue a token (the default).
    Issue,
    /// Verify an incoming mesh token.
    Verify,
    /// A mode this sidecar does not know: a misconfigured route.
    Unknown,
}

/// The parts of a `CheckRequest` the sidecar reads.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'q> {
    pub mode: RouteMode,
    /// `context_extensions["scope"]`: scopes the route requires ("" if none).
    pub route_scope: &'q str,
    /// `context_extensions["enforcement"]`: the route's override of the
    /// registry's and the service's enforcement. A value other than
    /// `report` reads as `enforce`: a misspelt opt-out fails closed.
    pub route_enforcement: Option<Enforcement>,
    /// `source.certificate`: the URL-encoded PEM leaf ("" if none forwarded).
    pub certificate: &'q str,
    /// `source.principal`: Envoy's idea of the peer ("" if none).
    pub principal: &'q str,
    pub headers: Headers<'q>,
    /// `request.http.id`: Envoy's request id, for correlating logs.
    pub request_id: &'q str,
    /// `source.address`, when it is an IP socket address (port 0 if named
    /// or unset).
    pub source_address: Option<(&'q str, u32)>,
}

impl<'q> Attributes<'q> {
    pub fn from_view(view: &'q CheckView<'q>) -> Self {
        let mode = match view.context_extension("mode") {
            None | Some("issue") => RouteMode::Issue,
            Some("verify") => RouteMode::Verify,
            Some(_) => RouteMode::Unknown,
        };
        Attributes {
            mode,
            route_scope: view.context_extension("scope").unwrap_or(""),
            route_enforcement: view.context_extension("enforcement").map(|e| match e {
                "report" => Enforcement::Report,
                _ => Enforcement::Enforce,
            }),
            certificate: view.certificate(),
            principal: view.principal(),
            headers: Headers { view },
            request_id: view.request_id(),
            source_address: view.source_address().map(|a| {
                let port = match a.port {
                    Port::Value(p) => p,
                    Port::Unset | Port::Named(_) => 0,
                };
                (a.address, port)
            }),
        }
    }
}

/// A credential header as Envoy delivered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header<'q> {
    Absent,
    One(&'q [u8]),
    /// Sent more than once: which copy would the upstream believe?
    Repeated,
}

/// The request's headers, in both places Envoy may put them: `headers`
/// (lower-case names; a repeated header arrives joined with `,`) and
/// `header_map` (one entry per occurrence, raw bytes when Envoy's
/// `encode_raw_headers` is on).
#[derive(Debug, Clone, Copy)]
pub struct Headers<'q> {
    view: &'q CheckView<'q>,
}

impl<'q> Headers<'q> {
    /// Looks a lower-case header name up in both places.
    pub fn single(&self, name: &str) -> Header<'q> {
        let mut values = self.view.header_values(name);
        match (values.next(), values.next()) {
            (None, _) => Header::Absent,
            (Some(v), None) => Header::One(v),
            (Some(_), Some(_)) => Header::Repeated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    use prost::Message;

    fn request(headers: &[(&str, &str)], raw: &[(&str, &[u8])], ext: &[(&str, &str)]) -> Vec<u8> {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        headers: headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        header_map: (!raw.is_empty()).then(|| HeaderMap {
                            headers: raw
                                .iter()
                                .map(|(k, v)| HeaderValue {
                                    key: k.to_string(),
                                    raw_value: v.to_vec(),
                                    ..Default::default()
                                })
                                .collect(),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: ext
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
        }
        .encode_to_vec()
    }

    fn header(bytes: &[u8], name: &str) -> Option<Vec<u8>> {
        let view = CheckView::decode(bytes).unwrap();
        match Attributes::from_view(&view).headers.single(name) {
            Header::Absent => None,
            Header::One(v) => Some(v.to_vec()),
            Header::Repeated => Some(b"<repeated>".to_vec()),
        }
    }

    #[test]
    fn headers_are_read_from_both_maps() {
        let r = request(&[("x-api-key", "a")], &[], &[]);
        assert_eq!(header(&r, "x-api-key").as_deref(), Some(&b"a"[..]));
        let r = request(&[], &[("x-api-key", b"b")], &[]);
        assert_eq!(header(&r, "x-api-key").as_deref(), Some(&b"b"[..]));
        let r = request(&[], &[("X-Api-Key", b"b"), ("x-api-key", b"c")], &[]);
        assert_eq!(header(&r, "x-api-key").as_deref(), Some(&b"<repeated>"[..]));
        let r = request(&[("x-api-key", "a")], &[("x-api-key", b"a")], &[]);
        assert_eq!(header(&r, "x-api-key").as_deref(), Some(&b"<repeated>"[..]));
        assert_eq!(header(&r, "other"), None);
        assert_eq!(header(&[], "x-api-key"), None);
    }

    #[test]
    fn modes_and_defaults() {
        let mode = |ext: &[(&str, &str)]| {
            let bytes = request(&[], &[], ext);
            let view = CheckView::decode(&bytes).unwrap();
            Attributes::from_view(&view).mode
        };
        assert_eq!(mode(&[]), RouteMode::Issue);
        assert_eq!(mode(&[("mode", "issue")]), RouteMode::Issue);
        assert_eq!(mode(&[("mode", "verify")]), RouteMode::Verify);
        assert_eq!(mode(&[("mode", "Verify")]), RouteMode::Unknown);
    }
}
