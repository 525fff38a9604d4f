//! Every structural error of a YAML file that serde_yaml refused, each at
//! its own line and column.
//!
//! serde_yaml stops at the first error and places a duplicate key at its
//! enclosing mapping. This pass re-reads a refused file as a tree of located
//! nodes (`saphyr-parser` events) and deserializes the same type from it,
//! so that:
//!
//! * every duplicate key is reported at the duplicate itself, and left out;
//! * every unknown key is reported at the key, and left out, the rest of
//!   the file still read;
//! * the first error of any other kind (a wrong type, a missing key, a bad
//!   value) is reported where it is, and ends the pass.
//!
//! When only keys were left out, the value read without them is returned so
//! validation can report its own errors too. This pass runs only on a file
//! both readers refused (serde-saphyr, which reads every accepted file, and
//! serde_yaml, whose first error it replaces; see
//! `config::parse_yaml_partial`). A file this pass cannot read like
//! serde_yaml does (a YAML syntax error, anchors and aliases, tags, several
//! documents, nesting deeper than serde_yaml allows) gets serde_yaml's one
//! error instead.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Unexpected, Visitor};

/// serde_yaml's recursion limit: deeper files are refused by it anyway.
const MAX_DEPTH: usize = 128;

/// One error and where it is (1-based, like serde_yaml's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Located {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// What the pass found: every error, in file order, and the value read
/// without the left-out keys when nothing else was wrong.
pub(super) struct Diagnosis<T> {
    pub errors: Vec<Located>,
    pub value: Option<T>,
}

/// Re-reads `text` as a `T`, collecting every error it can locate; `None`
/// when the file is beyond this pass (see the module comment).
pub(super) fn diagnose<T: de::DeserializeOwned>(text: &str) -> Option<Diagnosis<T>> {
    let root = tree(text)?;
    let errors = RefCell::new(Vec::new());
    duplicate_keys(&root, &errors);
    let read = T::deserialize(NodeDe {
        node: &root,
        path: String::new(),
        errors: &errors,
    });
    let mut errors = errors.into_inner();
    let value = match read {
        Ok(value) => Some(value),
        Err(e) => {
            let (mark, path) = e.at.unwrap_or((root.mark, String::new()));
            errors.push(mark.error(&path, &e.message));
            None
        }
    };
    errors.sort_by_key(|e| (e.line, e.column));
    Some(Diagnosis { errors, value })
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    line: usize,
    column: usize,
}

impl Mark {
    fn of(span: &Span) -> Mark {
        // saphyr's lines are 1-based and its columns 0-based.
        Mark {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }

    fn error(self, path: &str, message: &str) -> Located {
        let message = if path.is_empty() {
            message.to_owned()
        } else {
            format!("{path}: {message}")
        };
        Located {
            line: self.line,
            column: self.column,
            message,
        }
    }
}

struct Node<'t> {
    mark: Mark,
    kind: Kind<'t>,
}

enum Kind<'t> {
    Scalar {
        text: std::borrow::Cow<'t, str>,
        plain: bool,
    },
    Seq(Vec<Node<'t>>),
    Map(Vec<(Node<'t>, Node<'t>)>),
}

/// A sequence or mapping whose end event has not come yet.
enum Open<'t> {
    Seq(Mark, Vec<Node<'t>>),
    Map(Mark, Vec<(Node<'t>, Node<'t>)>, Option<Node<'t>>),
}

/// The one document of `text` as a tree, without recursion; `None` for
/// what this pass leaves to serde_yaml.
fn tree(text: &str) -> Option<Node<'_>> {
    let mut open: Vec<Open<'_>> = Vec::new();
    let mut root = None;
    let mut documents = 0;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.ok()?;
        let mark = Mark::of(&span);
        let node = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return None;
                }
                continue;
            }
            Event::Scalar(text, style, anchor, tag) => {
                if anchor != 0 || tag.is_some() {
                    return None;
                }
                let plain = style == ScalarStyle::Plain;
                Node {
                    mark,
                    kind: Kind::Scalar { text, plain },
                }
            }
            Event::SequenceStart(anchor, ref tag) | Event::MappingStart(anchor, ref tag) => {
                if anchor != 0 || tag.is_some() || open.len() >= MAX_DEPTH {
                    return None;
                }
                open.push(match event {
                    Event::SequenceStart(..) => Open::Seq(mark, Vec::new()),
                    _ => Open::Map(mark, Vec::new(), None),
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match open.pop()? {
                Open::Seq(mark, items) => Node {
                    mark,
                    kind: Kind::Seq(items),
                },
                Open::Map(mark, entries, None) => Node {
                    mark,
                    kind: Kind::Map(entries),
                },
                Open::Map(_, _, Some(_)) => return None,
            },
            Event::Alias(_) => return None,
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => continue,
        };
        match open.last_mut() {
            None => root = Some(node),
            Some(Open::Seq(_, items)) => items.push(node),
            Some(Open::Map(_, entries, key)) => match key.take() {
                None => *key = Some(node),
                Some(key) => entries.push((key, node)),
            },
        }
    }
    root
}

