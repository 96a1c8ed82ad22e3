//! The real service, in process, on a port of its own: `TestApp::spawn(Backend::Postgres)`
//! runs `Application` against a fresh test database (or a fresh SQLite file), and gives the
//! test an HTTP client, the base URL and the bootstrap admin token.

use anyhow::{Context, Result};
use fleetwave::config::{Settings, StorageKind};
use fleetwave::registry::devices::{Report, record_reports};
use fleetwave::registry::entities::devices;
use fleetwave::startup::Application;
use fleetwave::storage::Storage;
use fleetwave_artifacts::PublicKey;
use reqwest::{Method, RequestBuilder, StatusCode};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait};
use serde_json::Value;

use super::init;
use super::mqtt::TestMqtt;
use super::postgres::TestDb;
use super::s3::TestBucket;

/// Which database the service runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The real PostgreSQL (a fresh database).
    Postgres,
    /// A SQLite file in a temporary directory (the embedded default).
    Sqlite,
}

/// How to start the service.
#[derive(Clone, Debug)]
pub struct Options {
    /// Its database.
    pub backend: Backend,
    /// Its object store: a bucket on the real S3 server, or (None) the local directory.
    pub s3: Option<TestBucket>,
    /// Trusted release keys (none: uploads are refused).
    pub trusted_keys: Vec<PublicKey>,
    /// Signatures required.
    pub threshold: usize,
    /// Download URL lifetime.
    pub url_expiry_secs: u64,
    /// The S3 endpoint download URLs are signed for (default: the one uploads use).
    pub s3_public_endpoint: Option<String>,
    /// A database URL to use instead of a fresh test database (the service migrates it).
    pub database_url: Option<String>,
    /// Run the rollout engine in the background (off: the test ticks `TestApp::engine`
    /// itself, with a clock of its own).
    pub engine: bool,
    /// The engine's tick.
    pub tick_ms: u64,
    /// Webhooks for events.
    pub webhooks: Vec<fleetwave::config::Webhook>,
    /// Another broker than the run's Mosquitto: its namespace, URL and the service's TLS
    /// files (for a TLS broker the test started).
    pub broker: Option<(TestMqtt, String, Option<fleetwave::mqtt::bridge::TlsFiles>)>,
}

impl Options {
    /// `backend` with the local object store, no trusted keys, one-hour URLs.
    pub fn new(backend: Backend) -> Self {
        Options {
            backend,
            s3: None,
            trusted_keys: Vec::new(),
            threshold: 1,
            url_expiry_secs: 3600,
            s3_public_endpoint: None,
            database_url: None,
            engine: false,
            tick_ms: 50,
            webhooks: Vec::new(),
            broker: None,
        }
    }
}

/// A running service for one test.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`
    pub base_url: String,
    /// The bootstrap admin token.
    pub admin_token: String,
    /// A connection to the service's database, for checks and tampering.
    pub db: DatabaseConnection,
    /// The database URL the service uses.
    pub database_url: String,
    /// HTTP client.
    pub http: reqwest::Client,
    /// The service's object store.
    pub storage: Storage,
    /// The test's MQTT namespace, which the service uses.
    pub mqtt: TestMqtt,
    /// The service's MQTT bridge, for publishing as the service does.
    pub bridge: fleetwave::mqtt::bridge::Bridge,
    /// A rollout engine over the service's database, broker and store (running in the
    /// background only when `Options::engine` said so).
    pub engine: fleetwave::rollouts::engine::Engine,
    s3_endpoint: Option<String>,
    _pg: Option<TestDb>,
    _dir: tempfile::TempDir,
    _server: tokio::task::JoinHandle<()>,
}

impl TestApp {
    /// Starts the service on `backend` with a fresh database and data directory.
    pub async fn spawn(backend: Backend) -> Result<Self> {
        Self::spawn_with(Options::new(backend)).await
    }

