//! `fleetwave release sign|cosign|verify`: the offline half of a release. Signing hashes the
//! image (with a progress bar), writes the signed manifest atomically; verifying checks the
//! signature threshold, expiry, size and digest exactly as a device will.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use fleetwave_artifacts::digest::{sha256_reader, verify_reader};
use fleetwave_artifacts::file::write_atomic;
use fleetwave_artifacts::{
    HardwareId, MANIFEST_FORMAT, Manifest, Product, SecretKey, SignedManifest, Timestamp,
    TrustedKeys, VerifiedManifest, rules,
};
use semver::Version;

use super::Output;
use super::client::{Client, ServerArgs, encode};
use crate::progress;

/// Release verbs.
#[expect(clippy::large_enum_variant, reason = "parsed once per process")]
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Hash IMAGE and write a manifest signed by one or more keys.
    Sign(SignArgs),
    /// Add a signature to an existing manifest (k-of-n signing by several holders).
    Cosign {
        /// The signed manifest to add to (rewritten atomically).
        manifest: PathBuf,
        /// The secret key to sign with.
        #[arg(long)]
        key: PathBuf,
    },
    /// Verify IMAGE against a signed manifest and trusted keys, as a device would.
    Verify(VerifyArgs),
    /// Upload a signed release to the service (the image streams, with a progress bar).
    Upload {
        /// The firmware image.
        image: PathBuf,
        /// Its signed manifest.
        #[arg(long)]
        manifest: PathBuf,
    },
    /// List the service's releases.
    List {
        /// Only this product.
        #[arg(long)]
        product: Option<String>,
    },
}

impl Command {
    /// Whether the verb talks to the service (and so runs asynchronously).
    pub fn is_remote(&self) -> bool {
        matches!(self, Command::Upload { .. } | Command::List { .. })
    }
}

/// Runs a verb that talks to the service.
pub async fn remote(cmd: Command, server: &ServerArgs, out: Output) -> Result<()> {
    let client = Client::new(server)?;
    match cmd {
        Command::Upload { image, manifest } => {
            let release = upload(&client, &image, &manifest, out).await?;
            out.emit(
                format_args!(
                    "uploaded {} {} as release {} ({} bytes at {})",
                    release["product"].as_str().unwrap_or(""),
                    release["version"].as_str().unwrap_or(""),
                    release["id"].as_str().unwrap_or(""),
                    release["size"],
                    release["object_key"].as_str().unwrap_or("")
                ),
                &release,
            );
        }
        Command::List { product } => {
            let mut path = "/v1/releases?limit=1000".to_owned();
            if let Some(p) = &product {
                path.push_str(&format!("&product={}", encode(p)));
            }
            let releases = client.all_pages(&path).await?;
            let mut text = format!(
                "{:<38} {:<20} {:<12} {:>12} UPLOADED",
                "ID", "PRODUCT", "VERSION", "BYTES"
            );
            for r in &releases {
                text.push_str(&format!(
                    "\n{:<38} {:<20} {:<12} {:>12} {}",
                    r["id"].as_str().unwrap_or(""),
                    r["product"].as_str().unwrap_or(""),
                    r["version"].as_str().unwrap_or(""),
                    r["size"],
                    r["uploaded_at"].as_str().unwrap_or("")
                ));
            }
            out.emit(text, &serde_json::Value::Array(releases.clone()));
        }
        other => anyhow::bail!("{other:?} does not talk to the service"),
    }
    Ok(())
}