fn scalar_key<'n>(key: &'n Node<'_>) -> Option<&'n str> {
    match &key.kind {
        Kind::Scalar { text, .. } => Some(text),
        _ => None,
    }
}

/// Reports every key that repeats an earlier key of its mapping, at the
/// repeat; deserialization then skips it.
fn duplicate_keys(root: &Node<'_>, errors: &RefCell<Vec<Located>>) {
    let mut stack = vec![(root, String::new())];
    while let Some((node, path)) = stack.pop() {
        match &node.kind {
            Kind::Scalar { .. } => {}
            Kind::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    stack.push((item, format!("{path}[{i}]")));
                }
            }
            Kind::Map(entries) => {
                let mut first: HashMap<&str, Mark> = HashMap::new();
                for (key, value) in entries {
                    let Some(name) = scalar_key(key) else {
                        continue;
                    };
                    match first.get(name) {
                        Some(at) => errors.borrow_mut().push(key.mark.error(
                            &path,
                            &format!(
                                "duplicate key `{name}` (first at line {} column {})",
                                at.line, at.column
                            ),
                        )),
                        None => {
                            first.insert(name, key.mark);
                            stack.push((value, child(&path, name)));
                        }
                    }
                }
            }
        }
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A deserialization error; `at` is filled by the innermost node it
/// passes through.
#[derive(Debug)]
struct Error {
    message: String,
    at: Option<(Mark, String)>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Error {
            message: message.to_string(),
            at: None,
        }
    }
}

/// Deserializes one node, following serde_yaml's reading of scalars.
struct NodeDe<'n, 't> {
    node: &'n Node<'t>,
    path: String,
    errors: &'n RefCell<Vec<Located>>,
}

impl<'n, 't> NodeDe<'n, 't> {
    fn locate<V>(&self, result: Result<V, Error>) -> Result<V, Error> {
        result.map_err(|mut e| {
            if e.at.is_none() {
                e.at = Some((self.node.mark, self.path.clone()));
            }
            e
        })
    }

    fn unexpected(&self) -> Unexpected<'n> {
        match &self.node.kind {
            Kind::Scalar { text, .. } => Unexpected::Str(text),
            Kind::Seq(_) => Unexpected::Seq,
            Kind::Map(_) => Unexpected::Map,
        }
    }

    /// serde_yaml reads an empty plain scalar as an empty sequence or map.
    fn is_empty_scalar(&self) -> bool {
        matches!(&self.node.kind, Kind::Scalar { text, plain: true } if text.is_empty())
    }

    fn entries<'de, V: Visitor<'de>>(
        self,
        fields: Option<&'static [&'static str]>,
        visitor: V,
    ) -> Result<V::Value, Error> {
        let entries: &[(Node<'t>, Node<'t>)] = match &self.node.kind {
            Kind::Map(entries) => entries,
            _ if self.is_empty_scalar() => &[],
            _ => return self.locate(Err(de::Error::invalid_type(self.unexpected(), &visitor))),
        };
        let access = Entries {
            entries: entries.iter(),
            value: None,
            seen: HashSet::new(),
            fields,
            path: &self.path,
            errors: self.errors,
        };
        self.locate(visitor.visit_map(access))
    }
}

