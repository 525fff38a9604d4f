//! service-auth: an Envoy external-authorization sidecar.
//!
//! Data flows one way: `config` parses files, `registry` validates them into
//! an immutable snapshot (which `reload` keeps current), `identity` reads the
//! peer certificate, `check` decides (a pure function), `token` signs and
//! verifies, `server` translates to and from gRPC on the connections
//! `listener` accepts, and `telemetry` observes the result. `keys` holds the
//! token key material (HS256 secrets, EdDSA and ES256 keys, the JWKS).
//! Beside that flow: `health` probes a running sidecar, and `devpki`
//! generates the development-only demo PKI.

pub mod check;
pub mod config;
pub mod devpki;
pub mod health;
pub mod identity;
pub mod keys;
pub mod listener;
pub mod registry;
pub mod reload;
pub mod server;
pub mod telemetry;
pub mod token;
