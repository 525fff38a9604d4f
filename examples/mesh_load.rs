//! Load through Envoy for the end-to-end benchmarks (benches/run.sh,
//! benches/envoy.sh). wrk and h2load cannot present a client certificate,
//! and the shipped Envoy listener requires one, so this small client does
//! it. It also runs the trivial upstream app. Not part of the product.
//!
//! `mesh_load upstream ADDR`
//! `mesh_load load URL CERT KEY CA API_KEY CONNECTIONS SECONDS`
//!   closed loop, HTTP/1.1 (reqwest), CONNECTIONS clients back to back
//! `mesh_load h2 URL CERT KEY CA API_KEY RATE SECONDS [CONNECTIONS]`
//!   HTTP/2 over CONNECTIONS connections (4), taken in turn; RATE requests
//!   per second sent on schedule whether or not earlier ones were answered
//!   (open loop), or with RATE 0 a closed loop of 16 requests in flight
//!
//! Each prints one line: `req/s p50 p99 p99.9 errors` (latencies in ms).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("upstream") => upstream(args.get(2).ok_or("upstream ADDR")?).await,
        Some("load") => load(&args[2..]).await,
        Some("h2") => h2(&args[2..]).await,
        _ => Err(
            "usage: mesh_load upstream ADDR | load URL CERT KEY CA API_KEY CONNECTIONS \
                  SECONDS | h2 URL CERT KEY CA API_KEY RATE SECONDS [CONNECTIONS]"
                .into(),
        ),
    }
}

/// An HTTP/1 app that answers 200 "ok" to everything.
async fn upstream(addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    hyper::body::Bytes::from_static(b"ok"),
                )))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Closed loop: CONNECTIONS clients each send requests back to back for
/// SECONDS; prints throughput and latency percentiles. Any non-200 counts
/// as an error.
async fn load(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let [url, cert, key, ca, api_key, connections, seconds] = args else {
        return Err("load URL CERT KEY CA API_KEY CONNECTIONS SECONDS".into());
    };
    let identity = format!(
        "{}{}",
        std::fs::read_to_string(cert)?,
        std::fs::read_to_string(key)?
    );
    let ca = std::fs::read(ca)?;
    let connections: usize = connections.parse()?;
    let duration = Duration::from_secs(seconds.parse()?);
    let url = Arc::new(url.clone());
    let api_key = Arc::new(api_key.clone());
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
            .identity(reqwest::Identity::from_pem(identity.as_bytes())?)
            .pool_max_idle_per_host(1)
            .build()?;
        let (url, api_key) = (url.clone(), api_key.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let start = Instant::now();
                match client
                    .get(url.as_str())
                    .header("x-api-key", api_key.as_str())
                    .send()
                    .await
                {
                    Ok(resp) if resp.status() == 200 => {
                        let _ = resp.bytes().await;
                        latencies.push(start.elapsed().as_micros() as u64);
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, e) = task.await?;
        all.extend(latencies);
        errors += e;
    }
    report(all, errors, duration);
    Ok(())
}

/// Prints `req/s p50 p99 p99.9 errors` for latencies in microseconds.
fn report(mut latencies: Vec<u64>, errors: u64, duration: Duration) {
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "{:.0} {:.3} {:.3} {:.3} {}",
        latencies.len() as f64 / duration.as_secs_f64(),
        pick(0.5),
        pick(0.99),
        pick(0.999),
        errors
    );
}

type H2Sender = hyper::client::conn::http2::SendRequest<http_body_util::Empty<hyper::body::Bytes>>;

/// Requests in flight in the closed loop (RATE 0).
const CLOSED_LOOP_IN_FLIGHT: usize = 16;

