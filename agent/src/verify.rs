//! Device-side verification: everything a device checks before it writes a slot, in the
//! order it checks it. A compromised server, bucket or broker can stop updates, never
//! install its own: the device trusts only its configured release keys.

use std::io::Read;

use fleetwave_artifacts::digest::verify_reader;
use fleetwave_artifacts::rules::{self, Device, Request};
use fleetwave_artifacts::{Error, SignedManifest, TrustedKeys, VerifiedManifest};

/// The device's trust anchor: its release keys and how many must have signed.
#[derive(Clone, Debug)]
pub struct Trust {
    /// Trusted release keys.
    pub keys: TrustedKeys,
    /// Distinct trusted signatures required.
    pub threshold: usize,
}

/// Verifies the signature threshold and the install rules for this device, before a byte
/// is downloaded.
pub fn check_release(
    signed: &SignedManifest,
    trust: &Trust,
    device: Device<'_>,
    request: Request,
) -> Result<VerifiedManifest, Error> {
    let verified = trust.keys.verify(signed, trust.threshold)?;
    rules::check(&verified, device, request)?;
    Ok(verified)
}

/// Verifies the image bytes (as read back from where they were written) against the
/// verified manifest: exact size, sha256, and nothing past the signed size.
pub fn check_image(
    verified: &VerifiedManifest,
    image: impl Read,
    progress: impl FnMut(u64),
) -> Result<(), Error> {
    verify_reader(image, verified.manifest(), progress)
}
