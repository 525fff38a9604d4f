//! Differential tests (compiled only under #[cfg(test)], see `mod.rs`): the
//! partial decode against prost's full decode of `CheckRequest`, on valid
//! requests, their mutations, hand-written edge cases of the wire format,
//! and random input.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    Address, EnvoyInternalAddress, HeaderMap, HeaderValue, Metadata, Pipe, SocketAddress, address,
    envoy_internal_address, socket_address,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request, TlsSession,
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::google::protobuf::{Any, ListValue, Struct, Timestamp, Value, value::Kind};
use proptest::prelude::*;
use prost::Message;

use super::*;

/// What the decision reads, from either decoder, in comparable form.
#[derive(Debug, PartialEq)]
struct Extracted {
    certificate: String,
    principal: String,
    address: Option<(String, String)>,
    request_id: String,
    headers: HashMap<String, String>,
    header_map: Vec<(String, String, Vec<u8>)>,
    context_extensions: HashMap<String, String>,
}

fn from_prost(req: &CheckRequest) -> Extracted {
    let attrs = req.attributes.clone().unwrap_or_default();
    let source = attrs.source.unwrap_or_default();
    let http = attrs.request.and_then(|r| r.http).unwrap_or_default();
    let address = match source.address.and_then(|a| a.address) {
        Some(address::Address::SocketAddress(s)) => Some((
            s.address,
            match s.port_specifier {
                None => "unset".to_owned(),
                Some(socket_address::PortSpecifier::PortValue(p)) => format!("value {p}"),
                Some(socket_address::PortSpecifier::NamedPort(n)) => format!("named {n}"),
            },
        )),
        _ => None,
    };
    Extracted {
        certificate: source.certificate,
        principal: source.principal,
        address,
        request_id: http.id,
        headers: http.headers,
        header_map: http
            .header_map
            .unwrap_or_default()
            .headers
            .into_iter()
            .map(|h| (h.key, h.value, h.raw_value))
            .collect(),
        context_extensions: attrs.context_extensions,
    }
}

