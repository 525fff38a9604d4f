//! Reading protobuf fields off a borrowed buffer exactly as prost does, and
//! the schema of every message reachable from `CheckRequest` so that a field
//! the decision does not read is still validated like prost validates it.
//!
//! prost's verdict on a message depends on: the key (varint ≤ u32::MAX, wire
//! type 0–5, tag ≥ 1), each known field's wire type, string fields being
//! UTF-8, lengths fitting their enclosing message, group start/end tags
//! matching, and its recursion budget (`DecodeContext`, 100 levels). Values
//! of scalars never matter (enums are open, `uint32` truncates).

use prost::encoding::{WireType, decode_key, decode_varint};

/// Any reason prost would refuse the bytes. Which one does not matter: the
/// caller answers every malformed request the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Invalid;

impl From<prost::DecodeError> for Invalid {
    fn from(_: prost::DecodeError) -> Self {
        Invalid
    }
}

/// prost's `RECURSION_LIMIT` (not exported): the top-level fields get this
/// budget, every nested message, map entry or group one less, and at zero a
/// nested message or an unknown field is an error. The recursion-limit test
/// pins it against prost itself.
pub(super) const RECURSION_LIMIT: u32 = 100;

/// The fields of one message, read front to back.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fields<'a> {
    rest: &'a [u8],
    /// prost's remaining recursion budget for this message's fields.
    depth: u32,
}

impl<'a> Fields<'a> {
    /// A top-level message (what `Message::decode` sees).
    pub(super) fn top(bytes: &'a [u8]) -> Self {
        Fields {
            rest: bytes,
            depth: RECURSION_LIMIT,
        }
    }

    /// The next field's tag and wire type, or `None` at the end.
    pub(super) fn next_key(&mut self) -> Result<Option<(u32, WireType)>, Invalid> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        Ok(Some(decode_key(&mut self.rest)?))
    }

    pub(super) fn varint(&mut self, wire_type: WireType) -> Result<u64, Invalid> {
        expect(WireType::Varint, wire_type)?;
        Ok(decode_varint(&mut self.rest)?)
    }

    pub(super) fn bytes(&mut self, wire_type: WireType) -> Result<&'a [u8], Invalid> {
        expect(WireType::LengthDelimited, wire_type)?;
        self.length_delimited()
    }

    pub(super) fn str(&mut self, wire_type: WireType) -> Result<&'a str, Invalid> {
        std::str::from_utf8(self.bytes(wire_type)?).map_err(|_| Invalid)
    }

    /// A nested message (or map entry): prost's `message::merge`, which
    /// spends one level of the recursion budget.
    pub(super) fn nested(&mut self, wire_type: WireType) -> Result<Fields<'a>, Invalid> {
        expect(WireType::LengthDelimited, wire_type)?;
        let depth = self.depth.checked_sub(1).ok_or(Invalid)?;
        Ok(Fields {
            rest: self.length_delimited()?,
            depth,
        })
    }

    /// One entry of a `map<string, string>`: prost defaults a missing key or
    /// value to `""`, keeps the last of repeated ones, and skips other tags.
    pub(super) fn string_entry(
        &mut self,
        wire_type: WireType,
    ) -> Result<(&'a str, &'a str), Invalid> {
        let mut entry = self.nested(wire_type)?;
        let (mut key, mut value) = ("", "");
        while let Some((tag, wire_type)) = entry.next_key()? {
            match tag {
                1 => key = entry.str(wire_type)?,
                2 => value = entry.str(wire_type)?,
                _ => entry.skip_unknown(tag, wire_type)?,
            }
        }
        Ok((key, value))
    }

    /// Validates and skips a field of `msg` that the caller does not read.
    pub(super) fn skip(&mut self, msg: Msg, tag: u32, wire_type: WireType) -> Result<(), Invalid> {
        let Some(field) = msg.field(tag) else {
            return self.skip_unknown(tag, wire_type);
        };
        match field {
            Field::Varint => self.varint(wire_type).map(drop),
            Field::Fixed64 => {
                expect(WireType::SixtyFourBit, wire_type)?;
                self.advance(8)
            }
            Field::Str => self.str(wire_type).map(drop),
            Field::Bytes => self.bytes(wire_type).map(drop),
            Field::Message(inner) => self.nested(wire_type)?.validate(inner),
            Field::StringMap => self.string_entry(wire_type).map(drop),
            Field::MessageMap(inner) => {
                let mut entry = self.nested(wire_type)?;
                while let Some((tag, wire_type)) = entry.next_key()? {
                    match tag {
                        1 => entry.str(wire_type).map(drop)?,
                        2 => entry.nested(wire_type)?.validate(inner)?,
                        _ => entry.skip_unknown(tag, wire_type)?,
                    }
                }
                Ok(())
            }
        }
    }

    /// Validates every remaining field as a `msg`.
    pub(super) fn validate(mut self, msg: Msg) -> Result<(), Invalid> {
        while let Some((tag, wire_type)) = self.next_key()? {
            self.skip(msg, tag, wire_type)?;
        }
        Ok(())
    }

    /// prost's `skip_field`. Not called directly: its `DecodeContext` budget
    /// cannot be set from outside prost, and nested groups must spend this
    /// message's budget, not a fresh one.
    fn skip_unknown(&mut self, tag: u32, wire_type: WireType) -> Result<(), Invalid> {
        skip_field(&mut self.rest, tag, wire_type, self.depth)
    }

    fn length_delimited(&mut self) -> Result<&'a [u8], Invalid> {
        let len = decode_varint(&mut self.rest)?;
        let len = usize::try_from(len).map_err(|_| Invalid)?;
        if len > self.rest.len() {
            return Err(Invalid);
        }
        let (value, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(value)
    }

    fn advance(&mut self, len: usize) -> Result<(), Invalid> {
        self.rest = self.rest.get(len..).ok_or(Invalid)?;
        Ok(())
    }
}

