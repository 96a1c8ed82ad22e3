//! The real `fleetwave-agent` binary on file-backed slots, supervised as systemd would: a
//! "reboot" (exit status 75) starts it again at once. Each agent gets its own directory with
//! its configuration, state, slot images and simulated bootloader.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use anyhow::{Context, Result};
use fleetwave_artifacts::PublicKey;
use tokio::process::Child;

use super::bin;
use super::mqtt::TestMqtt;

/// The exit status of a file-backend reboot.
pub const REBOOT_EXIT: i32 = 75;

/// How to set up an agent.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Device id (registered on the service by the test).
    pub id: String,
    /// Hardware id.
    pub hardware: String,
    /// The version in slot A at the start.
    pub version: String,
    /// Trusted release keys.
    pub keys: Vec<PublicKey>,
    /// Signatures required.
    pub threshold: usize,
    /// Static groups whose notices it reads.
    pub groups: Vec<String>,
    /// The health check command (empty: the built-in one).
    pub health: Vec<String>,
    /// Extra environment of the agent process (e.g. `SSL_CERT_FILE`).
    pub env: Vec<(String, String)>,
    /// Connect over mutual TLS instead of plain MQTT: the broker's `mqtts://` URL and the
    /// device's bundle from `fleetwave device provision`.
    pub tls: Option<(String, PathBuf)>,
}

impl AgentOptions {
    /// Device `id`, hardware rpi4, version 1.0.0, trusting `key`.
    pub fn new(id: &str, key: PublicKey) -> Self {
        AgentOptions {
            id: id.to_owned(),
            hardware: "rpi4".to_owned(),
            version: "1.0.0".to_owned(),
            keys: vec![key],
            threshold: 1,
            groups: Vec::new(),
            health: Vec::new(),
            env: Vec::new(),
            tls: None,
        }
    }
}

/// One agent's files and its supervisor.
pub struct TestAgent {
    /// Its directory: `agent.toml`, `data/`, `slots/a.img`, `slots/b.img`.
    pub dir: PathBuf,
    /// The contents of slot A at the start.
    pub original: Vec<u8>,
    stop: Arc<AtomicBool>,
    /// How many times the process was started.
    pub starts: Arc<AtomicU32>,
    env: Vec<(String, String)>,
    supervisor: Option<tokio::task::JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestAgent {
    /// Writes the configuration, a slot A holding a recognisable old image and an empty
    /// slot B, in a fresh temporary directory.
    pub fn new(mqtt: &TestMqtt, options: &AgentOptions) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let mut agent = Self::in_dir(tmp.path(), mqtt, options)?;
        agent._tmp = Some(tmp);
        Ok(agent)
    }