fn from_view(view: &CheckView<'_>) -> Extracted {
    let owned = |m: Vec<(&str, &str)>| -> HashMap<String, String> {
        m.into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    let headers = owned(view.headers().collect());
    let context_extensions = owned(view.context_extensions().collect());
    // The keyed lookups agree with the maps.
    for (k, v) in &headers {
        assert_eq!(view.header(k), Some(v.as_str()));
    }
    for (k, v) in &context_extensions {
        assert_eq!(view.context_extension(k), Some(v.as_str()));
    }
    Extracted {
        certificate: view.certificate().to_owned(),
        principal: view.principal().to_owned(),
        address: view.source_address().map(|s| {
            (
                s.address.to_owned(),
                match s.port {
                    Port::Unset => "unset".to_owned(),
                    Port::Value(p) => format!("value {p}"),
                    Port::Named(n) => format!("named {n}"),
                },
            )
        }),
        request_id: view.request_id().to_owned(),
        headers,
        header_map: view
            .header_map()
            .iter()
            .map(|h| (h.key.to_owned(), h.value.to_owned(), h.raw_value.to_vec()))
            .collect(),
        context_extensions,
    }
}

/// Both decoders agree on `bytes`: same verdict, same values. Returns
/// whether the bytes decode.
fn assert_same(bytes: &[u8]) -> bool {
    let full = CheckRequest::decode(bytes);
    let partial = CheckView::decode(bytes);
    match (&full, &partial) {
        (Ok(full), Ok(view)) => {
            assert_eq!(from_view(view), from_prost(full), "input {bytes:02x?}");
            true
        }
        (Err(_), Err(Malformed::Protobuf)) => false,
        _ => panic!(
            "verdicts differ on {bytes:02x?}: prost {:?}, view {:?}",
            full.map(drop),
            partial.map(drop)
        ),
    }
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

/// A request with every field of every reachable message set.
fn full_request() -> CheckRequest {
    let nested = Struct {
        fields: [
            ("s".into(), string_value("str")),
            (
                "n".into(),
                Value {
                    kind: Some(Kind::NumberValue(1.5)),
                },
            ),
            (
                "b".into(),
                Value {
                    kind: Some(Kind::BoolValue(true)),
                },
            ),
            (
                "z".into(),
                Value {
                    kind: Some(Kind::NullValue(0)),
                },
            ),
            (
                "l".into(),
                Value {
                    kind: Some(Kind::ListValue(ListValue {
                        values: vec![string_value("x"), string_value("y")],
                    })),
                },
            ),
        ]
        .into(),
    };
    let metadata = Metadata {
        filter_metadata: [(
            "envoy.filters.http.jwt".into(),
            Struct {
                fields: [(
                    "inner".into(),
                    Value {
                        kind: Some(Kind::StructValue(nested)),
                    },
                )]
                .into(),
            },
        )]
        .into(),
        typed_filter_metadata: [(
            "typed".into(),
            Any {
                type_url: "type.googleapis.com/x".into(),
                value: vec![0xff, 0x00, 0x80],
            },
        )]
        .into(),
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        protocol: 1,
                        address: "10.1.2.3".into(),
                        resolver_name: "r".into(),
                        ipv4_compat: true,
                        network_namespace_filepath: "/ns".into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(51000)),
                    })),
                }),
                service: "svc".into(),
                labels: [("app".into(), "caller".into())].into(),
                principal: "spiffe://mesh/sa/caller".into(),
                certificate: "-----BEGIN%20CERTIFICATE-----%0AMIIB...".into(),
            }),
            destination: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::Pipe(Pipe {
                        path: "/run/sock".into(),
                        mode: 0o600,
                    })),
                }),
                principal: "spiffe://mesh/sa/dest".into(),
                ..Default::default()
            }),
            request: Some(Request {
                time: Some(Timestamp {
                    seconds: 1_800_000_000,
                    nanos: -5,
                }),
                http: Some(HttpRequest {
                    id: "req-1".into(),
                    method: "POST".into(),
                    headers: [
                        ("x-api-key".into(), "key-1".into()),
                        ("x-scope".into(), "read,write".into()),
                    ]
                    .into(),
                    header_map: Some(HeaderMap {
                        headers: vec![
                            HeaderValue {
                                key: "x-api-key".into(),
                                value: "".into(),
                                raw_value: b"raw\xff".to_vec(),
                            },
                            HeaderValue {
                                key: "X-Other".into(),
                                value: "v".into(),
                                raw_value: vec![],
                            },
                        ],
                    }),
                    path: "/orders?x=1".into(),
                    host: "orders.svc".into(),
                    scheme: "https".into(),
                    query: "x=1".into(),
                    fragment: "f".into(),
                    size: -1,
                    protocol: "HTTP/2".into(),
                    body: "{}".into(),
                    raw_body: vec![0xc3, 0x28],
                }),
            }),
            context_extensions: [
                ("mode".into(), "issue".into()),
                ("scope".into(), "read".into()),
            ]
            .into(),
            metadata_context: Some(metadata.clone()),
            route_metadata_context: Some(metadata),
            tls_session: Some(TlsSession { sni: "sni".into() }),
        }),
    }
}

/// Variants that exercise the other oneof arms and empty messages.
fn corpus() -> Vec<CheckRequest> {
    let mut named = full_request();
    let source = named.attributes.as_mut().unwrap().source.as_mut().unwrap();
    source.address = Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: "::1".into(),
            port_specifier: Some(socket_address::PortSpecifier::NamedPort("https".into())),
            ..Default::default()
        })),
    });
    let mut internal = full_request();
    internal
        .attributes
        .as_mut()
        .unwrap()
        .source
        .as_mut()
        .unwrap()
        .address = Some(Address {
        address: Some(address::Address::EnvoyInternalAddress(
            EnvoyInternalAddress {
                endpoint_id: "e".into(),
                address_name_specifier: Some(
                    envoy_internal_address::AddressNameSpecifier::ServerListenerName("l".into()),
                ),
            },
        )),
    });
    vec![
        full_request(),
        named,
        internal,
        CheckRequest::default(),
        CheckRequest {
            attributes: Some(AttributeContext::default()),
        },
    ]
}

