//! The release manifest: what a signature vouches for, its canonical bytes and its
//! field-level rules, plus the validated newtypes it is made of (`Sha256`, `Timestamp`,
//! `Product`, `HardwareId`).
//!
//! Canonical form is serde_json's compact output of [`Manifest`]: keys in declaration order,
//! no insignificant whitespace, absent optionals omitted (never `null`). Parsing is strict:
//! unknown fields are refused, and a signed manifest must be byte-for-byte canonical.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use semver::Version;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The manifest format this build writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// No manifest document (signed envelope included) may be larger than this.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// A release: one firmware image and everything a device needs to decide whether to install it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Document format, [`MANIFEST_FORMAT`]; a device refuses formats it does not know.
    pub format: u32,
    /// The product this image is for; versions are ordered within a product.
    pub product: Product,
    /// Semantic version of the image.
    pub version: Version,
    /// Hardware ids the image runs on; a device installs only if its id is listed.
    pub hardware: Vec<HardwareId>,
    /// Exact size of the image in bytes.
    pub size: u64,
    /// SHA-256 of the image bytes.
    pub sha256: Sha256,
    /// The device must already run at least this version (a migration step that cannot be skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<Version>,
    /// Anti-rollback: once installed, the device never again installs a version below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_floor: Option<Version>,
    /// When the release was signed.
    pub created_at: Timestamp,
    /// After this instant devices refuse it (freeze protection: an old, vulnerable release
    /// cannot be replayed forever).
    pub expires_at: Timestamp,
    /// The version a delta image applies on top of, when the image is a delta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_base: Option<Version>,
}

impl Manifest {
    /// The exact bytes a signature covers.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serialising plain fields into a Vec cannot fail.
        serde_json::to_vec(self).expect("a manifest always serialises")
    }

    /// Parses a manifest document strictly: bounded size, no unknown fields, canonical form,
    /// and every field rule of [`Manifest::validate`].
    pub fn parse_canonical(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(Error::DocumentTooLarge {
                size: bytes.len(),
                limit: MAX_DOCUMENT_BYTES,
            });
        }
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| Error::MalformedManifest {
                reason: e.to_string(),
            })?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(Error::UnsupportedFormat {
                format: manifest.format,
                supported: MANIFEST_FORMAT,
            });
        }
        if manifest.canonical_bytes() != bytes {
            return Err(Error::NotCanonical);
        }
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks the rules that hold between fields, independent of any device.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |field, reason: &str| {
            Err(Error::InvalidField {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.format != MANIFEST_FORMAT {
            return Err(Error::UnsupportedFormat {
                format: self.format,
                supported: MANIFEST_FORMAT,
            });
        }
        if self.hardware.is_empty() {
            return invalid("hardware", "at least one hardware id is required");
        }
        if self.hardware.len() > MAX_HARDWARE_IDS {
            return invalid("hardware", "too many hardware ids (at most 64)");
        }
        let mut seen = std::collections::BTreeSet::new();
        if !self.hardware.iter().all(|h| seen.insert(h.as_str())) {
            return invalid("hardware", "hardware ids must be distinct");
        }
        if self.size == 0 {
            return invalid("size", "an image cannot be empty");
        }
        if self.expires_at <= self.created_at {
            return invalid("expires_at", "must be later than created_at");
        }
        if self
            .security_floor
            .as_ref()
            .is_some_and(|f| f > &self.version)
        {
            return invalid(
                "security_floor",
                "cannot be above the release's own version",
            );
        }
        if self.min_version.as_ref().is_some_and(|m| m > &self.version) {
            return invalid("min_version", "cannot be above the release's own version");
        }
        if self.delta_base.as_ref().is_some_and(|b| b >= &self.version) {
            return invalid("delta_base", "must be older than the release's own version");
        }
        Ok(())
    }

    /// Whether the release lists `hardware` as compatible.
    pub fn supports(&self, hardware: &str) -> bool {
        self.hardware.iter().any(|h| h.as_str() == hardware)
    }
}

const MAX_HARDWARE_IDS: usize = 64;

/// A SHA-256 digest, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Sha256(sha2::Sha256::digest(bytes).into())
    }
}

impl FromStr for Sha256 {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err("a sha256 is 64 lowercase hex digits".to_owned());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| e.to_string())?;
        Ok(Sha256(out))
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

impl Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An instant with one-second resolution, written as RFC 3339 in UTC (`2026-11-27T07:40:00Z`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// Seconds since the Unix epoch.
    pub const fn from_unix(secs: u64) -> Self {
        Timestamp(secs)
    }

    /// Seconds since the Unix epoch.
    pub fn unix(self) -> u64 {
        self.0
    }

    /// The current time, truncated to the second.
    pub fn now() -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Timestamp(secs)
    }

    /// This instant plus `d` (saturating), truncated to the second.
    pub fn plus(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(d.as_secs()))
    }

    fn system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.0)
    }
}

