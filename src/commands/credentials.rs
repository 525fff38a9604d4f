//! Making and inspecting credentials: API keys, HS256 secrets, EdDSA and
//! ES256 signing keys, the JWKS, and tokens.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, bail};

use service_auth::check::unix_now;
use service_auth::config::StaticConfig;
use service_auth::keys::{self, Algorithm};
use service_auth::registry::{self, Registry};
use service_auth::token;

/// Loads the static config and its registry, joining every error into one message.
fn load(config_path: &Path) -> anyhow::Result<(StaticConfig, Registry)> {
    let config = StaticConfig::load(config_path)?;
    let registry =
        Registry::load_paths(&config.registry).map_err(service_auth::RunError::Registry)?;
    Ok((config, registry))
}

pub fn gen_key() -> anyhow::Result<()> {
    let key = registry::random_secret();
    let hash = hex::encode(registry::hash_api_key(key.as_bytes()));
    // The date says when; the random suffix keeps two keys made the same
    // day for one service from sharing an id (ids are unique per service).
    let id = format!(
        "{}-{:08x}",
        time::OffsetDateTime::now_utc().date(),
        rand::random::<u32>()
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "{key}")?;
    writeln!(out, "# registry entry (under the service's api_keys):")?;
    writeln!(out, "- id: {id}")?;
    writeln!(out, "  sha256: \"{hash}\"")?;
    Ok(())
}

/// A new HS256 secret: on stdout, or into a new file `out` (mode 0600,
/// never over an existing file), where no other user can read it.
pub fn gen_secret(out: Option<&Path>) -> anyhow::Result<()> {
    let secret = format!("{}\n", registry::random_secret());
    match out {
        Some(out) => write_private(out, secret.as_bytes()),
        None => {
            print!("{secret}");
            Ok(())
        }
    }
}

/// Hashes the key on stdin. Exactly one trailing newline (LF or CRLF) is
/// taken off, as `echo` adds one; anything else is part of the key, and a
/// key no Check would accept is refused rather than hashed.
pub fn hash_key() -> anyhow::Result<()> {
    let mut input = Vec::new();
    // Enough to tell a too-long key (plus its newline) from a valid one.
    std::io::stdin()
        .take(registry::MAX_API_KEY_LEN as u64 + 3)
        .read_to_end(&mut input)
        .context("cannot read the key from stdin")?;
    let key = strip_one_newline(&input);
    registry::check_api_key_shape(key)
        .context("no Check would accept this key, so it is not hashed")?;
    println!("{}", hex::encode(registry::hash_api_key(key)));
    Ok(())
}

/// `input` without one trailing `\n` or `\r\n`.
fn strip_one_newline(input: &[u8]) -> &[u8] {
    input
        .strip_suffix(b"\r\n")
        .or_else(|| input.strip_suffix(b"\n"))
        .unwrap_or(input)
}

pub fn token_issue(config_path: &Path, service_id: &str, scopes: &[String]) -> anyhow::Result<()> {
    let (_, registry) = load(config_path)?;
    let service = registry
        .service(service_id)
        .with_context(|| format!("no service {service_id:?} in the registry"))?;
    if let Some(bad) = scopes.iter().find(|s| !service.allows_scope(s)) {
        bail!("scope {bad:?} is not allowed for service {service_id:?}");
    }
    let scope = if scopes.is_empty() {
        service.all_scopes.clone()
    } else {
        scopes.join(" ")
    };
    let subject = token::Subject {
        service: &service.id,
        principal: service.principals.first().map_or("", String::as_str),
        scope: scope.into(),
        certificate_sha256: None,
    };
    let issued = token::issue(&registry.token, &subject, unix_now())?;
    println!("{}", issued.token);
    Ok(())
}

pub fn token_verify(config_path: &Path, token: &str) -> anyhow::Result<()> {
    let (_, registry) = load(config_path)?;
    let mut input = String::new();
    let token = if token == "-" {
        std::io::stdin()
            .take(token::MAX_TOKEN_LEN as u64 + 2)
            .read_to_string(&mut input)
            .context("cannot read the token from stdin")?;
        input.trim()
    } else {
        token
    };
    let verified = token::verify(&registry.token, token, unix_now())
        .map_err(|e| anyhow::anyhow!("invalid token ({}): {e}", e.as_str()))?;
    println!("{}", serde_json::to_string_pretty(&verified.claims)?);
    Ok(())
}

/// A new EdDSA or ES256 private key: on stdout, or into a new file `out`
/// (mode 0600, never over an existing file) with its public key on stdout.
pub fn gen_signing_key(algorithm: Algorithm, out: Option<&Path>) -> anyhow::Result<()> {
    let Some(out) = out else {
        print!("{}", keys::generate(algorithm)?.as_str());
        return Ok(());
    };
    let (private, public) = keys::generate_pair(algorithm)?;
    write_private(out, private.as_bytes())?;
    print!("{public}");
    Ok(())
}

/// Creates `path` with mode 0600 and writes `contents`; refuses to replace
/// an existing file (or follow a symlink there).
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The JWKS the admin listener would serve now; registry warnings go to
/// stderr so stdout holds the JWKS alone.
pub fn jwks(config_path: &Path) -> anyhow::Result<()> {
    let (_, registry) = load(config_path)?;
    for warning in registry.warnings() {
        eprintln!("warning: {warning}");
    }
    println!("{}", registry.token.jwks(unix_now()));
    Ok(())
}