/// A plain scalar as YAML 1.2's core schema reads it.
fn visit_plain<'de, V: Visitor<'de>>(text: &str, visitor: V) -> Result<V::Value, Error> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return visitor.visit_unit(),
        "true" | "True" | "TRUE" => return visitor.visit_bool(true),
        "false" | "False" | "FALSE" => return visitor.visit_bool(false),
        _ => {}
    }
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    let radix = [("0x", 16), ("0o", 8)]
        .iter()
        .find_map(|(prefix, radix)| digits.strip_prefix(prefix).map(|d| (d, *radix)));
    let (digits, radix) = radix.unwrap_or((digits, 10));
    if let Ok(n) = u64::from_str_radix(digits, radix) {
        return match (sign, i64::try_from(n)) {
            (1, _) => visitor.visit_u64(n),
            (_, Ok(n)) => visitor.visit_i64(-n),
            _ => visitor.visit_str(text),
        };
    }
    let numeric = text.bytes().any(|b| b.is_ascii_digit())
        && text.bytes().all(|b| b"0123456789+-.eE".contains(&b));
    match text.parse::<f64>() {
        Ok(f) if numeric => visitor.visit_f64(f),
        _ => visitor.visit_str(text),
    }
}

impl<'de> de::Deserializer<'de> for NodeDe<'_, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let result = match &self.node.kind {
            Kind::Scalar { text, plain: true } => visit_plain(text, visitor),
            Kind::Scalar { text, .. } => visitor.visit_str(text),
            Kind::Seq(_) => return self.deserialize_seq(visitor),
            Kind::Map(_) => return self.entries(None, visitor),
        };
        self.locate(result)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let result = match &self.node.kind {
            Kind::Scalar { text, .. } => visitor.visit_str(text),
            _ => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
        };
        self.locate(result)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let null = matches!(
            &self.node.kind,
            Kind::Scalar { text, plain: true } if matches!(&**text, "" | "~" | "null" | "Null" | "NULL")
        );
        if null {
            self.locate(visitor.visit_none())
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let items: &[Node<'_>] = match &self.node.kind {
            Kind::Seq(items) => items,
            _ if self.is_empty_scalar() => &[],
            _ => return self.locate(Err(de::Error::invalid_type(self.unexpected(), &visitor))),
        };
        let access = Items {
            items: items.iter().enumerate(),
            path: &self.path,
            errors: self.errors,
        };
        self.locate(visitor.visit_seq(access))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.entries(None, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.entries(Some(fields), visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let result = match &self.node.kind {
            Kind::Scalar { text, .. } if !text.is_empty() => visitor.visit_enum(UnitVariant(text)),
            _ => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
        };
        self.locate(result)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit unit_struct
    }
}

/// A mapping's entries, without the duplicate keys (reported already) and,
/// for a struct, without the unknown ones (reported here).
struct Entries<'n, 't> {
    entries: std::slice::Iter<'n, (Node<'t>, Node<'t>)>,
    value: Option<(&'n Node<'t>, String)>,
    seen: HashSet<&'n str>,
    fields: Option<&'static [&'static str]>,
    path: &'n str,
    errors: &'n RefCell<Vec<Located>>,
}

impl<'de> de::MapAccess<'de> for Entries<'_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        for (key, value) in self.entries.by_ref() {
            let name = scalar_key(key);
            if let Some(name) = name {
                if !self.seen.insert(name) {
                    continue;
                }
                if let Some(fields) = self.fields.filter(|f| !f.contains(&name)) {
                    let message = <Error as de::Error>::unknown_field(name, fields).message;
                    self.errors
                        .borrow_mut()
                        .push(key.mark.error(self.path, &message));
                    continue;
                }
            }
            let value_path = match name {
                Some(name) => child(self.path, name),
                None => self.path.to_owned(),
            };
            self.value = Some((value, value_path));
            let key = NodeDe {
                node: key,
                path: self.path.to_owned(),
                errors: self.errors,
            };
            return seed.deserialize(key).map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let (node, path) = self
            .value
            .take()
            .ok_or_else(|| <Error as de::Error>::custom("a value without its key"))?;
        seed.deserialize(NodeDe {
            node,
            path,
            errors: self.errors,
        })
    }
}

struct Items<'n, 't> {
    items: std::iter::Enumerate<std::slice::Iter<'n, Node<'t>>>,
    path: &'n str,
    errors: &'n RefCell<Vec<Located>>,
}

impl<'de> de::SeqAccess<'de> for Items<'_, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some((i, node)) = self.items.next() else {
            return Ok(None);
        };
        seed.deserialize(NodeDe {
            node,
            path: format!("{}[{i}]", self.path),
            errors: self.errors,
        })
        .map(Some)
    }
}

