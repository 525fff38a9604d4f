//! The admin listener: plain HTTP/1.1 for what is public anyway. It serves
//! the JWKS upstreams verify EdDSA and ES256 tokens with
//! (`GET /.well-known/jwks.json`), liveness (`GET /healthz`) and readiness
//! (`GET /readyz`: a registry is installed).
//!
//! It goes through the gRPC listener's door (`listener::bind_for`: a
//! connection cap, pending connections bounded), adds hyper's deadline for
//! reading a request's header, and answers one request per connection:
//! nothing idles on a slot, and every connection ends within a bounded time.

use std::convert::Infallible;
use std::time::Duration;

use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_stream::StreamExt;

use crate::check::unix_now;
use crate::config::{Admin, Limits, ListenAddr};
use crate::listener::{self, Incoming, ListenError};
use crate::registry::Snapshot;

/// Where the JWKS is served.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// How long clients may cache the JWKS. A new key must be published at
/// least this long before it signs (see the rotation recipe).
pub const JWKS_CACHE_CONTROL: &str = "max-age=60";

/// Largest request header the admin listener reads (hyper's minimum
/// buffer is 8 KiB); a probe or a JWKS fetch needs far less.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Binds `admin.listen` with its connection cap.
pub fn bind(admin: &Admin) -> Result<(Incoming, ListenAddr), ListenError> {
    let limits = Limits {
        max_connections: admin.max_connections,
        // How long an accepted connection may wait for a slot: longer than
        // a slot holder can last (`serve` drops each connection at twice
        // the header timeout), so a waiting client outlives a slow one.
        handshake_timeout: admin.header_timeout.saturating_mul(3),
        ..Limits::default()
    };
    listener::bind_for(&admin.listen, None, &limits, listener::Protocol::Http1)
}

/// Serves `incoming` until its task is aborted. Each connection reads one
/// request header within `header_timeout`, gets its answer and is closed;
/// it is dropped at twice that time whatever it does.
pub async fn serve(mut incoming: Incoming, snapshot: Snapshot, header_timeout: Duration) {
    while let Some(conn) = incoming.next().await {
        let Ok(conn) = conn else { continue };
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<_>| {
                let response = respond(request.method(), request.uri().path(), &snapshot);
                async move { Ok::<_, Infallible>(response) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(false)
                .max_buf_size(MAX_HEADER_BYTES);
            let connection = http.serve_connection(TokioIo::new(conn), service);
            let _ = tokio::time::timeout(header_timeout.saturating_mul(2), connection).await;
        });
    }
}

/// The answer to `method path` given the serving registry.
pub fn respond(method: &Method, path: &str, snapshot: &Snapshot) -> Response<String> {
    if ![JWKS_PATH, "/healthz", "/readyz"].contains(&path) {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let registry = snapshot.load();
    match (path, registry) {
        ("/healthz", _) => text(StatusCode::OK, "ok\n"),
        ("/readyz", Some(_)) => text(StatusCode::OK, "ready\n"),
        (JWKS_PATH, Some(registry)) => {
            let mut response = Response::new(registry.token.jwks(unix_now()).to_string());
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static(JWKS_CACHE_CONTROL));
            response
        }
        // No registry yet: not ready, and no key set to publish.
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "no registry loaded\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<String> {
    let mut response = Response::new(body.to_owned());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_before_a_registry_is_loaded() {
        let snapshot = Snapshot::default();
        let status = |method: Method, path| respond(&method, path, &snapshot).status();
        assert_eq!(status(Method::GET, "/healthz"), StatusCode::OK);
        assert_eq!(status(Method::HEAD, "/healthz"), StatusCode::OK);
        assert_eq!(
            status(Method::GET, "/readyz"),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(Method::GET, JWKS_PATH),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status(Method::GET, "/"), StatusCode::NOT_FOUND);
        assert_eq!(status(Method::GET, "/healthz/"), StatusCode::NOT_FOUND);
        let post = respond(&Method::POST, JWKS_PATH, &snapshot);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[ALLOW], "GET, HEAD");
    }
}
