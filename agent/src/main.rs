//! The `fleetwave-agent` binary.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use fleetwave_agent::verify::{Trust, check_image, check_release};
use fleetwave_artifacts::rules::{Device, Request};
use fleetwave_artifacts::{SignedManifest, Timestamp, TrustedKeys};
use semver::Version;

/// fleetwave-agent: installs signed firmware on this device, safely.
#[derive(Debug, Parser)]
#[command(name = "fleetwave-agent", version, about)]
struct Cli {
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a configuration file and everything it points at; list every problem.
    CheckConfig {
        /// The configuration file.
        #[arg(
            long,
            env = "FLEETWAVE_AGENT_CONFIG",
            default_value = "/etc/fleetwave-agent/agent.toml"
        )]
        config: PathBuf,
    },
    /// Print the example configuration, every key documented.
    ExampleConfig,
    /// Run: hear jobs, install them safely, report through the device shadow. Exits with
    /// status 75 when the file backend "reboots" (its supervisor starts it again).
    Run {
        /// The configuration file.
        #[arg(
            long,
            env = "FLEETWAVE_AGENT_CONFIG",
            default_value = "/etc/fleetwave-agent/agent.toml"
        )]
        config: PathBuf,
    },
    /// Run every check this device makes before installing IMAGE, without installing it.
    Verify {
        /// The firmware image.
        image: PathBuf,
        /// The signed manifest.
        #[arg(long)]
        manifest: PathBuf,
        /// The device's trusted release keys (a file of public key lines, or a directory of *.pub).
        #[arg(long)]
        trusted_keys: PathBuf,
        /// Distinct trusted signatures required.
        #[arg(long, default_value_t = 1)]
        threshold: usize,
        /// This device's hardware id.
        #[arg(long)]
        hardware: String,
        /// The version this device runs now.
        #[arg(long)]
        installed: Option<Version>,
        /// This device's anti-rollback floor.
        #[arg(long)]
        security_floor: Option<Version>,
        /// Allow reinstalling the running version.
        #[arg(long)]
        force: bool,
        /// Fetch IMAGE from this (presigned) URL first, exactly as a job downloads: after
        /// the release checks, streamed into the file, synced every 4 MiB and read back as
        /// it lands, resumed after a break; then size and sha256 of what was read back are
        /// checked.
        #[arg(long)]
        url: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Run { config } = &cli.command {
        return match serve(config) {
            Ok(status) => ExitCode::from(u8::try_from(status).unwrap_or(1)),
            Err(err) => {
                eprintln!("fleetwave-agent: error: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(cli.command, cli.json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = err
                .chain()
                .find_map(|e| e.downcast_ref::<fleetwave_artifacts::Error>())
                .map_or("error", fleetwave_artifacts::Error::code);
            eprintln!("fleetwave-agent: error: {err:#}");
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "code": code, "error": format!("{err:#}")})
                );
            }
            ExitCode::FAILURE
        }
    }
}

/// `run`: the agent itself, logging to stderr (`RUST_LOG` filters).
fn serve(config: &std::path::Path) -> Result<i32> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // TLS (https downloads) through a pure-Rust crypto provider: no C toolchain needed to
    // cross-compile the agent.
    let _ = rustls::crypto::CryptoProvider::install_default(rustls_rustcrypto::provider());
    let loaded = fleetwave_agent::config::Config::load(config)?;
    let keys = loaded.check()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(fleetwave_agent::run::run(loaded, keys))
}

fn run(command: Command, json: bool) -> Result<()> {
    match command {
        Command::Run { .. } => unreachable!("handled in main"),
        Command::ExampleConfig => {
            print!("{}", fleetwave_agent::config::EXAMPLE);
            Ok(())
        }
        Command::CheckConfig { config } => {
            let loaded = fleetwave_agent::config::Config::load(&config)?;
            let keys = loaded.check()?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "device_id": loaded.device_id, "trusted_keys": keys.len()})
                );
            } else {
                println!(
                    "{}: configuration OK for {} ({} trusted key(s), threshold {}, {:?} slots)",
                    config.display(),
                    loaded.device_id,
                    keys.len(),
                    loaded.trust.threshold,
                    loaded.slots.backend
                );
            }
            Ok(())
        }
        Command::Verify {
            image,
            manifest,
            trusted_keys,
            threshold,
            hardware,
            installed,
            security_floor,
            force,
            url,
        } => {
            let signed = SignedManifest::load(&manifest)
                .with_context(|| format!("manifest {}", manifest.display()))?;
            let trust = Trust {
                keys: TrustedKeys::load(&trusted_keys)
                    .with_context(|| format!("trusted keys {}", trusted_keys.display()))?,
                threshold,
            };
            let device = Device {
                hardware: &hardware,
                installed: installed.as_ref(),
                security_floor: security_floor.as_ref(),
            };
            let request = Request {
                now: Timestamp::now(),
                force,
            };
            let verified = check_release(&signed, &trust, device, request)?;
            if let Some(url) = url {
                // The download reads the image back as it lands: its digest is the file's.
                fetch(&url, &image, verified.manifest().size)
                    .with_context(|| format!("fetching {url} into {}", image.display()))?
                    .finish(&verified.manifest().sha256)
                    .with_context(|| format!("image {}", image.display()))?;
            } else {
                let file = std::fs::File::open(&image)
                    .with_context(|| format!("opening image {}", image.display()))?;
                check_image(&verified, file, |_| {})
                    .with_context(|| format!("image {}", image.display()))?;
            }
            let m = verified.manifest();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "product": m.product, "version": m.version, "sha256": m.sha256})
                );
            } else {
                println!("installable: {} {} on {hardware}", m.product, m.version);
            }
            Ok(())
        }
    }
}

/// Downloads `url` into `image` as a job does, retrying a broken transfer from the last
/// durable byte (up to five attempts); returns the image as read back.
fn fetch(
    url: &str,
    image: &std::path::Path,
    size: u64,
) -> Result<fleetwave_artifacts::digest::ImageHasher> {
    use fleetwave_agent::download::{self, Stop};
    let _ = rustls::crypto::CryptoProvider::install_default(rustls_rustcrypto::provider());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(20))
            .build()?;
        // A fresh file: a stale longer one must not pass for the image.
        std::fs::File::create(image)?;
        let mut from = 0;
        for attempt in 1..=5 {
            let mut durable = from;
            match download::fetch(&http, url, image, from, size, |p| durable = p.durable).await {
                Ok(fetched) => return Ok(fetched.readback),
                Err(Stop::Broken(reason)) if attempt < 5 => {
                    from = durable;
                    eprintln!("fleetwave-agent: {reason}; resuming at byte {from}");
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the last attempt returns")
    })
}