#[test]
fn the_corpus_decodes_to_the_same_values() {
    for req in corpus() {
        assert!(assert_same(&req.encode_to_vec()));
    }
    let view_bytes = full_request().encode_to_vec();
    let view = CheckView::decode(&view_bytes).unwrap();
    assert_eq!(
        view.certificate(),
        "-----BEGIN%20CERTIFICATE-----%0AMIIB..."
    );
    assert_eq!(
        view.source_address(),
        Some(SocketAddressView {
            address: "10.1.2.3",
            port: Port::Value(51000)
        })
    );
    assert_eq!(view.context_extension("scope"), Some("read"));
    let api_keys: Vec<&[u8]> = view.header_values("x-api-key").collect();
    assert_eq!(api_keys, [&b"key-1"[..], b"raw\xff"]);
    let other: Vec<&[u8]> = view.header_values("x-other").collect();
    assert_eq!(other, [b"v"]);
    assert_eq!(view.header_values("absent").count(), 0);
}

#[test]
fn every_truncation_and_bit_flip_gets_the_same_verdict() {
    let bytes = full_request().encode_to_vec();
    let (mut ok, mut err) = (0, 0);
    for len in 0..bytes.len() {
        if assert_same(&bytes[..len]) {
            ok += 1
        } else {
            err += 1
        }
    }
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut flipped = bytes.clone();
            flipped[i] ^= 1 << bit;
            if assert_same(&flipped) {
                ok += 1
            } else {
                err += 1
            }
        }
    }
    // Both outcomes were exercised, many times.
    assert!(ok > 100 && err > 100, "ok {ok}, err {err}");
}

/// Sets one string field of the full request to `marker`; one entry per
/// string field reachable from `CheckRequest` (map keys and values too).
/// Sets one field of a request to a value.
type Setter = fn(&mut CheckRequest, &str);

