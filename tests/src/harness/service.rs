//! The real `fleetwave serve` binary as a process: configured through `FLEETWAVE__…`
//! environment variables against the run's PostgreSQL database, S3 bucket and MQTT
//! namespace, one replica per process. A replica can be killed (SIGKILL) and started again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use super::bin;
use super::mqtt::TestMqtt;
use super::s3::TestBucket;

/// A service replica process.
pub struct ServiceProcess {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    env: BTreeMap<String, String>,
    dir: PathBuf,
    child: Option<Child>,
}

impl ServiceProcess {
    /// Starts replica `name` on `database_url`, `bucket` and `mqtt`, trusting the keys in
    /// `trusted_keys`, with its data directory under `dir`.
    pub fn start(
        name: &str,
        database_url: &str,
        bucket: &TestBucket,
        mqtt: &TestMqtt,
        trusted_keys: &Path,
        dir: &Path,
    ) -> Result<Self> {
        let data = dir.join(name);
        std::fs::create_dir_all(&data)?;
        let mut env = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            env.insert(format!("FLEETWAVE__{k}"), v);
        };
        set("DATA_DIR", data.display().to_string());
        set("SERVER__LISTEN", "127.0.0.1:0".into());
        set("DATABASE__URL", database_url.into());
        set("STORAGE__KIND", "s3".into());
        set("STORAGE__ENDPOINT", bucket.server.endpoint.clone());
        set("STORAGE__BUCKET", bucket.name.clone());
        set("STORAGE__REGION", bucket.server.region.clone());
        set("STORAGE__ACCESS_KEY_ID", bucket.server.access_key.clone());
        set(
            "STORAGE__SECRET_ACCESS_KEY",
            bucket.server.secret_key.clone(),
        );
        set("STORAGE__ALLOW_HTTP", "true".into());
        set("MQTT__URL", format!("mqtt://{}:{}", mqtt.host, mqtt.port));
        set("MQTT__PREFIX", mqtt.prefix.clone());
        set("MQTT__CLIENT_ID", mqtt.client_id(name));
        set("RELEASES__TRUSTED_KEYS", trusted_keys.display().to_string());
        set("ROLLOUTS__TICK_MS", "200".into());
        let mut replica = ServiceProcess {
            url: String::new(),
            env,
            dir: data,
            child: None,
        };
        replica.spawn()?;
        Ok(replica)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("service.log"))?;
        let out_path = self.dir.join("service.out");
        let out = std::fs::File::create(&out_path)?;
        let child = bin::command("fleetwave")
            .args(["--json", "serve"])
            .envs(&self.env)
            .env("RUST_LOG", "info,sqlx=warn,sea_orm=warn")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting fleetwave serve")?;
        self.child = Some(child);
        for _ in 0..300 {
            let text = std::fs::read_to_string(&out_path).unwrap_or_default();
            if let Some(line) = text.lines().next() {
                let banner: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("the first line of serve --json: {line}"))?;
                self.url = banner["url"]
                    .as_str()
                    .context("a URL in the banner")?
                    .to_owned();
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("fleetwave serve did not start within 15 s:\n{}", self.log())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// The bootstrap admin token, when this replica created it.
    pub fn admin_token(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("admin.token"))
            .ok()
            .map(|t| t.trim().to_owned())
    }

    /// Kills the process with SIGKILL: no shutdown of any kind.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again (same configuration; the address changes).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// The process's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("service.log")).unwrap_or_default()
    }

    /// Waits until `/v1/ready` answers 200.
    pub async fn ready(&self) -> Result<()> {
        for _ in 0..100 {
            if reqwest::get(format!("{}/v1/ready", self.url))
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("{} never became ready:\n{}", self.url, self.log())
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
