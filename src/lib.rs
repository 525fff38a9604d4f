//! service-auth: an Envoy external-authorization sidecar.
//!
//! Data flows one way through these modules (each imports only modules
//! listed before it):
//!
//! * `keys` holds the token key material (HS256 secrets, EdDSA and ES256
//!   keys, JWKs) and imports nothing else from the crate;
//! * `config` parses the two YAML files into typed structs; `wire` owns the
//!   Check method's gRPC wire format (framing with bounded reads, a
//!   borrowing partial decode of the request, pre-encoded responses);
//! * `identity` parses the forwarded peer certificate; `trust` validates
//!   certificate chains, CRLs and SPIFFE IDs against CA bundles; `token`
//!   issues and verifies mesh tokens;
//! * `registry` validates a registry file into an immutable, indexed
//!   snapshot and holds the shared `Snapshot` handle;
//! * `request` reads a decoded request's attributes once; `evidence`
//!   gathers (and memoizes) the costly certificate facts;
//! * `check` decides, as a pure function; `enforcement` says whether a
//!   denial is refused or only reported (report mode); `throttle` refuses
//!   callers that failed too often, before any decision; `response` turns
//!   the outcome into Envoy's `CheckResponse`;
//! * `telemetry` observes decisions and reloads (logs, OTLP metrics);
//! * `watch` tells when files change; `reload` rebuilds and swaps
//!   snapshots; `listener` accepts connections; `server` runs the gRPC
//!   services; `admin` serves the JWKS and probes over plain HTTP;
//! * `preflight` checks what `serve` needs before it binds (log filter,
//!   listener TLS files, OTLP settings), for `serve` and `check-config`
//!   alike; `app` wires it all together (`run`, `Sidecar`).
//!
//! Beside that flow: `health` probes a running sidecar, `devpki` generates
//! the development-only demo PKI, `alloc` tunes the allocator, `pki` builds
//! certificates and CRLs for `dev-pki` and the tests (it imports nothing
//! from the crate, so any module's unit tests may use it), and `testkit`
//! (feature `test-util`; it re-exports `pki`) is shared by tests,
//! benchmarks, fuzz targets and `dev-pki`.

pub mod admin;
pub mod alloc;
pub mod app;
pub mod check;
pub mod config;
pub mod devpki;
pub mod enforcement;
pub mod evidence;
pub mod health;
pub mod identity;
pub mod keys;
pub mod listener;
pub mod pki;
pub mod preflight;
pub mod registry;
pub mod reload;
pub mod request;
pub mod response;
pub mod server;
pub mod telemetry;
pub mod testkit;
pub mod throttle;
pub mod token;
pub mod trust;
pub mod watch;
pub mod wire;

pub use app::{RunError, Sidecar, run};
