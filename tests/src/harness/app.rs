//! The real service, in process, on a port of its own: `TestApp::spawn(Backend::Postgres)`
//! runs `Application` against a fresh test database (or a fresh SQLite file), and gives the
//! test an HTTP client, the base URL and the bootstrap admin token.

use anyhow::{Context, Result};
use fleetwave::config::Settings;
use fleetwave::startup::Application;
use reqwest::{Method, RequestBuilder, StatusCode};
use sea_orm::DatabaseConnection;
use serde_json::Value;

use super::init;
use super::postgres::TestDb;

/// Which database the service runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The real PostgreSQL (a fresh database).
    Postgres,
    /// A SQLite file in a temporary directory (the embedded default).
    Sqlite,
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
    _pg: Option<TestDb>,
    _dir: tempfile::TempDir,
    _server: tokio::task::JoinHandle<()>,
}

impl TestApp {
    /// Starts the service on `backend` with a fresh database and data directory.
    pub async fn spawn(backend: Backend) -> Result<Self> {
        init();
        let dir = tempfile::tempdir()?;
        let (pg, database_url) = match backend {
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
        let app = Application::build(settings)
            .await
            .context("building the service")?;
        let admin_token = app
            .bootstrap_token()
            .context("a fresh database yields a bootstrap token")?
            .secret
            .clone();
        let base_url = app.base_url();
        let db = app.db().clone();
        let server = tokio::spawn(async move {
            let _ = app.run_until(std::future::pending()).await;
        });
        Ok(TestApp {
            base_url,
            admin_token,
            db,
            database_url,
            http: reqwest::Client::new(),
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
