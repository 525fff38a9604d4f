//! Writes the benchmark's request: one CheckRequest exactly as Envoy sends
//! it (URL-encoded client certificate, API key header, a few usual
//! headers), framed for gRPC, so h2load can replay it byte for byte.
//! Not part of the product.
//!
//! `encode_check CERT_PEM_FILE API_KEY OUT_FILE` (the file's first certificate is sent)

use service_auth::testkit::{Req, grpc_frame, pki};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, cert, key, out] = args.as_slice() else {
        return Err("usage: encode_check CERT_PEM_FILE API_KEY OUT_FILE".into());
    };
    let pem = std::fs::read_to_string(cert)?;
    // A chain file (dev-pki's clients/*.crt): Envoy forwards the leaf alone.
    let request = Req::typical(pki::forwarded(pki::leaf_pem(&pem)), key).build();
    std::fs::write(out, grpc_frame(&request))?;
    Ok(())
}
