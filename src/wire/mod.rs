//! The gRPC wire format of Envoy's `Authorization/Check`, independent of the
//! decision: the request's gRPC framing and its bounded reading
//! ([`CheckService`]), a borrowing partial decode of the `CheckRequest`
//! ([`CheckView`]) that accepts and rejects exactly what prost does, and the
//! `CheckResponse` encodings ([`EncodedResponse`], [`OkTemplate`]).
//!
//! Every request on the Check method gets exactly one `CheckResponse`: one
//! that does not decode, is too large, compressed, missing or followed by a
//! second message goes to the handler as a [`Malformed`], never out as a
//! gRPC error that Envoy's `failure_mode_allow: true` would turn into an
//! allow.

mod fields;
mod frame;
mod response;
mod service;
mod view;

pub use response::{Denial, EncodedResponse, OkFields, OkTemplate};
pub(crate) use response::{ok_status, service_auth_metadata};
pub use service::{CHECK_PATH, CheckHandler, CheckService};
pub use view::{CheckView, HeaderEntry, Port, SocketAddressView};

/// Why a Check request could not be read. Every variant is answered with
/// the handler's "malformed request" denial; the variant is for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The message is not a valid `CheckRequest` (bad protobuf, invalid
    /// UTF-8 in a string field, nesting past prost's recursion limit).
    #[error("the request message is not a valid CheckRequest")]
    Protobuf,
    /// The length prefix announced more than the configured limit; the rest
    /// of the stream was not read.
    #[error("request message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    /// The compressed flag was set (or was not 0 or 1); no compression is
    /// advertised, so no compressed message is expected.
    #[error("compressed request message (compression flag {flag})")]
    Compressed { flag: u8 },
    /// The stream ended without a message.
    #[error("no request message")]
    Missing,
    /// The stream ended inside the 5-byte prefix or the message.
    #[error("the request stream ended inside a message")]
    Truncated,
    /// More bytes followed the one message of a unary call.
    #[error("more than one request message")]
    Extra,
    /// The request stream failed (reset by the client, connection error).
    /// The answer is still produced, though it rarely reaches anyone.
    #[error("the request stream failed")]
    Interrupted,
}

#[cfg(test)]
mod tests;
