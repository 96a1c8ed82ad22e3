//! Wiring: `Application::build` connects the database, applies migrations, makes sure an
//! admin token exists, binds the listener and builds the router. It exposes the bound port,
//! so tests can ask for port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::auth::{self, NewToken};
use crate::config::Settings;
use crate::db;
use crate::mqtt::bridge::Bridge;
use crate::releases::Trust;
use crate::rollouts::engine::Engine;
use crate::storage::Storage;

/// A service ready to serve.
pub struct Application {
    listener: TcpListener,
    mqtt_url: String,
    state: AppState,
    bootstrap_token: Option<NewToken>,
}

impl Application {
    /// Connects, migrates, bootstraps and binds, per `settings`.
    pub async fn build(settings: Settings) -> Result<Self> {
        let db = db::connect(&settings.database_url(), settings.database.max_connections).await?;
        db::migrate(&db).await?;
        let bootstrap_token = auth::bootstrap_admin(&db)
            .await
            .context("creating the bootstrap admin token")?;
        let listener = TcpListener::bind(settings.server.listen)
            .await
            .with_context(|| format!("binding {}", settings.server.listen))?;
        let mqtt_url = match &settings.mqtt.url {
            Some(url) => secrecy::ExposeSecret::expose_secret(url).to_owned(),
            None => format!(
                "mqtt://{}",
                crate::mqtt::broker::start(settings.mqtt.listen)?
            ),
        };
        let topics = fleetwave_artifacts::protocol::topics::Topics::new(&settings.mqtt.prefix)
            .context("[mqtt] prefix")?;
        let trust = load_trust(&settings)?;
        let local_addr = listener.local_addr()?;
        let base_url = settings
            .server
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{local_addr}"));
        let storage = Storage::from_settings(&settings, &base_url)?;
        let tls = settings.mqtt.tls();
        let mqtt = Bridge::start(
            &mqtt_url,
            &settings.mqtt.client_id,
            tls.as_ref(),
            topics,
            db.clone(),
            storage.clone(),
        )?;
        let state = AppState {
            db,
            settings: Arc::new(settings),
            storage,
            trust: trust.map(Arc::new),
            mqtt,
        };
        Ok(Application {
            listener,
            mqtt_url,
            state,
            bootstrap_token,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// The base URL clients use: the configured public URL, else the bound address.
    pub fn base_url(&self) -> String {
        self.state
            .settings
            .server
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.local_addr()))
    }

    /// The MQTT broker devices connect to (the embedded one's address, when it runs).
    pub fn mqtt_url(&self) -> &str {
        &self.mqtt_url
    }

    /// The admin token created at this start, when the database had none.
    pub fn bootstrap_token(&self) -> Option<&NewToken> {
        self.bootstrap_token.as_ref()
    }

    /// The object store.
    pub fn storage(&self) -> &Storage {
        &self.state.storage
    }

    /// The MQTT bridge.
    pub fn mqtt(&self) -> &Bridge {
        &self.state.mqtt
    }

    /// The database pool.
    pub fn db(&self) -> &DatabaseConnection {
        &self.state.db
    }

    /// The rollout engine over this service's database, broker and store.
    pub fn engine(&self) -> Engine {
        Engine::new(
            self.state.db.clone(),
            self.state.mqtt.clone(),
            self.state.storage.clone(),
            std::time::Duration::from_millis(self.state.settings.rollouts.tick_ms),
        )
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let settings = &self.state.settings;
        let mut background = Vec::new();
        if settings.rollouts.engine {
            background.push(tokio::spawn(self.engine().run()));
        }
        background.push(tokio::spawn(crate::events::deliver_forever(
            self.state.db.clone(),
            settings.events.webhooks.clone(),
            std::time::Duration::from_secs(1),
        )));
        let _stop = AbortOnDrop(background);
        axum::serve(self.listener, api::router(self.state))
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving HTTP")
    }
}

/// The trusted release keys from `releases.trusted_keys`, checked against the threshold.
fn load_trust(settings: &Settings) -> Result<Option<Trust>> {
    let Some(path) = &settings.releases.trusted_keys else {
        tracing::warn!("releases.trusted_keys is not set: release uploads will be refused");
        return Ok(None);
    };
    let keys = fleetwave_artifacts::TrustedKeys::load(std::path::Path::new(path))
        .with_context(|| format!("loading trusted release keys from {path}"))?;
    let threshold = settings.releases.threshold;
    if threshold == 0 || threshold > keys.len() {
        anyhow::bail!(
            "releases.threshold = {threshold} is impossible with {} trusted key(s) in {path}",
            keys.len()
        );
    }
    Ok(Some(Trust { keys, threshold }))
}

/// Stops the background tasks when serving ends.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
