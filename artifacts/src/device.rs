//! Device identity as it travels: the device id is the thing name in every MQTT topic and
//! the CN of the device's certificate, so it is restricted to characters that are safe in
//! topics, URLs and file names.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A device id: 1 to 128 characters of `A-Z a-z 0-9 . _ : -`, starting with a letter or digit.
/// Never contains MQTT wildcards (`+`, `#`) or a topic separator (`/`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

impl DeviceId {
    /// Validates `s` as a device id.
    pub fn parse(s: &str) -> Result<Self, Error> {
        check(s).map_err(|reason| Error::InvalidField {
            field: "device id",
            reason,
        })?;
        Ok(DeviceId(s.to_owned()))
    }

    /// The id as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check(s: &str) -> Result<(), String> {
    let first_ok = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if s.len() > 128 || !first_ok || !rest_ok {
        return Err(format!(
            "{s:?} must be 1 to 128 characters of A-Z a-z 0-9 . _ : - starting with a letter or digit"
        ));
    }
    Ok(())
}

impl TryFrom<String> for DeviceId {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        check(&s)?;
        Ok(DeviceId(s))
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> String {
        id.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::DeviceId;

    #[test]
    fn topic_safe_ids_only() {
        for ok in ["pi-0001", "A1", "site:sg-1.pi_7"] {
            DeviceId::parse(ok).unwrap();
        }
        for bad in ["", "-x", "a/b", "a+b", "a#", "a b", &"x".repeat(129)] {
            assert!(DeviceId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
