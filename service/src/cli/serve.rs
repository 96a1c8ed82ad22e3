//! `fleetwave serve` and `fleetwave migrate`: run the service, or only apply migrations.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::Output;
use crate::config::Settings;
use crate::startup::Application;
use crate::{db, telemetry};

/// Where the configuration comes from.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// A TOML configuration file (see `fleetwave config example`); without one, the embedded
    /// defaults and FLEETWAVE__SECTION__KEY environment variables apply.
    #[arg(long, env = "FLEETWAVE_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ConfigArgs {
    /// Loads the settings.
    pub fn load(&self) -> Result<Settings> {
        Settings::load(self.config.as_deref())
    }
}

/// Runs the service until Ctrl-C or SIGTERM.
pub async fn serve(args: ConfigArgs, out: Output) -> Result<()> {
    telemetry::init_service();
    let settings = args.load()?;
    let data_dir = settings.data_dir.clone();
    let app = Application::build(settings).await?;
    let url = app.base_url();
    let mqtt = db::redact(app.mqtt_url());
    let mut banner = serde_json::json!({"event": "serving", "url": url, "mqtt": mqtt});
    if out.json {
        println!("{banner}");
    } else {
        println!(
            "fleetwave serving on {url}  (API under {url}/v1, OpenAPI at {url}/v1/openapi.json)"
        );
        println!("devices connect to MQTT at {mqtt}");
    }
    if let Some(token) = app.bootstrap_token() {
        let saved = save_token(&data_dir, &token.secret);
        banner = serde_json::json!({"event": "bootstrap_token", "token": token.secret, "saved": saved.as_ref().ok()});
        if out.json {
            println!("{banner}");
        } else {
            println!("bootstrap admin token (shown once): {}", token.secret);
            match &saved {
                Ok(path) => println!("  saved to {} (mode 0600)", path.display()),
                Err(e) => println!("  not saved: {e:#}"),
            }
        }
    }
    app.run_until(shutdown_signal()).await
}

/// Applies pending migrations and exits.
pub async fn migrate(args: ConfigArgs, out: Output) -> Result<()> {
    let settings = args.load()?;
    let url = settings.database_url();
    let conn = db::connect(&url, 1).await?;
    db::migrate(&conn).await?;
    out.emit(
        format_args!("migrations applied to {}", db::redact(&url)),
        &serde_json::json!({"ok": true}),
    );
    Ok(())
}

fn save_token(data_dir: &Path, secret: &str) -> Result<PathBuf> {
    use std::io::Write;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join("admin.token");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{secret}")?;
    file.sync_all()?;
    Ok(path)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
