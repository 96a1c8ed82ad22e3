//! The one error type of the artifact contract: every way a release can fail to be
//! trusted or installed, each a variant a caller can branch on, each with a stable code.

use semver::Version;

use crate::manifest::{Sha256, Timestamp};
use crate::signing::KeyId;

/// Why a manifest, a key, an image or an install was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The document is not valid JSON of the expected shape (unknown field, wrong type, ...).
    #[error("malformed manifest: {reason}")]
    MalformedManifest {
        /// What the parser said, with line and column.
        reason: String,
    },
    /// A field (of a manifest, or an id) parsed but its value breaks a rule of the contract.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// The manifest field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The signed manifest bytes are not in canonical form, so they are not what was signed.
    #[error(
        "manifest is not in canonical form (it was edited after signing or not made by a signer)"
    )]
    NotCanonical,
    /// A manifest of a format this build does not know.
    #[error("unsupported manifest format {format} (this build reads format {supported})")]
    UnsupportedFormat {
        /// The format the document names.
        format: u32,
        /// The format this build reads.
        supported: u32,
    },
    /// The document is larger than any manifest may be.
    #[error("document of {size} bytes exceeds the limit of {limit} bytes")]
    DocumentTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A key file or key string that does not parse.
    #[error("malformed key: {reason}")]
    MalformedKey {
        /// What is wrong.
        reason: String,
    },
    /// A signature by a trusted key that does not verify over the manifest.
    #[error("bad signature by key {key_id}")]
    BadSignature {
        /// The key whose signature failed.
        key_id: KeyId,
    },
    /// Signed only by keys that are not trusted.
    #[error("signed only by unknown keys: {}", list(key_ids))]
    UnknownKey {
        /// The keys that signed.
        key_ids: Vec<KeyId>,
    },
    /// Fewer distinct trusted keys signed than the threshold requires.
    #[error("{valid} valid signature(s) by distinct trusted keys, {required} required")]
    BelowThreshold {
        /// Distinct trusted keys whose signatures verified.
        valid: usize,
        /// The threshold.
        required: usize,
    },
    /// The threshold is zero or larger than the trusted key set.
    #[error("threshold {threshold} is impossible with {trusted} trusted key(s)")]
    InvalidThreshold {
        /// The threshold asked for.
        threshold: usize,
        /// How many keys are trusted.
        trusted: usize,
    },
    /// The manifest's validity ended (freeze protection).
    #[error("manifest expired at {expires_at}")]
    Expired {
        /// When it expired.
        expires_at: Timestamp,
    },
    /// The image bytes hash to something other than what was signed.
    #[error("image sha256 mismatch: signed {expected}, got {actual}")]
    DigestMismatch {
        /// The signed digest.
        expected: Sha256,
        /// The digest of the bytes seen.
        actual: Sha256,
    },
    /// The image ended before (or after) the signed size.
    #[error("image size mismatch: signed {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The signed size.
        expected: u64,
        /// The size seen.
        actual: u64,
    },
    /// More bytes arrived than were signed; reading stopped there.
    #[error("image exceeds its signed size of {limit} bytes")]
    ExceedsSignedSize {
        /// The signed size.
        limit: u64,
    },
    /// The device's hardware is not in the manifest's compatibility list.
    #[error("hardware `{hardware}` is not supported (release supports {})", supported.join(", "))]
    IncompatibleHardware {
        /// The device's hardware id.
        hardware: String,
        /// What the release supports.
        supported: Vec<String>,
    },
    /// Installing would take the device below its anti-rollback floor.
    #[error("version {offered} is below the device's security floor {floor}")]
    BelowSecurityFloor {
        /// The release's version.
        offered: Version,
        /// The device's floor.
        floor: Version,
    },
    /// The device must first run at least the release's minimum version.
    #[error("release requires installed version >= {required}, device runs {}", installed.as_ref().map_or_else(|| "nothing known".to_owned(), Version::to_string))]
    MinimumVersionNotMet {
        /// What the device runs.
        installed: Option<Version>,
        /// What the release requires.
        required: Version,
    },
    /// The release is not newer than what the device runs (equal is allowed only when forced).
    #[error("version {offered} is not newer than installed {installed}")]
    NotNewer {
        /// What the device runs.
        installed: Version,
        /// The release's version.
        offered: Version,
    },
    /// Reading a key, manifest or image failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A stable, machine-readable code for this failure, for APIs, job reports and scripts.
    pub fn code(&self) -> &'static str {
        match self {
            Error::MalformedManifest { .. } => "malformed_manifest",
            Error::InvalidField { .. } => "invalid_manifest_field",
            Error::NotCanonical => "manifest_not_canonical",
            Error::UnsupportedFormat { .. } => "unsupported_manifest_format",
            Error::DocumentTooLarge { .. } => "document_too_large",
            Error::MalformedKey { .. } => "malformed_key",
            Error::BadSignature { .. } => "bad_signature",
            Error::UnknownKey { .. } => "unknown_key",
            Error::BelowThreshold { .. } => "below_threshold",
            Error::InvalidThreshold { .. } => "invalid_threshold",
            Error::Expired { .. } => "manifest_expired",
            Error::DigestMismatch { .. } => "digest_mismatch",
            Error::SizeMismatch { .. } => "size_mismatch",
            Error::ExceedsSignedSize { .. } => "exceeds_signed_size",
            Error::IncompatibleHardware { .. } => "incompatible_hardware",
            Error::BelowSecurityFloor { .. } => "below_security_floor",
            Error::MinimumVersionNotMet { .. } => "minimum_version_not_met",
            Error::NotNewer { .. } => "not_newer",
            Error::Io(_) => "io",
        }
    }
}

fn list(ids: &[KeyId]) -> String {
    ids.iter()
        .map(KeyId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
