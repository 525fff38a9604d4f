//! `CheckView`: the parts of a `CheckRequest` the decision reads, borrowed
//! from the request bytes, after validating the whole message exactly as
//! `prost::Message::decode` would.
//!
//! Repeated occurrences merge the way prost merges them: the last value wins
//! for strings and scalars, nested messages merge field by field, repeated
//! fields append, and a map keeps the last entry for a key. The fields are
//! visited in wire order, so "last seen" is "last wins" at every level.

use super::Malformed;
use super::fields::{Fields, Invalid, Msg};

/// What the decision reads from a `CheckRequest`. Absent strings are `""`,
/// as in the prost message.
#[derive(Debug, Clone, Default)]
pub struct CheckView<'a> {
    certificate: &'a str,
    principal: &'a str,
    source_address: Option<SocketAddressView<'a>>,
    request_id: &'a str,
    /// `http.headers` entries in wire order; lookups take the last per key.
    headers: Vec<(&'a str, &'a str)>,
    header_map: Vec<HeaderEntry<'a>>,
    /// `context_extensions` entries in wire order; last per key wins.
    context_extensions: Vec<(&'a str, &'a str)>,
}

/// `attributes.source.address` when it is a `socket_address`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketAddressView<'a> {
    pub address: &'a str,
    pub port: Port<'a>,
}

/// `SocketAddress.port_specifier`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Port<'a> {
    #[default]
    Unset,
    Value(u32),
    Named(&'a str),
}

/// One `http.header_map` entry (Envoy's `encode_raw_headers`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderEntry<'a> {
    pub key: &'a str,
    pub value: &'a str,
    pub raw_value: &'a [u8],
}

impl<'a> HeaderEntry<'a> {
    /// The value Envoy meant: `raw_value` when set, else `value`.
    pub fn bytes(&self) -> &'a [u8] {
        if self.raw_value.is_empty() {
            self.value.as_bytes()
        } else {
            self.raw_value
        }
    }
}

impl<'a> CheckView<'a> {
    /// Decodes one `CheckRequest` message (without the gRPC prefix). Fails
    /// exactly when `CheckRequest::decode` fails.
    pub fn decode(bytes: &'a [u8]) -> Result<CheckView<'a>, Malformed> {
        let mut view = CheckView::default();
        view.check_request(Fields::top(bytes))
            .map_err(|Invalid| Malformed::Protobuf)?;
        Ok(view)
    }

    /// `attributes.source.certificate`: the URL-encoded PEM Envoy forwards.
    pub fn certificate(&self) -> &'a str {
        self.certificate
    }