    /// As [`TestAgent::new`], in `dir`.
    pub fn in_dir(dir: &Path, mqtt: &TestMqtt, options: &AgentOptions) -> Result<Self> {
        std::fs::create_dir_all(dir.join("slots"))?;
        let keys: Vec<String> = options.keys.iter().map(PublicKey::to_line).collect();
        std::fs::write(dir.join("release.pub"), keys.join("\n"))?;
        let original: Vec<u8> = format!("old image of {}\n", options.id)
            .into_bytes()
            .into_iter()
            .cycle()
            .take(64 * 1024)
            .collect();
        std::fs::write(dir.join("slots/a.img"), &original)?;
        std::fs::write(dir.join("slots/b.img"), b"")?;
        let health = options
            .health
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let groups = options
            .groups
            .iter()
            .map(|g| format!("{g:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let broker = match &options.tls {
            Some((url, bundle)) => format!(
                "url = \"{url}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"",
                bundle.join("ca.pem").display(),
                bundle.join("device.pem").display(),
                bundle.join("device.key").display()
            ),
            None => format!(
                "url = \"mqtt://{}:{}\"\nallow_plaintext = true",
                mqtt.host, mqtt.port
            ),
        };
        let config = format!(
            r#"device_id = "{id}"
hardware = "{hardware}"
data_dir = "{data}"
version = "{version}"
groups = [{groups}]

[broker]
{broker}
prefix = "{prefix}"

[trust]
keys = "{keys}"
threshold = {threshold}

[slots]
backend = "file"
a = "{a}"
b = "{b}"

[health]
command = [{health}]
deadline = "20s"
"#,
            id = options.id,
            hardware = options.hardware,
            data = dir.join("data").display(),
            version = options.version,
            prefix = mqtt.prefix,
            keys = dir.join("release.pub").display(),
            threshold = options.threshold,
            a = dir.join("slots/a.img").display(),
            b = dir.join("slots/b.img").display(),
        );
        std::fs::write(dir.join("agent.toml"), config)?;
        Ok(TestAgent {
            dir: dir.to_owned(),
            original,
            stop: Arc::new(AtomicBool::new(false)),
            starts: Arc::new(AtomicU32::new(0)),
            env: options.env.clone(),
            supervisor: None,
            _tmp: None,
        })
    }

    fn command(&self, fault: Option<&str>) -> tokio::process::Command {
        let mut cmd = SpawnSpec {
            dir: self.dir.clone(),
            env: self.env.clone(),
        }
        .command();
        if let Some(f) = fault {
            cmd.env("FLEETWAVE_AGENT_FAULT", f);
        }
        cmd
    }

    /// Runs the agent once with a fault injected and waits for it to die of it (or to end).
    pub async fn run_with_fault(
        &self,
        fault: &str,
        timeout: std::time::Duration,
    ) -> Result<std::process::ExitStatus> {
        loop {
            let mut child = self
                .command(Some(fault))
                .spawn()
                .context("starting the agent")?;
            self.starts.fetch_add(1, Ordering::SeqCst);
            let status = tokio::time::timeout(timeout, child.wait())
                .await
                .with_context(|| {
                    format!(
                        "the agent did not reach the fault {fault} in time; log:\n{}",
                        self.log()
                    )
                })??;
            // A reboot before the fault point: the device comes up again, still faulty.
            if status.code() != Some(REBOOT_EXIT) {
                return Ok(status);
            }
        }
    }

    /// Starts the supervisor: the agent runs, and starts again whenever it "reboots".
    pub fn start(&mut self) {
        self.stop.store(false, Ordering::SeqCst);
        let stop = self.stop.clone();
        let starts = self.starts.clone();
        let agent = SpawnSpec {
            dir: self.dir.clone(),
            env: self.env.clone(),
        };
        self.supervisor = Some(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let Ok(mut child): std::io::Result<Child> = agent.command().spawn() else {
                    return;
                };
                starts.fetch_add(1, Ordering::SeqCst);
                let status = child.wait().await;
                match status.ok().and_then(|s| s.code()) {
                    Some(REBOOT_EXIT) => continue,
                    _ => {
                        // A crash: systemd restarts it after a moment.
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
            }
        }));
    }

    /// Stops the supervisor and kills the agent.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.supervisor.take() {
            s.abort();
        }
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// The agent's persisted state.
    pub fn state(&self) -> serde_json::Value {
        std::fs::read(self.dir.join("data/state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Waits up to 10 s for the persisted phase to be `phase` (e.g. `Idle` once the service
    /// confirmed the last report); returns the state it ended with.
    pub async fn settled(&self, phase: &str) -> serde_json::Value {
        for _ in 0..100 {
            let state = self.state();
            if state["phase"] == phase {
                return state;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        self.state()
    }

    /// The simulated bootloader: `{default, trial, booted, booted_trial}`.
    pub fn bootloader(&self) -> serde_json::Value {
        std::fs::read(self.dir.join("data/bootloader.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(
                || serde_json::json!({"default": "a", "booted": "a", "booted_trial": false}),
            )
    }

    /// The bytes of slot `name` (`a` or `b`).
    pub fn slot(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(format!("slots/{name}.img"))).unwrap_or_default()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

struct SpawnSpec {
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl SpawnSpec {
    fn command(&self) -> tokio::process::Command {
        let mut cmd: tokio::process::Command = bin::command("fleetwave-agent").into();
        cmd.args(["run", "--config"])
            .arg(self.dir.join("agent.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("agent.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .kill_on_drop(true)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}