fn string_fields() -> Vec<(&'static str, Setter)> {
    fn attrs(r: &mut CheckRequest) -> &mut AttributeContext {
        r.attributes.as_mut().unwrap()
    }
    fn source(r: &mut CheckRequest) -> &mut Peer {
        attrs(r).source.as_mut().unwrap()
    }
    fn http(r: &mut CheckRequest) -> &mut HttpRequest {
        attrs(r).request.as_mut().unwrap().http.as_mut().unwrap()
    }
    fn socket(r: &mut CheckRequest) -> &mut SocketAddress {
        match source(r)
            .address
            .as_mut()
            .unwrap()
            .address
            .as_mut()
            .unwrap()
        {
            address::Address::SocketAddress(s) => s,
            _ => unreachable!(),
        }
    }
    fn metadata(r: &mut CheckRequest) -> &mut Metadata {
        attrs(r).metadata_context.as_mut().unwrap()
    }
    fn inner_struct(r: &mut CheckRequest) -> &mut Struct {
        let value = metadata(r)
            .filter_metadata
            .get_mut("envoy.filters.http.jwt")
            .unwrap()
            .fields
            .get_mut("inner")
            .unwrap();
        match value.kind.as_mut().unwrap() {
            Kind::StructValue(s) => s,
            _ => unreachable!(),
        }
    }
    vec![
        ("source.certificate", |r, m| {
            source(r).certificate = m.into()
        }),
        ("source.principal", |r, m| source(r).principal = m.into()),
        ("source.service", |r, m| source(r).service = m.into()),
        ("source.labels key", |r, m| {
            source(r).labels.insert(m.into(), "v".into());
        }),
        ("source.labels value", |r, m| {
            source(r).labels.insert("k".into(), m.into());
        }),
        ("source.address.address", |r, m| {
            socket(r).address = m.into()
        }),
        ("source.address.resolver_name", |r, m| {
            socket(r).resolver_name = m.into()
        }),
        ("source.address.network_namespace_filepath", |r, m| {
            socket(r).network_namespace_filepath = m.into()
        }),
        ("source.address.named_port", |r, m| {
            socket(r).port_specifier = Some(socket_address::PortSpecifier::NamedPort(m.into()))
        }),
        ("destination.address.pipe.path", |r, m| {
            attrs(r).destination.as_mut().unwrap().address = Some(Address {
                address: Some(address::Address::Pipe(Pipe {
                    path: m.into(),
                    mode: 0,
                })),
            })
        }),
        ("destination.address.internal", |r, m| {
            attrs(r).destination.as_mut().unwrap().address = Some(Address {
                address: Some(address::Address::EnvoyInternalAddress(
                    EnvoyInternalAddress {
                        endpoint_id: "e".into(),
                        address_name_specifier: Some(
                            envoy_internal_address::AddressNameSpecifier::ServerListenerName(
                                m.into(),
                            ),
                        ),
                    },
                )),
            })
        }),
        ("destination.address.internal.endpoint_id", |r, m| {
            attrs(r).destination.as_mut().unwrap().address = Some(Address {
                address: Some(address::Address::EnvoyInternalAddress(
                    EnvoyInternalAddress {
                        endpoint_id: m.into(),
                        address_name_specifier: None,
                    },
                )),
            })
        }),
        ("destination.principal", |r, m| {
            attrs(r).destination.as_mut().unwrap().principal = m.into()
        }),
        ("http.id", |r, m| http(r).id = m.into()),
        ("http.method", |r, m| http(r).method = m.into()),
        ("http.headers key", |r, m| {
            http(r).headers.insert(m.into(), "v".into());
        }),
        ("http.headers value", |r, m| {
            http(r).headers.insert("x-api-key".into(), m.into());
        }),
        ("http.path", |r, m| http(r).path = m.into()),
        ("http.host", |r, m| http(r).host = m.into()),
        ("http.scheme", |r, m| http(r).scheme = m.into()),
        ("http.query", |r, m| http(r).query = m.into()),
        ("http.fragment", |r, m| http(r).fragment = m.into()),
        ("http.protocol", |r, m| http(r).protocol = m.into()),
        ("http.body", |r, m| http(r).body = m.into()),
        ("http.header_map key", |r, m| {
            http(r).header_map.as_mut().unwrap().headers[0].key = m.into()
        }),
        ("http.header_map value", |r, m| {
            http(r).header_map.as_mut().unwrap().headers[1].value = m.into()
        }),
        ("context_extensions key", |r, m| {
            attrs(r).context_extensions.insert(m.into(), "v".into());
        }),
        ("context_extensions value", |r, m| {
            attrs(r).context_extensions.insert("scope".into(), m.into());
        }),
        ("tls_session.sni", |r, m| {
            attrs(r).tls_session.as_mut().unwrap().sni = m.into()
        }),
        ("metadata filter key", |r, m| {
            metadata(r)
                .filter_metadata
                .insert(m.into(), Struct::default());
        }),
        ("metadata struct key", |r, m| {
            inner_struct(r).fields.insert(m.into(), string_value("v"));
        }),
        ("metadata string_value", |r, m| {
            inner_struct(r).fields.insert("s".into(), string_value(m));
        }),
        ("metadata list string_value", |r, m| {
            inner_struct(r).fields.insert(
                "l".into(),
                Value {
                    kind: Some(Kind::ListValue(ListValue {
                        values: vec![string_value(m)],
                    })),
                },
            );
        }),
        ("metadata typed key", |r, m| {
            metadata(r)
                .typed_filter_metadata
                .insert(m.into(), Any::default());
        }),
        ("metadata typed type_url", |r, m| {
            metadata(r).typed_filter_metadata.insert(
                "typed".into(),
                Any {
                    type_url: m.into(),
                    value: vec![],
                },
            );
        }),
        ("route_metadata_context string_value", |r, m| {
            attrs(r).route_metadata_context = Some(Metadata {
                filter_metadata: [(
                    "f".into(),
                    Struct {
                        fields: [("k".into(), string_value(m))].into(),
                    },
                )]
                .into(),
                ..Default::default()
            });
        }),
    ]
}