/// A scalar naming a unit enum variant.
struct UnitVariant<'n>(&'n str);

impl<'de> de::EnumAccess<'de> for UnitVariant<'_> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let variant = seed.deserialize(self.0.into_deserializer())?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for UnitVariant<'_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _: T) -> Result<T::Value, Error> {
        Err(de::Error::invalid_type(
            Unexpected::UnitVariant,
            &"a newtype variant",
        ))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, Error> {
        Err(de::Error::invalid_type(
            Unexpected::UnitVariant,
            &"a tuple variant",
        ))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Error> {
        Err(de::Error::invalid_type(
            Unexpected::UnitVariant,
            &"a struct variant",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RegistryFile, StaticConfig};

    fn report<T: de::DeserializeOwned>(text: &str) -> (Vec<String>, bool) {
        let d = diagnose::<T>(text).expect("diagnosed");
        let lines = d
            .errors
            .iter()
            .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
            .collect();
        (lines, d.value.is_some())
    }

    #[test]
    fn every_unknown_key_is_reported_and_the_rest_still_read() {
        let text = "listen:\n  grpc: 127.0.0.1:1\n  tsl: {}\nregistry: r.yaml\nreload:\n  pol_interval: 2s\nlimits:\n  max_conections: 3\n";
        let (errors, read) = report::<StaticConfig>(text);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].starts_with("3:3: listen: unknown field `tsl`, expected"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("6:3: reload: unknown field `pol_interval`, expected"),
            "{errors:?}"
        );
        assert!(
            errors[2].starts_with("8:3: limits: unknown field `max_conections`, expected one of"),
            "{errors:?}"
        );
        assert!(read, "only keys were left out: the rest can be validated");
    }

    #[test]
    fn duplicate_keys_are_reported_at_the_duplicate() {
        let text =
            "token:\n  issuer: i\n  audience: a\n  keys: []\nservices: []\ntoken:\n  issuer: j\n";
        let (errors, read) = report::<RegistryFile>(text);
        assert_eq!(
            errors,
            ["6:1: duplicate key `token` (first at line 1 column 1)"]
        );
        assert!(read);
        let text = "token: {issuer: i, audience: a, keys: []}\nservices:\n  - id: a\n    principals: [x]\n    id: b\n";
        let (errors, _) = report::<RegistryFile>(text);
        assert_eq!(
            errors,
            ["5:5: services[0]: duplicate key `id` (first at line 3 column 5)"]
        );
    }

    #[test]
    fn a_wrong_type_ends_the_pass_after_the_keys_before_it() {
        let text = "token: {issuer: i, audience: a, keys: [], bogus: 1}\nservices:\n  - id: a\n    principals: x\n";
        let (errors, read) = report::<RegistryFile>(text);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("1:43: token: unknown field `bogus`"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with(
                "4:17: services[0].principals: invalid type: string \"x\", expected a sequence"
            ),
            "{errors:?}"
        );
        assert!(!read);
    }

    #[test]
    fn what_this_pass_leaves_to_serde_yaml() {
        for text in [
            "a: [\n",
            "a: &x 1\nb: *x\n",
            "a: !!str 1\n",
            "a: 1\n---\nb: 2\n",
            &"[".repeat(200),
        ] {
            assert!(diagnose::<StaticConfig>(text).is_none(), "{text}");
        }
    }

    #[test]
    fn scalars_read_as_serde_yaml_reads_them() {
        let text = "listen:\n  grpc: 127.0.0.1:1\nregistry: r.yaml\nlimits:\n  max_connections: 0x10\n  max_message_bytes: 12\nreload:\n  poll_interval: 2s\n";
        let d = diagnose::<StaticConfig>(text).unwrap();
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let config = d.value.unwrap();
        assert_eq!(config.limits.max_connections, 16);
        assert_eq!(config.limits.max_message_bytes, 12);
        let (errors, _) = report::<StaticConfig>(
            "listen:\n  grpc: 127.0.0.1:1\nregistry: r.yaml\nlimits:\n  max_connections: -1\n",
        );
        assert!(
            errors[0].starts_with("5:20: limits.max_connections: invalid value: integer `-1`"),
            "{errors:?}"
        );
    }
}
