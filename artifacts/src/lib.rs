//! The artifact contract: everything that travels from the release engineer to a device.
//!
//! - [`manifest`]: the release manifest, its canonical bytes and field rules.
//! - [`signing`]: ed25519 release keys, key files, the signed envelope, k-of-n verification.
//! - [`device`]: the device id, as it appears in topics and certificates.
//! - [`digest`]: streaming SHA-256 over images, bounded by the signed size.
//! - [`protocol`]: the MQTT contract: topics, job states, shadow reports, wave buckets.
//! - [`rules`]: whether a device may install a verified release.
//! - [`error`]: the one error enum, with a stable code per variant.
//! - [`file`]: crash-safe file replacement (temp file, fsync, rename, fsync the directory).
//!
//! The crate is pure and synchronous (no tokio), so the service, the agent and offline tools
//! all use it as is.
//!
//! ```
//! use fleetwave_artifacts::{HardwareId, Manifest, Product, SecretKey, SignedManifest, Sha256, Timestamp, TrustedKeys};
//! use std::time::Duration;
//!
//! let image = b"firmware bytes";
//! let now = Timestamp::now();
//! let manifest = Manifest {
//!     format: fleetwave_artifacts::MANIFEST_FORMAT,
//!     product: Product::parse("gateway-os")?,
//!     version: "1.0.0".parse().unwrap(),
//!     hardware: vec![HardwareId::parse("rpi4")?],
//!     size: image.len() as u64,
//!     sha256: Sha256::of(image),
//!     min_version: None,
//!     security_floor: None,
//!     created_at: now,
//!     expires_at: now.plus(Duration::from_secs(90 * 86_400)),
//!     delta_base: None,
//! };
//! let key = SecretKey::generate()?;
//! let envelope = SignedManifest::sign(manifest, &[&key])?.to_json();
//!
//! // On the device:
//! let trusted = TrustedKeys::new([key.public()]);
//! let verified = trusted.verify(&SignedManifest::parse(envelope.as_bytes())?, 1)?;
//! fleetwave_artifacts::digest::verify_reader(&image[..], verified.manifest(), |_| {})?;
//! # Ok::<(), fleetwave_artifacts::Error>(())
//! ```

#![warn(missing_docs)]

pub mod device;
pub mod digest;
pub mod error;
pub mod file;
pub mod manifest;
pub mod protocol;
pub mod rules;
pub mod signing;

pub use device::DeviceId;
pub use error::Error;
pub use manifest::{HardwareId, MANIFEST_FORMAT, Manifest, Product, Sha256, Timestamp};
pub use signing::{KeyId, PublicKey, SecretKey, SignedManifest, TrustedKeys, VerifiedManifest};

#[cfg(test)]
pub(crate) mod test_support {
    use crate::{
        HardwareId, MANIFEST_FORMAT, Manifest, Product, SecretKey, Sha256, SignedManifest,
        Timestamp, TrustedKeys, VerifiedManifest,
    };
    use semver::Version;

    /// A valid manifest for gateway-os 1.2.3 on rpi4, floor 1.0.0, valid 2027-2030.
    pub(crate) fn sample() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            product: Product::parse("gateway-os").unwrap(),
            version: Version::parse("1.2.3").unwrap(),
            hardware: vec![HardwareId::parse("rpi4").unwrap()],
            size: 1024,
            sha256: Sha256::of(b"image"),
            min_version: None,
            security_floor: Some(Version::parse("1.0.0").unwrap()),
            created_at: Timestamp::from_unix(1_800_000_000),
            expires_at: Timestamp::from_unix(1_900_000_000),
            delta_base: None,
        }
    }

    /// `manifest`, signed by a fresh key and verified against it.
    pub(crate) fn verified(manifest: Manifest) -> VerifiedManifest {
        let key = SecretKey::from_seed(&[9; 32]);
        let signed = SignedManifest::sign(manifest, &[&key]).unwrap();
        TrustedKeys::new([key.public()]).verify(&signed, 1).unwrap()
    }
}
