//! `fleetwave key`: release signing keys (see `fleetwave_artifacts::signing` for the format).

use std::path::PathBuf;

use anyhow::{Context, Result};
use fleetwave_artifacts::SecretKey;
use fleetwave_artifacts::file::write_atomic;

use super::Output;

/// Key verbs.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Generate a new ed25519 release key: PREFIX.key (secret, mode 0600) and PREFIX.pub.
    Generate {
        /// Path prefix of the two files written.
        #[arg(long, default_value = "fleetwave-release")]
        out: PathBuf,
    },
}

/// Runs a key verb.
pub fn run(cmd: Command, out: Output) -> Result<()> {
    match cmd {
        Command::Generate { out: prefix } => {
            let (secret, public) = generate(&prefix)?;
            let key = SecretKey::load(&secret)?;
            let id = key.public().id();
            out.emit(
                format_args!(
                    "generated key {id}\n  secret: {} (keep offline)\n  public: {}",
                    secret.display(),
                    public.display()
                ),
                &serde_json::json!({"ok": true, "key_id": id, "secret": secret, "public": public}),
            );
            Ok(())
        }
    }
}

/// Writes a fresh key pair beside `prefix`; returns the secret and public file paths.
/// Never overwrites an existing secret key.
pub fn generate(prefix: &std::path::Path) -> Result<(PathBuf, PathBuf)> {
    let with_suffix = |suffix: &str| {
        let mut path = prefix.as_os_str().to_owned();
        path.push(suffix);
        PathBuf::from(path)
    };
    let (secret_path, public_path) = (with_suffix(".key"), with_suffix(".pub"));
    let key = SecretKey::generate()?;
    key.write_new(&secret_path)
        .with_context(|| format!("writing secret key {}", secret_path.display()))?;
    let public = format!(
        "# fleetwave release public key {}\n{}\n",
        key.public().id(),
        key.public().to_line()
    );
    write_atomic(&public_path, public.as_bytes())
        .with_context(|| format!("writing public key {}", public_path.display()))?;
    Ok((secret_path, public_path))
}
