//! The `service-auth` command line: parses arguments and hands each
//! subcommand to `commands`, where library errors become messages and exit
//! codes.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use service_auth::config::{DEFAULT_CONFIG_PATH, ListenAddr};

#[derive(Parser)]
#[command(
    name = "service-auth",
    version,
    about = "Envoy external-authorization sidecar"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Static config file.
    #[arg(long, env = "SERVICE_AUTH_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Serve(ConfigArg),
    /// Validate the config, the registry and every file they name.
    CheckConfig(ConfigArg),
    /// Print a new random API key and its registry entry.
    GenKey,
    /// Read an API key on stdin and print its registry hash.
    HashKey,
    /// Print a new HS256 signing secret for a key file.
    GenSecret,
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
enum TokenCommand {
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

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve(c) => commands::serve(&c.config),
        Command::CheckConfig(c) => commands::check_config(&c.config),
        Command::GenKey => commands::gen_key(),
        Command::HashKey => commands::hash_key(),
        Command::GenSecret => commands::gen_secret(),
        Command::Token(TokenCommand::Issue {
            config,
            service,
            scopes,
        }) => commands::token_issue(&config.config, &service, &scopes),
        Command::Token(TokenCommand::Verify { config, token }) => {
            commands::token_verify(&config.config, &token)
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
            commands::health(addr, tls, &config.config, timeout)
        }
        Command::DevPki { dir, force } => commands::dev_pki(&dir, force),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("service-auth: {e:#}");
            ExitCode::FAILURE
        }
    }
}