impl FromStr for Timestamp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = humantime::parse_rfc3339(s).map_err(|e| format!("{e}: {s:?}"))?;
        let d = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| format!("before 1970: {s:?}"))?;
        if d.subsec_nanos() != 0 {
            return Err(format!("fractional seconds are not allowed: {s:?}"));
        }
        Ok(Timestamp(d.as_secs()))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_seconds(self.system_time())
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Defines a validated name newtype: 1 to 64 characters of `[a-z0-9._-]`, starting with a
/// letter or digit. Product names and hardware ids appear in topics, object keys and queries,
/// so they are kept to characters that are safe in all of them.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `s` as a name of this kind.
            pub fn parse(s: &str) -> Result<Self, Error> {
                check_name(s).map_err(|reason| Error::InvalidField { field: $what, reason })?;
                Ok($name(s.to_owned()))
            }

            /// The name as written.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(s: String) -> Result<Self, String> {
                check_name(&s).map_err(|reason| format!("invalid {}: {reason}", $what))?;
                Ok($name(s))
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A product name, e.g. `gateway-os`.
    Product,
    "product"
);
name_type!(
    /// A hardware compatibility id, e.g. `rpi4` or `rpi5-cm`.
    HardwareId,
    "hardware"
);

fn check_name(s: &str) -> Result<(), String> {
    let ok_first = s
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok_rest = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if s.is_empty() || s.len() > 64 || !ok_first || !ok_rest {
        return Err(format!(
            "{s:?} must be 1 to 64 characters of a-z 0-9 . _ - starting with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::sample;

    #[test]
    fn canonical_form_is_compact_and_ordered() {
        let text = String::from_utf8(sample().canonical_bytes()).unwrap();
        assert_eq!(
            text,
            concat!(
                r#"{"format":1,"product":"gateway-os","version":"1.2.3","hardware":["rpi4"],"size":1024,"#,
                r#""sha256":"6105d6cc76af400325e94d588ce511be5bfdbb73b437dc51eca43917d7a43e3d","#,
                r#""security_floor":"1.0.0","created_at":"2027-01-15T08:00:00Z","expires_at":"2030-03-17T17:46:40Z"}"#
            )
        );
        assert_eq!(
            Manifest::parse_canonical(text.as_bytes()).unwrap(),
            sample()
        );
    }

    #[test]
    fn non_canonical_documents_are_refused() {
        let text = String::from_utf8(sample().canonical_bytes()).unwrap();
        let spaced = text.replacen(",", ", ", 1);
        assert!(matches!(
            Manifest::parse_canonical(spaced.as_bytes()),
            Err(Error::NotCanonical)
        ));
        let with_null = text.replacen("}", r#","delta_base":null}"#, 1);
        assert!(matches!(
            Manifest::parse_canonical(with_null.as_bytes()),
            Err(Error::NotCanonical)
        ));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let text = String::from_utf8(sample().canonical_bytes()).unwrap();
        let unknown = text.replacen("}", r#","extra":1}"#, 1);
        let err = Manifest::parse_canonical(unknown.as_bytes()).unwrap_err();
        assert_eq!(err.code(), "malformed_manifest");
        assert!(err.to_string().contains("unknown field `extra`"), "{err}");

        let upper = text.replace("rpi4", "RPI4");
        let err = Manifest::parse_canonical(upper.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("invalid hardware"), "{err}");

        let big = vec![b' '; MAX_DOCUMENT_BYTES + 1];
        assert!(matches!(
            Manifest::parse_canonical(&big),
            Err(Error::DocumentTooLarge { .. })
        ));
    }

    #[test]
    fn field_rules() {
        let mut m = sample();
        m.expires_at = m.created_at;
        assert!(matches!(
            m.validate(),
            Err(Error::InvalidField {
                field: "expires_at",
                ..
            })
        ));
        let mut m = sample();
        m.security_floor = Some(Version::parse("2.0.0").unwrap());
        assert!(matches!(
            m.validate(),
            Err(Error::InvalidField {
                field: "security_floor",
                ..
            })
        ));
        let mut m = sample();
        m.hardware.push(HardwareId::parse("rpi4").unwrap());
        assert!(matches!(
            m.validate(),
            Err(Error::InvalidField {
                field: "hardware",
                ..
            })
        ));
        let mut m = sample();
        m.size = 0;
        assert!(matches!(
            m.validate(),
            Err(Error::InvalidField { field: "size", .. })
        ));
    }

    #[test]
    fn timestamps_are_strict_utc_seconds() {
        let t: Timestamp = "2026-11-27T07:40:00Z".parse().unwrap();
        assert_eq!(t.to_string(), "2026-11-27T07:40:00Z");
        assert!("2026-11-27T07:40:00.5Z".parse::<Timestamp>().is_err());
        assert!("2026-11-27 07:40:00".parse::<Timestamp>().is_err());
    }

    #[test]
    fn sha256_is_lowercase_hex() {
        let d = Sha256::of(b"x");
        assert_eq!(d.to_string().parse::<Sha256>().unwrap(), d);
        assert!(d.to_string().to_uppercase().parse::<Sha256>().is_err());
        assert!("abc".parse::<Sha256>().is_err());
    }
}