#[test]
fn invalid_utf8_in_any_string_field_is_malformed_in_both() {
    const MARKER: &str = "MARKER-a\u{e9}b";
    for (name, set) in string_fields() {
        let mut req = full_request();
        set(&mut req, MARKER);
        let bytes = req.encode_to_vec();
        assert!(assert_same(&bytes), "{name}: the valid marker decodes");
        let at = bytes
            .windows(MARKER.len())
            .position(|w| w == MARKER.as_bytes())
            .unwrap_or_else(|| panic!("{name}: marker not encoded"));
        // Invalid UTF-8 of the same length: a lone continuation byte, a
        // truncated sequence, an overlong encoding, a surrogate.
        for bad in [
            &[0x80u8][..],
            &[0xc3, 0x28],
            &[0xc0, 0xaf],
            &[0xed, 0xa0, 0x80],
        ] {
            let mut corrupted = bytes.clone();
            corrupted[at..at + bad.len()].copy_from_slice(bad);
            assert!(!assert_same(&corrupted), "{name}: {bad:02x?} accepted");
        }
    }
}

#[test]
fn repeated_messages_merge_like_prost() {
    // Concatenating two encodings is protobuf's merge: scalars and strings
    // take the later value, messages merge, repeated fields append, maps
    // keep the later entry, and a oneof switches or merges its variant.
    let corpus = corpus();
    let mut other = full_request();
    {
        let attrs = other.attributes.as_mut().unwrap();
        let source = attrs.source.as_mut().unwrap();
        source.certificate = "second".into();
        source.principal = String::new();
        source.address = Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: String::new(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(7)),
                ..Default::default()
            })),
        });
        let http = attrs.request.as_mut().unwrap().http.as_mut().unwrap();
        http.headers.insert("x-api-key".into(), "key-2".into());
        attrs
            .context_extensions
            .insert("mode".into(), "verify".into());
    }
    for a in corpus.iter().chain([&other]) {
        for b in corpus.iter().chain([&other]) {
            let bytes = [a.encode_to_vec(), b.encode_to_vec()].concat();
            assert!(assert_same(&bytes));
        }
    }
    // Spot check the merged view directly.
    let bytes = [full_request().encode_to_vec(), other.encode_to_vec()].concat();
    let view = CheckView::decode(&bytes).unwrap();
    assert_eq!(view.certificate(), "second");
    assert_eq!(
        view.principal(),
        "spiffe://mesh/sa/caller",
        "empty strings are not encoded"
    );
    assert_eq!(
        view.source_address(),
        Some(SocketAddressView {
            address: "10.1.2.3",
            port: Port::Value(7)
        }),
        "socket addresses merge"
    );
    assert_eq!(view.header("x-api-key"), Some("key-2"));
    assert_eq!(view.header_map().len(), 4, "repeated fields append");
    assert_eq!(view.context_extension("mode"), Some("verify"));
}

