//! Release manifests for tests and benchmarks: product `bench-os` for hardware `rpi4`.

use std::time::Duration;

use fleetwave_artifacts::{HardwareId, MANIFEST_FORMAT, Manifest, Product, Sha256, Timestamp};

/// A manifest of `version` for an image of `size` bytes with digest `sha256`, created now and
/// valid for `valid_for`.
pub fn manifest(version: &str, size: u64, sha256: Sha256, valid_for: Duration) -> Manifest {
    let now = Timestamp::now();
    Manifest {
        format: MANIFEST_FORMAT,
        product: Product::parse("bench-os").expect("a valid product"),
        version: version.parse().expect("a valid version"),
        hardware: vec![HardwareId::parse("rpi4").expect("a valid hardware id")],
        size,
        sha256,
        min_version: None,
        security_floor: None,
        created_at: now,
        expires_at: now.plus(valid_for),
        delta_base: None,
    }
}

/// A new signing key, its public half written to `dir/trusted.pub` (the file the service's
/// `[releases] trusted_keys` names): the key and that file's path.
pub fn trusted_key(
    dir: &std::path::Path,
) -> anyhow::Result<(fleetwave_artifacts::SecretKey, std::path::PathBuf)> {
    let key = fleetwave_artifacts::SecretKey::generate()?;
    let path = dir.join("trusted.pub");
    std::fs::write(&path, key.public().to_line())?;
    Ok((key, path))
}

/// The multipart body of `POST /v1/releases` for a small image of `version` (4 KiB of one
/// byte) signed by `key`.
pub fn small_upload(
    key: &fleetwave_artifacts::SecretKey,
    version: &str,
) -> anyhow::Result<reqwest::multipart::Form> {
    let image = vec![7u8; 4096];
    let manifest = manifest(
        version,
        image.len() as u64,
        Sha256::of(&image),
        Duration::from_secs(86_400),
    );
    let signed = fleetwave_artifacts::SignedManifest::sign(manifest, &[key])?;
    Ok(reqwest::multipart::Form::new()
        .part("manifest", reqwest::multipart::Part::text(signed.to_json()))
        .part("image", reqwest::multipart::Part::bytes(image)))
}