/// HTTP/2 over mTLS; open loop at RATE/s or closed loop. Several
/// connections, because Envoy allows 100 streams on one: past that a
/// single connection would queue requests in the client.
/// Latency runs from when a request is sent to its whole answer; the open
/// loop's schedule never waits for answers, so a slow answer delays no
/// later request (no coordinated omission).
async fn h2(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let (url, cert, key, ca, api_key, rate, seconds, connections) = match args {
        [u, c, k, ca, a, r, s] => (u, c, k, ca, a, r, s, "4"),
        [u, c, k, ca, a, r, s, n] => (u, c, k, ca, a, r, s, n.as_str()),
        _ => return Err("h2 URL CERT KEY CA API_KEY RATE SECONDS [CONNECTIONS]".into()),
    };
    let uri: hyper::Uri = url.parse()?;
    let rate: u32 = rate.parse()?;
    let duration = Duration::from_secs(seconds.parse()?);
    let mut senders = Vec::new();
    for _ in 0..connections.parse::<usize>()?.max(1) {
        senders.push(h2_connect(&uri, cert, key, ca).await?);
    }
    let senders = Arc::new(senders);
    let sender = move |n: usize| senders[n % senders.len()].clone();
    let request = {
        let (uri, api_key) = (uri.clone(), api_key.clone());
        move || {
            hyper::Request::get(uri.clone())
                .header("x-api-key", api_key.as_str())
                .body(http_body_util::Empty::new())
        }
    };
    // Warm-up: Envoy's upstream and ext_authz connections, and the memos.
    for n in 0..200 {
        if let Err(e) = send(&sender(n), request()?).await {
            return Err(format!("warm-up request failed: {e}").into());
        }
    }
    let results = Arc::new(Mutex::new((Vec::new(), 0u64)));
    let record = |results: &Arc<Mutex<(Vec<u64>, u64)>>, outcome: Result<u64, ()>| {
        if let Ok(mut r) = results.lock() {
            match outcome {
                Ok(micros) => r.0.push(micros),
                Err(()) => r.1 += 1,
            }
        }
    };
    let start = Instant::now();
    let deadline = start + duration;
    if rate == 0 {
        let mut tasks = Vec::new();
        for n in 0..CLOSED_LOOP_IN_FLIGHT {
            let (sender, request, results) = (sender(n), request.clone(), results.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let outcome = match request() {
                        Ok(r) => send(&sender, r).await.map_err(|_| ()),
                        Err(_) => Err(()),
                    };
                    record(&results, outcome);
                }
            }));
        }
        for task in tasks {
            task.await?;
        }
    } else {
        // A plain thread keeps the schedule: tokio's timers tick in whole
        // milliseconds, which would send 5k/s as bursts of 5.
        let interval = Duration::from_secs(1).div_f64(f64::from(rate));
        let handle = tokio::runtime::Handle::current();
        let scheduler = {
            let results = results.clone();
            std::thread::spawn(move || {
                let mut tasks = Vec::new();
                for n in 0u32.. {
                    let due = start + interval * n;
                    if due >= deadline {
                        break;
                    }
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let (sender, request, results) =
                        (sender(n as usize), request.clone(), results.clone());
                    tasks.push(handle.spawn(async move {
                        let outcome = match request() {
                            Ok(r) => send(&sender, r).await.map_err(|_| ()),
                            Err(_) => Err(()),
                        };
                        record(&results, outcome);
                    }));
                }
                tasks
            })
        };
        let tasks = tokio::task::spawn_blocking(move || scheduler.join())
            .await?
            .map_err(|_| "the scheduler thread panicked")?;
        for task in tasks {
            task.await?;
        }
    }
    let (latencies, errors) = std::mem::take(&mut *results.lock().map_err(|_| "poisoned")?);
    report(latencies, errors, duration);
    Ok(())
}

/// Sends one request and reads the whole answer; its latency in
/// microseconds, or an error for anything but 200.
async fn send(
    sender: &H2Sender,
    request: hyper::Request<http_body_util::Empty<hyper::body::Bytes>>,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    use http_body_util::BodyExt;
    let started = Instant::now();
    let mut sender = sender.clone();
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    if status != hyper::StatusCode::OK {
        return Err(format!("status {status}").into());
    }
    Ok(started.elapsed().as_micros() as u64)
}

async fn h2_connect(
    uri: &hyper::Uri,
    cert: &str,
    key: &str,
    ca: &str,
) -> Result<H2Sender, Box<dyn std::error::Error>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let host = uri.host().ok_or("the URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(host)?, tcp)
        .await?;
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await?;
    tokio::spawn(connection);
    Ok(sender)
}
