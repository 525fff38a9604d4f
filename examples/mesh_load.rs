//! Load through Envoy for the end-to-end benchmark (benches/run.sh). wrk and
//! h2load cannot present a client certificate, and the shipped Envoy
//! listener requires one, so this small closed-loop client does it with
//! reqwest. It also runs the trivial upstream app. Not part of the product.
//!
//! `mesh_load upstream ADDR`
//! `mesh_load load URL CERT KEY CA API_KEY CONNECTIONS SECONDS`

use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("upstream") => upstream(args.get(2).ok_or("upstream ADDR")?).await,
        Some("load") => load(&args[2..]).await,
        _ => Err(
            "usage: mesh_load upstream ADDR | load URL CERT KEY CA API_KEY CONNECTIONS SECONDS"
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
    all.sort_unstable();
    let pick = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "{:.0} {:.3} {:.3} {:.3} {}",
        all.len() as f64 / duration.as_secs_f64(),
        pick(0.5),
        pick(0.99),
        pick(0.999),
        errors
    );
    Ok(())
}
