//! The agent's configuration: one TOML file, parsed strictly (unknown keys are refused), and
//! [`Config::check`] to validate everything it points at before the agent relies on it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetwave_artifacts::{DeviceId, HardwareId, TrustedKeys};
use serde::Deserialize;

/// The example configuration, every key documented.
pub const EXAMPLE: &str = include_str!("../agent.example.toml");

/// Everything the agent is configured with.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This device's id (topics, certificate CN).
    pub device_id: String,
    /// Its hardware id.
    pub hardware: String,
    /// Where state is kept.
    pub data_dir: PathBuf,
    /// The version this device was flashed with (afterwards the agent tracks each slot's
    /// version in its state).
    pub version: String,
    /// Static groups whose wave notices this device reads.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The MQTT broker.
    pub broker: Broker,
    /// Release keys.
    pub trust: Trust,
    /// Boot slots.
    pub slots: Slots,
    /// The health check of a trial boot.
    #[serde(default)]
    pub health: Health,
}

/// `[broker]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broker {
    /// `mqtts://host:port` (or `mqtt://` with `allow_plaintext`).
    pub url: String,
    /// Accept a plain-TCP broker URL.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Topic prefix.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// CA certificate (PEM).
    pub ca: Option<PathBuf>,
    /// Device certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Device key (PEM).
    pub key: Option<PathBuf>,
}

/// `[trust]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trust {
    /// Trusted keys file or directory.
    pub keys: PathBuf,
    /// Signatures required.
    #[serde(default = "one")]
    pub threshold: usize,
}

/// Which boot backend.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Raspberry Pi tryboot with autoboot.txt.
    Tryboot,
    /// Slot image files and a simulated bootloader.
    File,
    /// U-Boot environment (`fw_printenv` / `fw_setenv`).
    Uboot,
}

/// `[slots]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slots {
    /// The backend.
    pub backend: Backend,
    /// Slot A (device or file).
    pub a: PathBuf,
    /// Slot B.
    pub b: PathBuf,
    /// tryboot: the boot partition.
    pub boot_dir: Option<PathBuf>,
    /// tryboot: the device tree directory.
    pub device_tree_dir: Option<PathBuf>,
    /// The reboot command.
    #[serde(default)]
    pub reboot_command: Vec<String>,
    /// uboot: the command that prints environment variables.
    #[serde(default = "printenv")]
    pub printenv_command: Vec<String>,
    /// uboot: the command that sets one (`NAME VALUE`).
    #[serde(default = "setenv")]
    pub setenv_command: Vec<String>,
}

fn printenv() -> Vec<String> {
    vec!["fw_printenv".to_owned()]
}

fn setenv() -> Vec<String> {
    vec!["fw_setenv".to_owned()]
}

/// `[health]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// The check command; empty for the built-in check.
    #[serde(default)]
    pub command: Vec<String>,
    /// How long it may take.
    #[serde(default = "default_deadline", with = "humantime_serde_compat")]
    pub deadline: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            command: Vec::new(),
            deadline: default_deadline(),
        }
    }
}

fn default_prefix() -> String {
    "fleetwave".to_owned()
}

fn one() -> usize {
    1
}

fn default_deadline() -> Duration {
    Duration::from_secs(300)
}

/// `deadline = "5m"` through humantime.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::Deserialize;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Why a configuration is unusable; each problem names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("reading {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse into a configuration.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line.
        message: String,
    },
    /// Values that parse but cannot work.
    #[error("{}", problems.join("\n"))]
    Invalid {
        /// One line per problem.
        problems: Vec<String>,
    },
}

