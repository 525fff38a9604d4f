//! What tests, benchmarks, fuzz targets and `dev-pki` share: one PKI
//! builder, the Envoy certificate encoding, a `CheckRequest` builder,
//! registry and config files built from the typed config structs, a token
//! forger and a clock tests move by hand. Never a second copy of any of them.
//!
//! Only [`pki`] (a re-export of the crate's `pki` module) is part of a normal build (`dev-pki` generates real
//! certificates with it); the rest needs the `test-util` feature, which the
//! crate's own tests, benchmarks and fuzz targets turn on. Nothing here is
//! used by `serve`.

pub use crate::pki;

#[cfg(feature = "test-util")]
mod clock;
#[cfg(feature = "test-util")]
mod fixture;
#[cfg(feature = "test-util")]
mod forge;
#[cfg(feature = "test-util")]
pub mod grpc;
#[cfg(feature = "test-util")]
mod memory;
#[cfg(feature = "test-util")]
mod request;

#[cfg(feature = "test-util")]
pub use clock::ManualClock;
#[cfg(feature = "test-util")]
pub use fixture::{
    AUDIENCE, Fixture, ISSUER, SECRET, Svc, fragment, registry_file, scale_service, sha256_hex,
    static_config,
};
#[cfg(feature = "test-util")]
pub use forge::{claims_json, forge_hs256};
#[cfg(feature = "test-util")]
pub use memory::Memory;
#[cfg(feature = "test-util")]
pub use request::{Req, decide, grpc_frame};

pub use crate::check::unix_now;