    /// Starts the service as `options` say.
    pub async fn spawn_with(options: Options) -> Result<Self> {
        init();
        let backend = options.backend;
        let dir = tempfile::tempdir()?;
        let (pg, database_url) = match backend {
            _ if options.database_url.is_some() => {
                (None, options.database_url.clone().unwrap_or_default())
            }
            Backend::Postgres => {
                let db = TestDb::new().await?;
                let url = db.url.clone();
                (Some(db), url)
            }
            Backend::Sqlite => {
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("fleetwave.db").display()
                );
                (None, url)
            }
        };
        let mut settings = Settings::load(None)?;
        settings.data_dir = dir.path().to_owned();
        settings.database.url = Some(database_url.clone().into());
        settings.server.listen = "127.0.0.1:0".parse()?;
        settings.storage.url_expiry_secs = options.url_expiry_secs;
        settings.rollouts.engine = options.engine;
        settings.rollouts.tick_ms = options.tick_ms;
        settings.events.webhooks = options.webhooks.clone();
        // The real broker of this run, in a namespace of this test's own.
        let (mqtt, url) = match &options.broker {
            Some((mqtt, url, tls)) => {
                if let Some(tls) = tls {
                    settings.mqtt.ca = Some(tls.ca.display().to_string());
                    settings.mqtt.cert = Some(tls.cert.display().to_string());
                    settings.mqtt.key = Some(tls.key.display().to_string());
                }
                (mqtt.clone(), url.clone())
            }
            None => {
                let mqtt = TestMqtt::new();
                let url = format!("mqtt://{}:{}", mqtt.host, mqtt.port);
                (mqtt, url)
            }
        };
        settings.mqtt.url = Some(url.into());
        settings.mqtt.prefix = mqtt.prefix.clone();
        settings.mqtt.client_id = mqtt.client_id("service");
        if let Some(bucket) = &options.s3 {
            settings.storage.kind = StorageKind::S3;
            settings.storage.endpoint = Some(bucket.server.endpoint.clone());
            settings.storage.bucket = Some(bucket.name.clone());
            settings.storage.region = bucket.server.region.clone();
            settings.storage.access_key_id = Some(bucket.server.access_key.clone());
            settings.storage.secret_access_key = Some(bucket.server.secret_key.clone().into());
            settings.storage.allow_http = true;
            settings.storage.public_endpoint = options.s3_public_endpoint.clone();
        }
        if !options.trusted_keys.is_empty() {
            let path = dir.path().join("trusted.pub");
            let lines: Vec<String> = options
                .trusted_keys
                .iter()
                .map(PublicKey::to_line)
                .collect();
            std::fs::write(&path, lines.join("\n"))?;
            settings.releases.trusted_keys = Some(path.display().to_string());
            settings.releases.threshold = options.threshold;
        }
        let app = Application::build(settings)
            .await
            .context("building the service")?;
        let admin_token = app
            .bootstrap_token()
            .context("a fresh database yields a bootstrap token")?
            .secret
            .clone();
        let base_url = app.base_url();
        anyhow::ensure!(
            app.mqtt()
                .wait_subscribed(std::time::Duration::from_secs(15))
                .await,
            "the service did not subscribe to device requests on the broker within 15 s"
        );
        let db = app.db().clone();
        let storage = app.storage().clone();
        let bridge = app.mqtt().clone();
        let engine = app.engine();
        let server = tokio::spawn(async move {
            let _ = app.run_until(std::future::pending()).await;
        });
        Ok(TestApp {
            base_url,
            admin_token,
            db,
            database_url,
            http: reqwest::Client::new(),
            storage,
            mqtt,
            bridge,
            engine,
            s3_endpoint: options.s3.as_ref().map(|b| b.server.endpoint.clone()),
            _pg: pg,
            _dir: dir,
            _server: server,
        })
    }

    /// A request to `path` (under the base URL) with `token`, if any.
    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        match token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
    }

    /// Registers device `id` (hardware `rpi4`) through the API, as admin.
    pub async fn register_device(&self, id: &str) {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/devices",
                Some(serde_json::json!({"id": id, "hardware": "rpi4"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "registering {id}: {body}");
    }

    /// Sends a JSON request as admin and returns the status and JSON body (Null when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_as(&self.admin_token, method, path, body).await
    }

    /// Sends a JSON request with `token`.
    pub async fn call_as(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.request(method, path, Some(token));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the service answers");
        let status = response.status();
        let bytes = response.bytes().await.expect("a body");
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, value)
    }

    /// The S3 endpoint the service uses (empty with the local store).
    pub fn storage_endpoint(&self) -> String {
        self.s3_endpoint.clone().unwrap_or_default()
    }

    /// How many objects the service's store holds.
    pub async fn object_count(&self) -> usize {
        use futures::TryStreamExt;
        let objects: Vec<_> = self
            .storage
            .store()
            .list(None)
            .try_collect()
            .await
            .expect("listing objects");
        objects.len()
    }

    /// Creates a token with `role` and returns its secret.
    pub async fn token(&self, role: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/tokens",
                Some(serde_json::json!({"name": role, "role": role})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["secret"].as_str().expect("a secret").to_owned()
    }
}

/// Records in the registry that registered device `id` runs `version`, seen now, as its
/// shadow's report of that firmware would (for fleets a test sets up without agents), and
/// checks that the device's row holds it (so, when it changed, the row was written and is
/// locked by `db`'s transaction).
pub async fn record_firmware(db: &impl ConnectionTrait, id: &str, version: &semver::Version) {
    let report = Report {
        id: id.to_owned(),
        firmware: Some(version.clone()),
    };
    record_reports(db, &[report], &[], true, fleetwave::db::now())
        .await
        .unwrap_or_else(|e| panic!("recording firmware {version} for {id}: {e}"));
    let row = devices::Entity::find_by_id(id.to_owned())
        .one(db)
        .await
        .unwrap_or_else(|e| panic!("reading device {id}: {e}"))
        .unwrap_or_else(|| panic!("device {id} is not registered"));
    assert_eq!(
        row.firmware_version.as_deref(),
        Some(version.to_string().as_str()),
        "firmware of {id}"
    );
}