impl Config {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|message| Error::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks every value and every file the configuration points at, and returns all the
    /// problems at once.
    pub fn check(&self) -> Result<TrustedKeys, Error> {
        let mut problems = Vec::new();
        if let Err(e) = DeviceId::parse(&self.device_id) {
            problems.push(format!("device_id: {e}"));
        }
        if let Err(e) = HardwareId::parse(&self.hardware) {
            problems.push(format!("hardware: {e}"));
        }
        if let Err(e) = semver::Version::parse(&self.version) {
            problems.push(format!(
                "version: {:?} is not a semantic version: {e}",
                self.version
            ));
        }
        for (i, g) in self.groups.iter().enumerate() {
            if let Err(e) = fleetwave_artifacts::Product::parse(g) {
                problems.push(format!("groups[{i}]: {e}"));
            }
        }
        let tls = self.broker.url.starts_with("mqtts://");
        if !tls && !self.broker.url.starts_with("mqtt://") {
            problems.push(format!(
                "broker.url: {:?} must start with mqtts:// (or mqtt://)",
                self.broker.url
            ));
        }
        if !tls && !self.broker.allow_plaintext {
            problems.push(
                "broker.url: a plain mqtt:// broker needs broker.allow_plaintext = true".to_owned(),
            );
        }
        if tls {
            for (key, path) in [
                ("broker.ca", &self.broker.ca),
                ("broker.cert", &self.broker.cert),
                ("broker.key", &self.broker.key),
            ] {
                match path {
                    None => problems.push(format!("{key}: required for mqtts://")),
                    Some(p) if !p.is_file() => {
                        problems.push(format!("{key}: {} is not a readable file", p.display()))
                    }
                    Some(_) => {}
                }
            }
        }
        if let Err(e) = fleetwave_artifacts::protocol::topics::Topics::new(&self.broker.prefix) {
            problems.push(format!("broker.prefix: {e}"));
        }
        let keys = match TrustedKeys::load(&self.trust.keys) {
            Ok(k) if k.is_empty() => {
                problems.push(format!(
                    "trust.keys: no keys in {}",
                    self.trust.keys.display()
                ));
                None
            }
            Ok(k) => {
                if self.trust.threshold == 0 || self.trust.threshold > k.len() {
                    problems.push(format!(
                        "trust.threshold: {} is impossible with {} trusted key(s)",
                        self.trust.threshold,
                        k.len()
                    ));
                }
                Some(k)
            }
            Err(e) => {
                problems.push(format!("trust.keys: {}: {e}", self.trust.keys.display()));
                None
            }
        };
        if self.slots.a == self.slots.b {
            problems.push("slots: a and b are the same".to_owned());
        }
        match self.slots.backend {
            Backend::File => {
                for (key, path) in [("slots.a", &self.slots.a), ("slots.b", &self.slots.b)] {
                    if path
                        .parent()
                        .is_some_and(|d| !d.as_os_str().is_empty() && !d.is_dir())
                    {
                        problems.push(format!(
                            "{key}: the directory of {} does not exist",
                            path.display()
                        ));
                    }
                }
            }
            Backend::Tryboot | Backend::Uboot => {
                for (key, path) in [("slots.a", &self.slots.a), ("slots.b", &self.slots.b)] {
                    if !path.exists() {
                        problems.push(format!("{key}: {} does not exist", path.display()));
                    }
                }
                if self.slots.reboot_command.is_empty() {
                    problems.push("slots.reboot_command: required for this backend".to_owned());
                }
            }
        }
        if self.slots.backend == Backend::Tryboot {
            match &self.slots.boot_dir {
                Some(d) if d.is_dir() => {}
                Some(d) => problems.push(format!(
                    "slots.boot_dir: {} is not a directory",
                    d.display()
                )),
                None => problems.push("slots.boot_dir: required for tryboot".to_owned()),
            }
            if self.slots.device_tree_dir.is_none() {
                problems.push("slots.device_tree_dir: required for tryboot".to_owned());
            }
        }
        if let Some(program) = self.health.command.first() {
            let found = Path::new(program).is_file()
                || std::env::var_os("PATH").is_some_and(|paths| {
                    std::env::split_paths(&paths).any(|d| d.join(program).is_file())
                });
            if !found {
                problems.push(format!("health.command: {program:?} is not found"));
            }
        }
        if self.health.deadline.is_zero() {
            problems.push("health.deadline: must be longer than zero".to_owned());
        }
        match (problems.is_empty(), keys) {
            (true, Some(keys)) => Ok(keys),
            _ => Err(Error::Invalid { problems }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.slots.backend, Backend::Tryboot);
        assert_eq!(c.health.deadline, Duration::from_secs(300));
        assert!(
            Config::parse(&format!("{EXAMPLE}\nsurprise = 1"))
                .unwrap_err()
                .contains("surprise")
        );
    }
}