/// Checks the manifest locally, then streams the manifest and image to the service.
pub async fn upload(
    client: &Client,
    image: &Path,
    manifest: &Path,
    out: Output,
) -> Result<serde_json::Value> {
    use futures::StreamExt;
    use reqwest::multipart::{Form, Part};

    // Refuse locally what the service would refuse anyway, before sending gigabytes.
    let signed = load_manifest(manifest)?;
    let manifest_bytes =
        std::fs::read(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let file = tokio::fs::File::open(image)
        .await
        .with_context(|| format!("opening image {}", image.display()))?;
    let len = file.metadata().await?.len();
    if len != signed.manifest().size {
        anyhow::bail!(fleetwave_artifacts::Error::SizeMismatch {
            expected: signed.manifest().size,
            actual: len,
        });
    }
    let bar = progress::bytes(len, "uploading", out.progress());
    let counter = bar.clone();
    let stream =
        tokio_util::io::ReaderStream::with_capacity(file, fleetwave_artifacts::digest::CHUNK)
            .inspect(move |chunk| {
                if let Ok(c) = chunk {
                    counter.inc(c.len() as u64);
                }
            });
    let form = Form::new()
        .part(
            "manifest",
            Part::bytes(manifest_bytes).mime_str("application/json")?,
        )
        .part(
            "image",
            Part::stream_with_length(reqwest::Body::wrap_stream(stream), len)
                .mime_str("application/octet-stream")?,
        );
    let result = client
        .send(
            client
                .request(reqwest::Method::POST, "/v1/releases")
                .multipart(form),
        )
        .await;
    bar.finish_and_clear();
    result
}

/// Arguments of `release sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The firmware image.
    pub image: PathBuf,
    /// Product name (a-z 0-9 . _ -).
    #[arg(long)]
    pub product: String,
    /// Semantic version of the image.
    #[arg(long)]
    pub version: Version,
    /// Compatible hardware id; repeat for several.
    #[arg(long = "hardware", required = true)]
    pub hardware: Vec<String>,
    /// Secret key file; repeat to sign with several keys.
    #[arg(long = "key", required = true)]
    pub keys: Vec<PathBuf>,
    /// How long devices accept the release, e.g. 90d, 12h.
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    pub expires: Duration,
    /// Anti-rollback floor: devices that install this never go below this version again.
    #[arg(long)]
    pub security_floor: Option<Version>,
    /// Devices must already run at least this version.
    #[arg(long)]
    pub min_version: Option<Version>,
    /// The version a delta image applies on.
    #[arg(long)]
    pub delta_base: Option<Version>,
    /// Where to write the signed manifest.
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `release verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The firmware image.
    pub image: PathBuf,
    /// The signed manifest.
    #[arg(long)]
    pub manifest: PathBuf,
    /// A trusted-keys file (public key lines) or a directory of *.pub files.
    #[arg(long)]
    pub trusted_keys: PathBuf,
    /// How many distinct trusted keys must have signed.
    #[arg(long, default_value_t = 1)]
    pub threshold: usize,
}

/// Runs a release verb.
pub fn run(cmd: Command, out: Output) -> Result<()> {
    match cmd {
        Command::Sign(args) => {
            let signed = sign(&args, out)?;
            let m = signed.manifest();
            let key_ids: Vec<_> = signed.signatures().iter().map(|s| s.key_id).collect();
            out.emit(
                format_args!(
                    "signed {} {} ({} bytes, sha256 {}) with {} key(s), expires {}\n  manifest: {}",
                    m.product,
                    m.version,
                    m.size,
                    m.sha256,
                    key_ids.len(),
                    m.expires_at,
                    args.out.display()
                ),
                &serde_json::json!({
                    "ok": true, "manifest": args.out, "product": m.product, "version": m.version,
                    "size": m.size, "sha256": m.sha256, "expires_at": m.expires_at, "key_ids": key_ids,
                }),
            );
            Ok(())
        }
        Command::Cosign { manifest, key } => {
            let mut signed = load_manifest(&manifest)?;
            let key = load_key(&key)?;
            signed.add_signature(&key)?;
            write_atomic(&manifest, format!("{}\n", signed.to_json()).as_bytes())
                .with_context(|| format!("writing {}", manifest.display()))?;
            out.emit(
                format_args!(
                    "{} now carries {} signature(s)",
                    manifest.display(),
                    signed.signatures().len()
                ),
                &serde_json::json!({"ok": true, "signatures": signed.signatures().len()}),
            );
            Ok(())
        }
        Command::Upload { .. } | Command::List { .. } => {
            anyhow::bail!("this verb talks to the service: run it through `remote`")
        }
        Command::Verify(args) => {
            let verified = verify(&args, out)?;
            let m = verified.manifest();
            out.emit(
                format_args!(
                    "OK {} {}: {} bytes, sha256 {}, signed by {} trusted key(s) (threshold {}), expires {}",
                    m.product,
                    m.version,
                    m.size,
                    m.sha256,
                    verified.signers().len(),
                    args.threshold,
                    m.expires_at
                ),
                &serde_json::json!({
                    "ok": true, "product": m.product, "version": m.version, "size": m.size,
                    "sha256": m.sha256, "expires_at": m.expires_at, "signers": verified.signers(),
                    "threshold": args.threshold,
                }),
            );
            Ok(())
        }
    }
}

/// Hashes the image, builds and signs its manifest, and writes it to `args.out`.
pub fn sign(args: &SignArgs, out: Output) -> Result<SignedManifest> {
    let keys = args
        .keys
        .iter()
        .map(|k| load_key(k))
        .collect::<Result<Vec<_>>>()?;
    let (file, len) = open_image(&args.image)?;
    let bar = progress::bytes(len, "hashing", out.progress());
    let (sha256, size) = sha256_reader(file, |n| bar.set_position(n))
        .with_context(|| format!("reading {}", args.image.display()))?;
    bar.finish_and_clear();
    let now = Timestamp::now();
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        product: Product::parse(&args.product)?,
        version: args.version.clone(),
        hardware: args
            .hardware
            .iter()
            .map(|h| HardwareId::parse(h))
            .collect::<Result<_, _>>()?,
        size,
        sha256,
        min_version: args.min_version.clone(),
        security_floor: args.security_floor.clone(),
        created_at: now,
        expires_at: now.plus(args.expires),
        delta_base: args.delta_base.clone(),
    };
    let signed = SignedManifest::sign(manifest, &keys.iter().collect::<Vec<_>>())?;
    write_atomic(&args.out, format!("{}\n", signed.to_json()).as_bytes())
        .with_context(|| format!("writing {}", args.out.display()))?;
    Ok(signed)
}

/// Verifies signatures (threshold), expiry, then streams the image through size and digest
/// checks.
pub fn verify(args: &VerifyArgs, out: Output) -> Result<VerifiedManifest> {
    let signed = load_manifest(&args.manifest)?;
    let trusted = TrustedKeys::load(&args.trusted_keys)
        .with_context(|| format!("reading trusted keys {}", args.trusted_keys.display()))?;
    let verified = trusted.verify(&signed, args.threshold)?;
    rules::check_unexpired(&verified, Timestamp::now())?;
    let (file, len) = open_image(&args.image)?;
    let bar = progress::bytes(len, "verifying", out.progress());
    verify_reader(file, verified.manifest(), |n| bar.set_position(n))
        .with_context(|| format!("image {}", args.image.display()))?;
    bar.finish_and_clear();
    Ok(verified)
}

fn load_manifest(path: &Path) -> Result<SignedManifest> {
    SignedManifest::load(path).with_context(|| format!("manifest {}", path.display()))
}

fn load_key(path: &Path) -> Result<SecretKey> {
    SecretKey::load(path).with_context(|| format!("secret key {}", path.display()))
}

fn open_image(path: &Path) -> Result<(File, u64)> {
    let file = File::open(path).with_context(|| format!("opening image {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("reading image {}", path.display()))?
        .len();
    Ok((file, len))
}
