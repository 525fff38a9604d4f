//! The subcommands: their command-line shape (clap) and the dispatch to
//! their bodies. `service` runs and probes the sidecar; `credentials` makes
//! and inspects keys, secrets and tokens.

mod credentials;
mod service;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use service_auth::config::{DEFAULT_CONFIG_PATH, ListenAddr};
use service_auth::keys::Algorithm;

#[derive(Parser)]
#[command(
    name = "service-auth",
    version,
    about = "Envoy external-authorization sidecar"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args)]
pub struct ConfigArg {
    /// Static config file.
    #[arg(long, env = "SERVICE_AUTH_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the sidecar.
    Serve(ConfigArg),
    /// Validate the config, the registry and every file they name.
    CheckConfig(ConfigArg),
    /// Print a new random API key and its registry entry.
    GenKey,
    /// Read an API key on stdin and print its registry hash.
    HashKey,
    /// Print a new HS256 signing secret for a key file.
    GenSecret {
        /// Write the secret to this new file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print a new EdDSA or ES256 private key (PKCS#8 PEM) for `private_key_file`.
    GenSigningKey {
        /// EdDSA (Ed25519) or ES256 (P-256).
        #[arg(long, value_parser = signing_algorithm)]
        alg: Algorithm,
        /// Write the key to this new file (mode 0600) and print its public
        /// key (SPKI PEM, for a verify-only `public_key_file`) instead.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the public JWKS exactly as the admin listener serves it.
    Jwks(ConfigArg),
    /// Issue or verify mesh tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Ask a running sidecar's gRPC health service; exit 0 only when SERVING.
    Health {
        /// `IP:PORT` or `unix:PATH`; default: `listen.grpc` of the config.
        #[arg(long)]
        addr: Option<ListenAddr>,
        #[command(flatten)]
        config: ConfigArg,
        /// Give up (and fail) after this long, e.g. `2s`.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// For a `listen.tls` listener: a client certificate it accepts...
        #[arg(long, requires_all = ["tls_key", "tls_ca"])]
        tls_cert: Option<PathBuf>,
        /// ...its private key...
        #[arg(long, requires_all = ["tls_cert", "tls_ca"])]
        tls_key: Option<PathBuf>,
        /// ...and the CA that signed the listener's certificate.
        #[arg(long, requires_all = ["tls_cert", "tls_key"])]
        tls_ca: Option<PathBuf>,
        /// The name the listener's certificate carries (default: the address's IP).
        #[arg(long, requires = "tls_cert")]
        tls_server_name: Option<String>,
    },
    /// Generate a DEVELOPMENT CA, certificates, API keys, signing secret and
    /// configs for the docker-compose demo into DIR. Prints the API keys once.
    DevPki {
        dir: PathBuf,
        /// Overwrite existing files (invalidates what was handed out before).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Issue a token exactly as a Check would; prints only the token.
    Issue {
        #[command(flatten)]
        config: ConfigArg,
        /// Registered service id (the `sub` claim).
        #[arg(long)]
        service: String,
        /// Scope to include (repeatable); default: all of the service's scopes.
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// Verify a token and print its claims as JSON.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// The token, or `-` (the default) to read it from stdin.
        #[arg(default_value = "-")]
        token: String,
    },
}

/// `--alg`: an asymmetric algorithm (HS256 secrets come from `gen-secret`).
fn signing_algorithm(value: &str) -> Result<Algorithm, String> {
    match value.parse() {
        Ok(Algorithm::Hs256) => Err("HS256 keys are secrets: use `gen-secret`".into()),
        Ok(algorithm) => Ok(algorithm),
        Err(_) => Err("expected EdDSA or ES256".into()),
    }
}

/// Runs one subcommand.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(c) => service::serve(&c.config),
        Command::CheckConfig(c) => service::check_config(&c.config),
        Command::GenKey => credentials::gen_key(),
        Command::HashKey => credentials::hash_key(),
        Command::GenSecret { out } => credentials::gen_secret(out.as_deref()),
        Command::GenSigningKey { alg, out } => credentials::gen_signing_key(alg, out.as_deref()),
        Command::Jwks(c) => credentials::jwks(&c.config),
        Command::Token(TokenCommand::Issue {
            config,
            service,
            scopes,
        }) => credentials::token_issue(&config.config, &service, &scopes),
        Command::Token(TokenCommand::Verify { config, token }) => {
            credentials::token_verify(&config.config, &token)
        }
        Command::Health {
            addr,
            config,
            timeout,
            tls_cert,
            tls_key,
            tls_ca,
            tls_server_name,
        } => {
            let tls = match (tls_cert, tls_key, tls_ca) {
                (Some(cert), Some(key), Some(ca)) => Some(service_auth::health::ProbeTls {
                    cert,
                    key,
                    ca,
                    server_name: tls_server_name,
                }),
                _ => None,
            };
            service::health(addr, tls, &config.config, timeout)
        }
        Command::DevPki { dir, force } => service::dev_pki(&dir, force),
    }
}