    /// `attributes.source.principal`.
    pub fn principal(&self) -> &'a str {
        self.principal
    }

    /// `attributes.source.address`, when it is a socket address.
    pub fn source_address(&self) -> Option<SocketAddressView<'a>> {
        self.source_address
    }

    /// `attributes.request.http.id`.
    pub fn request_id(&self) -> &'a str {
        self.request_id
    }

    /// `http.headers[name]` (the map Envoy fills with lower-case names and
    /// repeated headers joined with `,`).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        last_value(&self.headers, name)
    }

    /// Every occurrence of a header: the `http.headers` value, then each
    /// `header_map` entry whose key equals `name` ignoring ASCII case (its
    /// raw value when set). More than one item means the header repeats.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        self.header(name).map(str::as_bytes).into_iter().chain(
            self.header_map
                .iter()
                .filter(move |h| h.key.eq_ignore_ascii_case(name))
                .map(HeaderEntry::bytes),
        )
    }

    /// The `http.headers` map as prost builds it (one entry per key).
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        distinct(&self.headers)
    }

    /// The `http.header_map` entries, in order.
    pub fn header_map(&self) -> &[HeaderEntry<'a>] {
        &self.header_map
    }

    /// `attributes.context_extensions[key]`.
    pub fn context_extension(&self, key: &str) -> Option<&'a str> {
        last_value(&self.context_extensions, key)
    }

    /// The `context_extensions` map as prost builds it (one entry per key).
    pub fn context_extensions(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        distinct(&self.context_extensions)
    }

    fn check_request(&mut self, mut f: Fields<'a>) -> Result<(), Invalid> {
        while let Some((tag, wire_type)) = f.next_key()? {
            match tag {
                1 => self.attributes(f.nested(wire_type)?)?,
                _ => f.skip(Msg::CheckRequest, tag, wire_type)?,
            }
        }
        Ok(())
    }

    fn attributes(&mut self, mut f: Fields<'a>) -> Result<(), Invalid> {
        while let Some((tag, wire_type)) = f.next_key()? {
            match tag {
                1 => self.source(f.nested(wire_type)?)?,
                4 => self.request(f.nested(wire_type)?)?,
                10 => self.context_extensions.push(f.string_entry(wire_type)?),
                _ => f.skip(Msg::AttributeContext, tag, wire_type)?,
            }
        }
        Ok(())
    }

    fn source(&mut self, mut f: Fields<'a>) -> Result<(), Invalid> {
        while let Some((tag, wire_type)) = f.next_key()? {
            match tag {
                1 => self.address(f.nested(wire_type)?)?,
                4 => self.principal = f.str(wire_type)?,
                5 => self.certificate = f.str(wire_type)?,
                _ => f.skip(Msg::Peer, tag, wire_type)?,
            }
        }
        Ok(())
    }

    /// `Address` is a oneof: a `socket_address` merges into the current one
    /// only if that is a socket address too; any other variant replaces it.
    fn address(&mut self, mut f: Fields<'a>) -> Result<(), Invalid> {
        while let Some((tag, wire_type)) = f.next_key()? {
            match tag {
                1 => {
                    let current = self.source_address.get_or_insert_default();
                    socket_address(current, f.nested(wire_type)?)?;
                }
                2 | 3 => {
                    f.skip(Msg::Address, tag, wire_type)?;
                    self.source_address = None;
                }
                _ => f.skip(Msg::Address, tag, wire_type)?,
            }
        }
        Ok(())
    }

    fn request(&mut self, mut f: Fields<'a>) -> Result<(), Invalid> {
        while let Some((tag, wire_type)) = f.next_key()? {
            match tag {
                2 => self.http(f.nested(wire_type)?)?,
                _ => f.skip(Msg::Request, tag, wire_type)?,
            }
        }
        Ok(())
    }

    fn http(&mut self, mut f: Fields<'a>) -> Result<(), Invalid> {
        while let Some((tag, wire_type)) = f.next_key()? {
            match tag {
                1 => self.request_id = f.str(wire_type)?,
                3 => self.headers.push(f.string_entry(wire_type)?),
                13 => self.header_map_entries(f.nested(wire_type)?)?,
                _ => f.skip(Msg::HttpRequest, tag, wire_type)?,
            }
        }
        Ok(())
    }

    fn header_map_entries(&mut self, mut f: Fields<'a>) -> Result<(), Invalid> {
        while let Some((tag, wire_type)) = f.next_key()? {
            match tag {
                1 => self.header_map.push(header_value(f.nested(wire_type)?)?),
                _ => f.skip(Msg::HeaderMap, tag, wire_type)?,
            }
        }
        Ok(())
    }
}

fn socket_address<'a>(sa: &mut SocketAddressView<'a>, mut f: Fields<'a>) -> Result<(), Invalid> {
    while let Some((tag, wire_type)) = f.next_key()? {
        match tag {
            2 => sa.address = f.str(wire_type)?,
            // prost's uint32 truncates the varint.
            3 => sa.port = Port::Value(f.varint(wire_type)? as u32),
            4 => sa.port = Port::Named(f.str(wire_type)?),
            _ => f.skip(Msg::SocketAddress, tag, wire_type)?,
        }
    }
    Ok(())
}

fn header_value<'a>(mut f: Fields<'a>) -> Result<HeaderEntry<'a>, Invalid> {
    let mut entry = HeaderEntry::default();
    while let Some((tag, wire_type)) = f.next_key()? {
        match tag {
            1 => entry.key = f.str(wire_type)?,
            2 => entry.value = f.str(wire_type)?,
            3 => entry.raw_value = f.bytes(wire_type)?,
            _ => f.skip(Msg::HeaderValue, tag, wire_type)?,
        }
    }
    Ok(entry)
}

fn last_value<'a>(entries: &[(&'a str, &'a str)], key: &str) -> Option<&'a str> {
    entries
        .iter()
        .rev()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| *v)
}

/// Map entries with later duplicates winning. Quadratic, and meant for the
/// handful of entries a request carries (use the keyed lookups per Check).
fn distinct<'s, 'a>(
    entries: &'s [(&'a str, &'a str)],
) -> impl Iterator<Item = (&'a str, &'a str)> + 's {
    entries
        .iter()
        .enumerate()
        .filter(|(i, (k, _))| !entries[i + 1..].iter().any(|(later, _)| later == k))
        .map(|(_, entry)| *entry)
}