fn expect(expected: WireType, actual: WireType) -> Result<(), Invalid> {
    if expected == actual {
        Ok(())
    } else {
        Err(Invalid)
    }
}

fn skip_field(buf: &mut &[u8], tag: u32, wire_type: WireType, depth: u32) -> Result<(), Invalid> {
    if depth == 0 {
        return Err(Invalid);
    }
    let len = match wire_type {
        WireType::Varint => decode_varint(buf).map(|_| 0)?,
        WireType::ThirtyTwoBit => 4,
        WireType::SixtyFourBit => 8,
        WireType::LengthDelimited => decode_varint(buf)?,
        WireType::StartGroup => loop {
            let (inner_tag, inner_wire_type) = decode_key(buf)?;
            if inner_wire_type == WireType::EndGroup {
                if inner_tag != tag {
                    return Err(Invalid);
                }
                break 0;
            }
            skip_field(buf, inner_tag, inner_wire_type, depth - 1)?;
        },
        WireType::EndGroup => return Err(Invalid),
    };
    let len = usize::try_from(len).map_err(|_| Invalid)?;
    *buf = buf.get(len..).ok_or(Invalid)?;
    Ok(())
}

/// The messages reachable from `CheckRequest.attributes` (envoy-types 0.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Msg {
    CheckRequest,
    AttributeContext,
    Peer,
    Request,
    HttpRequest,
    TlsSession,
    Timestamp,
    Address,
    SocketAddress,
    Pipe,
    EnvoyInternalAddress,
    Metadata,
    Struct,
    Value,
    ListValue,
    Any,
    HeaderMap,
    HeaderValue,
}