/// Hand-built protobuf, for what prost's encoder never produces.
mod raw {
    pub fn key(tag: u32, wire_type: u8) -> Vec<u8> {
        varint(u64::from(tag) << 3 | u64::from(wire_type))
    }
    pub fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
        out
    }
    pub fn ld(tag: u32, payload: &[u8]) -> Vec<u8> {
        [key(tag, 2), varint(payload.len() as u64), payload.to_vec()].concat()
    }
    pub fn int(tag: u32, v: u64) -> Vec<u8> {
        [key(tag, 0), varint(v)].concat()
    }
    pub fn group(tag: u32, inner: &[u8]) -> Vec<u8> {
        [key(tag, 3), inner.to_vec(), key(tag, 4)].concat()
    }
    /// `CheckRequest { attributes: { source: { <peer> } } }`.
    pub fn in_source(peer: &[u8]) -> Vec<u8> {
        ld(1, &ld(1, peer))
    }
    /// `CheckRequest { attributes: { request: { http: { <http> } } } }`.
    pub fn in_http(http: &[u8]) -> Vec<u8> {
        ld(1, &ld(4, &ld(2, http)))
    }
}

#[test]
fn hand_written_edge_cases_get_the_same_verdict() {
    use raw::*;
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("empty", vec![], true),
        ("unknown varint at top", int(99, 5), true),
        (
            "unknown fixed32/64 at top",
            [key(98, 5), vec![0; 4], key(97, 1), vec![0; 8]].concat(),
            true,
        ),
        (
            "fixed32 truncated",
            [key(98, 5), vec![0; 3]].concat(),
            false,
        ),
        (
            "unknown group",
            group(99, &[int(1, 1), ld(2, b"x"), group(3, &[])].concat()),
            true,
        ),
        (
            "group end tag mismatch",
            [key(99, 3), key(98, 4)].concat(),
            false,
        ),
        (
            "unterminated group",
            [key(99, 3), int(1, 1)].concat(),
            false,
        ),
        ("lone end group", key(99, 4), false),
        ("tag zero", vec![0x00], false),
        ("wire type 6", key(5, 6), false),
        ("wire type 7", key(5, 7), false),
        ("key over u32", varint(1 << 32 | 2), false),
        ("largest tag", int((1 << 29) - 1, 1), true),
        (
            "11-byte varint",
            [key(99, 0), vec![0xff; 10], vec![0x01]].concat(),
            false,
        ),
        (
            "10-byte varint overflow",
            [key(99, 0), vec![0xff; 9], vec![0x02]].concat(),
            false,
        ),
        (
            "10-byte varint max",
            [key(99, 0), vec![0xff; 9], vec![0x01]].concat(),
            true,
        ),
        ("truncated varint", [key(99, 0), vec![0x80]].concat(), false),
        (
            "length past end",
            [key(99, 2), varint(5), b"abc".to_vec()].concat(),
            false,
        ),
        ("attributes as varint", int(1, 1), false),
        ("attributes as group", group(1, &[]), false),
        ("certificate as varint", in_source(&int(5, 1)), false),
        (
            "certificate invalid utf-8",
            in_source(&ld(5, &[0xff])),
            false,
        ),
        (
            "service invalid utf-8 (skipped field)",
            in_source(&ld(2, &[0xff])),
            false,
        ),
        (
            "unknown field in peer",
            in_source(&[int(50, 1), ld(5, b"c")].concat()),
            true,
        ),
        ("group inside peer", in_source(&group(50, &int(1, 1))), true),
        // A map entry of two bytes whose second byte lies past `attributes`.
        (
            "field crosses message end",
            [ld(1, &[key(10, 2), vec![0x02, 0x18]].concat()), vec![0x01]].concat(),
            false,
        ),
        (
            "port as string",
            in_source(&ld(1, &ld(1, &ld(3, b"80")))),
            false,
        ),
        (
            "port truncates to u32",
            in_source(&ld(1, &ld(1, &int(3, (1 << 32) + 443)))),
            true,
        ),
        (
            "port then named port",
            in_source(&ld(1, &ld(1, &[int(3, 1), ld(4, b"h")].concat()))),
            true,
        ),
        (
            "socket then pipe",
            in_source(&[ld(1, &ld(1, &ld(2, b"a"))), ld(1, &ld(2, &ld(1, b"p")))].concat()),
            true,
        ),
        (
            "pipe then socket",
            in_source(&[ld(1, &ld(2, &ld(1, b"p"))), ld(1, &ld(1, &int(3, 9)))].concat()),
            true,
        ),
        (
            "socket, pipe, socket",
            in_source(&ld(
                1,
                &[ld(1, &ld(2, b"a")), ld(2, &[]), ld(1, &int(3, 9))].concat(),
            )),
            true,
        ),
        ("size as string", in_http(&ld(9, b"1")), false),
        (
            "size as fixed64",
            in_http(&[key(9, 1), vec![0; 8]].concat()),
            false,
        ),
        ("raw_body invalid utf-8", in_http(&ld(12, &[0xff])), true),
        ("body invalid utf-8", in_http(&ld(11, &[0xff])), false),
        (
            "header entry without value",
            in_http(&ld(3, &ld(1, b"x-api-key"))),
            true,
        ),
        (
            "header entry without key",
            in_http(&ld(3, &ld(2, b"v"))),
            true,
        ),
        (
            "header entry repeated key",
            in_http(&ld(3, &[ld(1, b"a"), ld(1, b"b"), ld(2, b"v")].concat())),
            true,
        ),
        (
            "header entry unknown field",
            in_http(&ld(3, &[ld(1, b"a"), int(3, 1), ld(2, b"v")].concat())),
            true,
        ),
        (
            "header entry value as varint",
            in_http(&ld(3, &[ld(1, b"a"), int(2, 1)].concat())),
            false,
        ),
        ("header entry as varint", in_http(&int(3, 1)), false),
        (
            "header map value merges",
            in_http(
                &[
                    ld(13, &ld(1, &ld(1, b"a"))),
                    ld(13, &ld(1, &[ld(1, b"b"), ld(3, b"\xff")].concat())),
                ]
                .concat(),
            ),
            true,
        ),
        (
            "header value repeated key",
            in_http(&ld(
                13,
                &ld(
                    1,
                    &[ld(1, b"a"), ld(1, b"b"), ld(2, b"v"), ld(2, b"w")].concat(),
                ),
            )),
            true,
        ),
        (
            "number_value as varint",
            ld(
                1,
                &ld(
                    11,
                    &ld(
                        1,
                        &[
                            ld(1, b"f"),
                            ld(2, &ld(1, &[ld(1, b"k"), ld(2, &int(2, 1))].concat())),
                        ]
                        .concat(),
                    ),
                ),
            ),
            false,
        ),
        (
            "null_value any enum",
            ld(
                1,
                &ld(
                    11,
                    &ld(
                        1,
                        &[
                            ld(1, b"f"),
                            ld(2, &ld(1, &[ld(1, b"k"), ld(2, &int(1, 77))].concat())),
                        ]
                        .concat(),
                    ),
                ),
            ),
            true,
        ),
        (
            "time nanos as ld",
            ld(1, &ld(4, &ld(1, &ld(2, b"")))),
            false,
        ),
        ("packed-looking unknown", ld(1, &ld(40, &[1, 2, 3])), true),
    ];
    for (name, bytes, decodes) in cases {
        let got = std::panic::catch_unwind(|| assert_same(&bytes))
            .unwrap_or_else(|_| panic!("{name}: decoders disagree"));
        assert_eq!(got, decodes, "{name}: expected decodes={decodes}");
    }
}

