//! The service's settings: one typed struct, layered as embedded defaults
//! (`fleetwave.example.toml`) → an optional TOML file → `FLEETWAVE__SECTION__KEY` environment
//! variables, later layers winning. Secrets are `SecretString`s, redacted in `Debug`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The example configuration, which is also the source of every default.
pub const EXAMPLE: &str = include_str!("../fleetwave.example.toml");

/// Everything the service is configured with.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where embedded defaults keep their files.
    pub data_dir: PathBuf,
    /// The HTTP API.
    pub server: ServerSettings,
    /// The database.
    pub database: DatabaseSettings,
    /// Where firmware objects live.
    pub storage: StorageSettings,
    /// Device messaging.
    pub mqtt: MqttSettings,
    /// Which releases are accepted.
    pub releases: ReleaseSettings,
    /// The rollout engine.
    pub rollouts: RolloutSettings,
    /// Where events are sent.
    pub events: EventSettings,
}

/// `[rollouts]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSettings {
    /// Whether this replica advances rollouts.
    pub engine: bool,
    /// How often, in milliseconds, each running rollout is looked at.
    pub tick_ms: u64,
}

/// `[events]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSettings {
    /// Webhooks every event is POSTed to.
    pub webhooks: Vec<Webhook>,
}

/// One webhook.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// The URL events are POSTed to.
    pub url: String,
    /// The HMAC-SHA256 key of the signature header.
    pub secret: SecretString,
}

impl Webhook {
    /// The secret, for signing.
    pub fn secret_str(&self) -> &str {
        self.secret.expose_secret()
    }
}

/// `[mqtt]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSettings {
    /// External broker URL; empty runs the embedded broker.
    #[serde(deserialize_with = "empty_secret_as_none")]
    pub url: Option<SecretString>,
    /// Embedded broker address.
    pub listen: SocketAddr,
    /// Topic prefix.
    pub prefix: String,
    /// The service's client id (one per replica).
    pub client_id: String,
    /// mqtts: the CA of the broker's certificate (PEM).
    #[serde(deserialize_with = "empty_as_none")]
    pub ca: Option<String>,
    /// mqtts: the service's client certificate (PEM).
    #[serde(deserialize_with = "empty_as_none")]
    pub cert: Option<String>,
    /// mqtts: its key (PEM).
    #[serde(deserialize_with = "empty_as_none")]
    pub key: Option<String>,
}

impl MqttSettings {
    /// The TLS files, when all three are set.
    pub fn tls(&self) -> Option<crate::mqtt::bridge::TlsFiles> {
        match (&self.ca, &self.cert, &self.key) {
            (Some(ca), Some(cert), Some(key)) => Some(crate::mqtt::bridge::TlsFiles {
                ca: ca.into(),
                cert: cert.into(),
                key: key.into(),
            }),
            _ => None,
        }
    }
}

/// `[server]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Listen address; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Base URL clients reach the service at; empty derives it from the bound address.
    #[serde(deserialize_with = "empty_as_none")]
    pub public_url: Option<String>,
    /// Largest JSON body accepted.
    pub max_body_bytes: usize,
}

/// `[database]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Connection URL (it may carry a password); empty: SQLite in `data_dir`.
    #[serde(deserialize_with = "empty_secret_as_none")]
    pub url: Option<SecretString>,
    /// Pool size.
    pub max_connections: u32,
}

/// `[storage] kind`
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// A local directory, downloads served by the service.
    Local,
    /// An S3-compatible store, downloads presigned.
    S3,
}

/// `[storage]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    /// Which backend.
    pub kind: StorageKind,
    /// local: the directory.
    #[serde(deserialize_with = "empty_as_none")]
    pub path: Option<String>,
    /// s3: the endpoint uploads go through.
    #[serde(deserialize_with = "empty_as_none")]
    pub endpoint: Option<String>,
    /// s3: the endpoint presigned URLs are signed for.
    #[serde(deserialize_with = "empty_as_none")]
    pub public_endpoint: Option<String>,
    /// s3: bucket.
    #[serde(deserialize_with = "empty_as_none")]
    pub bucket: Option<String>,
    /// s3: region.
    pub region: String,
    /// s3: access key id.
    #[serde(deserialize_with = "empty_as_none")]
    pub access_key_id: Option<String>,
    /// s3: secret access key.
    #[serde(deserialize_with = "empty_secret_as_none")]
    pub secret_access_key: Option<SecretString>,
    /// s3: allow http endpoints.
    pub allow_http: bool,
    /// Download URL lifetime in seconds.
    pub url_expiry_secs: u64,
    /// local: HMAC key for download URLs.
    #[serde(deserialize_with = "empty_secret_as_none")]
    pub url_signing_key: Option<SecretString>,
}

/// `[releases]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSettings {
    /// Trusted release keys (file or directory).
    #[serde(deserialize_with = "empty_as_none")]
    pub trusted_keys: Option<String>,
    /// Distinct trusted signatures required.
    pub threshold: usize,
}

impl Settings {
    /// Loads the defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(EXAMPLE, config::FileFormat::Toml));
        if let Some(path) = file {
            if !path.is_file() {
                bail!("configuration file {} does not exist", path.display());
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        builder
            .add_source(
                config::Environment::with_prefix("FLEETWAVE")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .and_then(config::Config::try_deserialize)
            .with_context(|| match file {
                Some(p) => format!(
                    "loading configuration from {} and the environment",
                    p.display()
                ),
                None => "loading configuration from the environment".to_owned(),
            })
    }

    /// The database URL: the configured one, or the embedded SQLite file.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.expose_secret().to_owned(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("fleetwave.db").display()
            ),
        }
    }
}

fn empty_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    Ok(s.filter(|s| !s.is_empty()))
}

fn empty_secret_as_none<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SecretString>, D::Error> {
    Ok(empty_as_none(d)?.map(SecretString::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_secrets_are_redacted() {
        let s = Settings::load(None).unwrap();
        assert_eq!(s.storage.kind, StorageKind::Local);
        assert!(s.database_url().starts_with("sqlite://"));
        let mut with_secret = s.clone();
        with_secret.storage.secret_access_key = Some(SecretString::from("hunter2"));
        assert!(!format!("{with_secret:?}").contains("hunter2"));
    }
}
