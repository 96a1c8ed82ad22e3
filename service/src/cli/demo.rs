//! `fleetwave demo`: the signing round trip a newcomer can run with nothing installed but
//! Rust. It generates a key and an image in a scratch directory, signs and verifies the
//! image, then shows verification refusing a flipped image byte, a flipped manifest byte and
//! an untrusted key. (The full service demo with agents and a rollout replaces this once
//! the service lands.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Output, error_code, key, release};

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Size of the generated image in MiB.
    #[arg(long, default_value_t = 64)]
    pub image_mib: u64,
    /// Work in this directory instead of a fresh temporary one (kept afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Runs the demo; fails if any check does not come out as it must.
pub fn run(args: Args, out: Output) -> Result<()> {
    let scratch;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            scratch = std::env::temp_dir().join(format!("fleetwave-demo-{}", std::process::id()));
            std::fs::create_dir_all(&scratch)?;
            scratch.clone()
        }
    };
    let result = steps(&dir, args.image_mib, out);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn steps(dir: &Path, image_mib: u64, out: Output) -> Result<()> {
    let say = |line: String| {
        if !out.json {
            println!("{line}");
        }
    };
    let started = Instant::now();
    let (secret, public) = key::generate(&dir.join("release"))?;
    say(format!("1. generated release key {}", secret.display()));
    let (other_secret, other_public) = key::generate(&dir.join("stranger"))?;
    let _ = other_secret;

    let image = dir.join("gateway-os-1.0.0.img");
    write_image(&image, image_mib << 20)?;
    say(format!(
        "2. wrote a {image_mib} MiB image {}",
        image.display()
    ));

    let manifest = dir.join("gateway-os-1.0.0.manifest.json");
    let sign_args = release::SignArgs {
        image: image.clone(),
        product: "gateway-os".to_owned(),
        version: semver::Version::new(1, 0, 0),
        hardware: vec!["rpi4".to_owned(), "rpi5".to_owned()],
        keys: vec![secret],
        expires: Duration::from_secs(90 * 86_400),
        security_floor: Some(semver::Version::new(1, 0, 0)),
        min_version: None,
        delta_base: None,
        out: manifest.clone(),
    };
    let signed = release::sign(&sign_args, out)?;
    say(format!("3. signed: sha256 {}", signed.manifest().sha256));

    let verify_args = |image: &Path, manifest: &Path, keys: &Path| release::VerifyArgs {
        image: image.to_owned(),
        manifest: manifest.to_owned(),
        trusted_keys: keys.to_owned(),
        threshold: 1,
    };
    release::verify(&verify_args(&image, &manifest, &public), out)?;
    say("4. verified against the trusted key: OK".to_owned());

    let bad_image = dir.join("tampered.img");
    std::fs::copy(&image, &bad_image)?;
    flip_byte(&bad_image, (image_mib << 20) / 2)?;
    let bad_manifest = dir.join("tampered.manifest.json");
    std::fs::copy(&manifest, &bad_manifest)?;
    let text = std::fs::read_to_string(&manifest)?;
    let at = text.find("\"size\":").context("manifest has a size")? + 8;
    flip_byte(&bad_manifest, at as u64)?;

    let refusals = [
        (
            "one image byte flipped",
            verify_args(&bad_image, &manifest, &public),
        ),
        (
            "one manifest byte flipped",
            verify_args(&image, &bad_manifest, &public),
        ),
        (
            "signed by an untrusted key",
            verify_args(&image, &manifest, &other_public),
        ),
    ];
    let mut results = Vec::new();
    for (n, (what, args)) in refusals.iter().enumerate() {
        match release::verify(args, out) {
            Ok(_) => bail!("verification accepted a release with {what}"),
            Err(e) => {
                say(format!(
                    "{}. {what}: refused ({}): {e:#}",
                    n + 5,
                    error_code(&e)
                ));
                results.push(serde_json::json!({"case": what, "code": error_code(&e)}));
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    say(format!("done in {secs:.1} s"));
    if out.json {
        println!(
            "{}",
            serde_json::json!({"ok": true, "sha256": signed.manifest().sha256, "refused": results, "seconds": secs})
        );
    }
    Ok(())
}

/// Writes `len` bytes of deterministic pseudo-random data (xorshift), 1 MiB at a time:
/// incompressible, so no layer can cheat on it. Demos and benchmarks make images with it.
pub fn write_image(path: &Path, len: u64) -> Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(())
}

fn flip_byte(path: &Path, offset: u64) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut byte)?;
    byte[0] ^= 0x01;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(&byte)?;
    Ok(())
}