#[test]
fn the_recursion_limit_matches_prost() {
    use raw::*;
    // metadata_context.filter_metadata["f"] = Struct, then `n` levels of
    // Value{list_value: ListValue{values: [..]}}; the innermost Value holds
    // `leaf`. Each list level spends two levels of prost's budget.
    fn nested(n: usize, leaf: &[u8]) -> Vec<u8> {
        let mut value = leaf.to_vec();
        for _ in 0..n {
            value = ld(6, &ld(1, &value));
        }
        let strukt = ld(1, &[ld(1, b"k"), ld(2, &value)].concat());
        ld(1, &ld(11, &ld(1, &[ld(1, b"f"), ld(2, &strukt)].concat())))
    }
    let leaves: [&[u8]; 5] = [
        &[],
        &ld(3, b"s"),
        &int(99, 1),
        &group(99, &group(98, &[])),
        &ld(5, &[]),
    ];
    for leaf in leaves {
        let verdicts: Vec<bool> = (40..54).map(|n| assert_same(&nested(n, leaf))).collect();
        assert!(
            verdicts.contains(&true) && verdicts.contains(&false),
            "{verdicts:?}"
        );
    }
    // Groups spend budget too.
    let mut g = Vec::new();
    let mut verdicts = Vec::new();
    for _ in 0..110 {
        g = group(99, &g);
        verdicts.push(assert_same(&g));
    }
    assert!(verdicts.contains(&true) && verdicts.contains(&false));
}

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        prop::sample::select(&["x-api-key", "x-scope", "scope", "mode", "a"][..])
            .prop_map(String::from),
        prop::collection::vec(any::<char>(), 1..12).prop_map(String::from_iter),
    ]
}

