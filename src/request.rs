//! What Envoy asked: the attributes of one `CheckRequest` that anything
//! downstream reads, parsed once.
//!
//! The decision and telemetry both read [`Attributes`]; neither walks the
//! protobuf again. Everything here borrows from the request: parsing a Check
//! copies no strings.

use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;

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
    /// `source.address`, when it is an IP socket address.
    pub source_address: Option<(&'q str, u32)>,
}

impl<'q> Attributes<'q> {
    pub fn from_request(req: &'q CheckRequest) -> Self {
        let attrs = req.attributes.as_ref();
        let ext = attrs.map(|a| &a.context_extensions);
        let extension = |key: &str| ext.and_then(|e| e.get(key)).map(String::as_str);
        let mode = match extension("mode") {
            None | Some("issue") => RouteMode::Issue,
            Some("verify") => RouteMode::Verify,
            Some(_) => RouteMode::Unknown,
        };
        let source = attrs.and_then(|a| a.source.as_ref());
        let http = attrs
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let source_address = source
            .and_then(|s| s.address.as_ref())
            .and_then(|a| a.address.as_ref())
            .and_then(|a| match a {
                Address::SocketAddress(s) => Some((
                    s.address.as_str(),
                    match s.port_specifier {
                        Some(PortSpecifier::PortValue(p)) => p,
                        _ => 0,
                    },
                )),
                _ => None,
            });
        Attributes {
            mode,
            route_scope: extension("scope").unwrap_or(""),
            route_enforcement: extension("enforcement").map(|e| match e {
                "report" => Enforcement::Report,
                _ => Enforcement::Enforce,
            }),
            certificate: source.map_or("", |s| s.certificate.as_str()),
            principal: source.map_or("", |s| s.principal.as_str()),
            headers: Headers { http },
            request_id: http.map_or("", |h| h.id.as_str()),
            source_address,
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
    http: Option<&'q HttpRequest>,
}

impl<'q> Headers<'q> {
    /// Looks a lower-case header name up in both maps.
    pub fn single(&self, name: &str) -> Header<'q> {
        let Some(http) = self.http else {
            return Header::Absent;
        };
        let mut found = http.headers.get(name).map(|v| v.as_bytes());
        if let Some(map) = &http.header_map {
            for h in &map.headers {
                if h.key.eq_ignore_ascii_case(name) {
                    if found.is_some() {
                        return Header::Repeated;
                    }
                    found = Some(if h.raw_value.is_empty() {
                        h.value.as_bytes()
                    } else {
                        &h.raw_value
                    });
                }
            }
        }
        found.map_or(Header::Absent, Header::One)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};

    fn http(headers: &[(&str, &str)], raw: &[(&str, &[u8])]) -> HttpRequest {
        HttpRequest {
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
        }
    }

    #[test]
    fn headers_are_read_from_both_maps() {
        fn single<'q>(h: &'q HttpRequest, name: &str) -> Header<'q> {
            Headers { http: Some(h) }.single(name)
        }
        let h = http(&[("x-api-key", "a")], &[]);
        assert_eq!(single(&h, "x-api-key"), Header::One(b"a"));
        let h = http(&[], &[("x-api-key", b"b")]);
        assert_eq!(single(&h, "x-api-key"), Header::One(b"b"));
        let h = http(&[], &[("X-Api-Key", b"b"), ("x-api-key", b"c")]);
        assert_eq!(single(&h, "x-api-key"), Header::Repeated);
        let h = http(&[("x-api-key", "a")], &[("x-api-key", b"a")]);
        assert_eq!(single(&h, "x-api-key"), Header::Repeated);
        assert_eq!(single(&h, "other"), Header::Absent);
        assert_eq!(Headers { http: None }.single("x-api-key"), Header::Absent);
    }

    #[test]
    fn modes_and_defaults() {
        let mut req = CheckRequest::default();
        assert_eq!(Attributes::from_request(&req).mode, RouteMode::Issue);
        let attrs = req.attributes.get_or_insert_default();
        attrs
            .context_extensions
            .insert("mode".into(), "verify".into());
        assert_eq!(Attributes::from_request(&req).mode, RouteMode::Verify);
        req.attributes
            .get_or_insert_default()
            .context_extensions
            .insert("mode".into(), "Verify".into());
        assert_eq!(Attributes::from_request(&req).mode, RouteMode::Unknown);
    }
}