/// How prost decodes a field, as far as the verdict is concerned. Repeated
/// and oneof fields validate like singular ones (the closure has no packed
/// scalars).
#[derive(Debug, Clone, Copy)]
pub(super) enum Field {
    /// int32, int64, uint32, bool, enum.
    Varint,
    /// double.
    Fixed64,
    Str,
    Bytes,
    Message(Msg),
    /// `map<string, string>`.
    StringMap,
    /// `map<string, Msg>`.
    MessageMap(Msg),
}

impl Msg {
    /// The field with `tag`, or `None` for an unknown field.
    pub(super) fn field(self, tag: u32) -> Option<Field> {
        use Field::*;
        let field = match (self, tag) {
            (Msg::CheckRequest, 1) => Message(Msg::AttributeContext),
            // source, destination, request, context_extensions,
            // metadata_context, tls_session, route_metadata_context
            (Msg::AttributeContext, 1 | 2) => Message(Msg::Peer),
            (Msg::AttributeContext, 4) => Message(Msg::Request),
            (Msg::AttributeContext, 10) => StringMap,
            (Msg::AttributeContext, 11 | 13) => Message(Msg::Metadata),
            (Msg::AttributeContext, 12) => Message(Msg::TlsSession),
            // address, service, labels, principal, certificate
            (Msg::Peer, 1) => Message(Msg::Address),
            (Msg::Peer, 2 | 4 | 5) => Str,
            (Msg::Peer, 3) => StringMap,
            // time, http
            (Msg::Request, 1) => Message(Msg::Timestamp),
            (Msg::Request, 2) => Message(Msg::HttpRequest),
            // id, method, headers, path, host, scheme, query, fragment, size,
            // protocol, body, raw_body, header_map
            (Msg::HttpRequest, 1 | 2 | 4..=8 | 10 | 11) => Str,
            (Msg::HttpRequest, 3) => StringMap,
            (Msg::HttpRequest, 9) => Varint,
            (Msg::HttpRequest, 12) => Bytes,
            (Msg::HttpRequest, 13) => Message(Msg::HeaderMap),
            // sni
            (Msg::TlsSession, 1) => Str,
            // seconds, nanos
            (Msg::Timestamp, 1 | 2) => Varint,
            // oneof: socket_address, pipe, envoy_internal_address
            (Msg::Address, 1) => Message(Msg::SocketAddress),
            (Msg::Address, 2) => Message(Msg::Pipe),
            (Msg::Address, 3) => Message(Msg::EnvoyInternalAddress),
            // protocol, address, port_value | named_port, resolver_name,
            // ipv4_compat, network_namespace_filepath
            (Msg::SocketAddress, 1 | 3 | 6) => Varint,
            (Msg::SocketAddress, 2 | 4 | 5 | 7) => Str,
            // path, mode
            (Msg::Pipe, 1) => Str,
            (Msg::Pipe, 2) => Varint,
            // server_listener_name, endpoint_id
            (Msg::EnvoyInternalAddress, 1 | 2) => Str,
            // filter_metadata, typed_filter_metadata
            (Msg::Metadata, 1) => MessageMap(Msg::Struct),
            (Msg::Metadata, 2) => MessageMap(Msg::Any),
            (Msg::Struct, 1) => MessageMap(Msg::Value),
            // oneof kind: null, number, string, bool, struct, list
            (Msg::Value, 1 | 4) => Varint,
            (Msg::Value, 2) => Fixed64,
            (Msg::Value, 3) => Str,
            (Msg::Value, 5) => Message(Msg::Struct),
            (Msg::Value, 6) => Message(Msg::ListValue),
            (Msg::ListValue, 1) => Message(Msg::Value),
            // type_url, value
            (Msg::Any, 1) => Str,
            (Msg::Any, 2) => Bytes,
            (Msg::HeaderMap, 1) => Message(Msg::HeaderValue),
            // key, value, raw_value
            (Msg::HeaderValue, 1 | 2) => Str,
            (Msg::HeaderValue, 3) => Bytes,
            _ => return None,
        };
        Some(field)
    }
}