prop_compose! {
    fn arb_request()(
        certificate in arb_string(),
        principal in arb_string(),
        port in prop::option::of(any::<u32>()),
        address in arb_string(),
        id in arb_string(),
        headers in prop::collection::hash_map(arb_string(), arb_string(), 0..6),
        raw in prop::collection::vec((arb_string(), arb_string(), prop::collection::vec(any::<u8>(), 0..4)), 0..4),
        ext in prop::collection::hash_map(arb_string(), arb_string(), 0..3),
        path in arb_string(),
        size in any::<i64>(),
    ) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address,
                            port_specifier: port.map(socket_address::PortSpecifier::PortValue),
                            ..Default::default()
                        })),
                    }),
                    principal,
                    certificate,
                    ..Default::default()
                }),
                request: Some(Request {
                    time: None,
                    http: Some(HttpRequest {
                        id,
                        headers,
                        header_map: (!raw.is_empty()).then(|| HeaderMap {
                            headers: raw
                                .into_iter()
                                .map(|(key, value, raw_value)| HeaderValue { key, value, raw_value })
                                .collect(),
                        }),
                        path,
                        size,
                        ..Default::default()
                    }),
                }),
                context_extensions: ext,
                ..Default::default()
            }),
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    None,
    Flip { at: usize, bit: u8 },
    Truncate { at: usize },
    Set { at: usize, byte: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, len: usize },
    AppendOther,
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        Just(Mutation::None),
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..6))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..5).prop_map(|(at, len)| Mutation::Remove { at, len }),
        Just(Mutation::AppendOther),
    ]
}

fn mutate(mut bytes: Vec<u8>, other: &[u8], mutation: &[Mutation]) -> Vec<u8> {
    for m in mutation {
        let n = bytes.len().max(1);
        match m {
            Mutation::None => {}
            Mutation::Flip { at, bit } => {
                if let Some(b) = bytes.get_mut(at % n) {
                    *b ^= 1 << bit
                }
            }
            Mutation::Truncate { at } => bytes.truncate(at % n),
            Mutation::Set { at, byte } => {
                if let Some(b) = bytes.get_mut(at % n) {
                    *b = *byte
                }
            }
            Mutation::Insert { at, bytes: new } => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, new.iter().copied());
            }
            Mutation::Remove { at, len } => {
                let at = at % n;
                let end = (at + len).min(bytes.len());
                if at < end {
                    bytes.drain(at..end);
                }
            }
            Mutation::AppendOther => bytes.extend_from_slice(other),
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn mutated_requests_get_the_same_verdict_and_values(
        req in arb_request(),
        other in arb_request(),
        mutations in prop::collection::vec(arb_mutation(), 0..4),
    ) {
        let bytes = mutate(req.encode_to_vec(), &other.encode_to_vec(), &mutations);
        assert_same(&bytes);
    }

    #[test]
    fn random_bytes_get_the_same_verdict(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        assert_same(&bytes);
    }
}
