//! `wire::CheckView::decode` against prost's full `CheckRequest::decode` on
//! arbitrary bytes: the same verdict, and when both decode, the same values
//! for everything the view exposes (last-wins strings, merged messages, the
//! socket-address oneof, maps with repeated keys, appended header_map).
#![no_main]

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use service_auth::wire::{CheckView, Malformed, Port};

fuzz_target!(|data: &[u8]| {
    let full = CheckRequest::decode(data);
    let view = CheckView::decode(data);
    let (full, view) = match (full, view) {
        (Ok(full), Ok(view)) => (full, view),
        (Err(_), Err(Malformed::Protobuf)) => return,
        (full, view) => panic!(
            "verdicts differ: prost {:?}, view {:?}",
            full.map(drop),
            view.map(drop)
        ),
    };
    let attrs = full.attributes.unwrap_or_default();
    let source = attrs.source.unwrap_or_default();
    let http = attrs.request.and_then(|r| r.http).unwrap_or_default();
    assert_eq!(view.certificate(), source.certificate);
    assert_eq!(view.principal(), source.principal);
    assert_eq!(view.request_id(), http.id);
    let address = match source.address.and_then(|a| a.address) {
        Some(address::Address::SocketAddress(s)) => Some(s),
        _ => None,
    };
    match (view.source_address(), address) {
        (None, None) => {}
        (Some(v), Some(s)) => {
            assert_eq!(v.address, s.address);
            let port = match s.port_specifier {
                None => Port::Unset,
                Some(socket_address::PortSpecifier::PortValue(p)) => Port::Value(p),
                Some(socket_address::PortSpecifier::NamedPort(ref n)) => Port::Named(n),
            };
            assert_eq!(v.port, port);
        }
        (v, s) => panic!("source address differs: view {v:?}, prost {s:?}"),
    }
    let owned = |entries: Vec<(&str, &str)>| -> HashMap<String, String> {
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    assert_eq!(owned(view.headers().collect()), http.headers);
    for (k, v) in &http.headers {
        assert_eq!(view.header(k), Some(v.as_str()));
    }
    assert_eq!(
        owned(view.context_extensions().collect()),
        attrs.context_extensions
    );
    for (k, v) in &attrs.context_extensions {
        assert_eq!(view.context_extension(k), Some(v.as_str()));
    }
    let map = http.header_map.unwrap_or_default().headers;
    assert_eq!(view.header_map().len(), map.len());
    for (v, p) in view.header_map().iter().zip(&map) {
        assert_eq!(
            (v.key, v.value, v.raw_value),
            (&*p.key, &*p.value, &p.raw_value[..])
        );
    }
});
