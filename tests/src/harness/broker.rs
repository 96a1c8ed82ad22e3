//! Mosquittos of a test's own on free ports: [`TlsBroker`], configured by `fleetwave broker
//! config` (mutual TLS with a fleetwave CA made by `fleetwave ca init`, identity = certificate
//! CN, the CRL and the per-device ACL; devices get their bundles from `fleetwave device
//! provision`), and [`PlainBroker`], a plain listener with the same message limits
//! ([`fleetwave::pki::BROKER_LIMITS`]), for benchmarks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::bin;

/// The broker process and the directory holding the CA, its configuration and bundles.
pub struct TlsBroker {
    /// The TLS listener's port on 127.0.0.1.
    pub port: u16,
    /// Topic prefix the ACL is written for.
    pub prefix: String,
    tmp: tempfile::TempDir,
    child: tokio::process::Child,
}

/// Runs the `fleetwave` binary in `dir`; fails with its stderr.
pub fn fleetwave(dir: &Path, args: &[&str]) -> Result<()> {
    let out = bin::command("fleetwave")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running fleetwave")?;
    if !out.status.success() {
        bail!(
            "fleetwave {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl TlsBroker {
    /// A CA in `pki/`, the broker's files in `broker/`, Mosquitto listening.
    pub async fn start(prefix: &str) -> Result<TlsBroker> {
        let tmp = tempfile::tempdir()?;
        let d = tmp.path();
        fleetwave(d, &["ca", "init", "--dir", "pki"])?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        fleetwave(
            d,
            &[
                "broker",
                "config",
                "--pki",
                "pki",
                "--out",
                "broker",
                "--port",
                &port.to_string(),
                "--host",
                "127.0.0.1",
                "--prefix",
                prefix,
            ],
        )?;
        let child = start_mosquitto(&d.join("broker/mosquitto.conf"), port).await?;
        Ok(TlsBroker {
            port,
            prefix: prefix.to_owned(),
            tmp,
            child,
        })
    }

    /// The directory with `pki/` and `broker/`.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// `mqtts://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    /// The CA certificate devices and the service trust.
    pub fn ca(&self) -> PathBuf {
        self.dir().join("broker/ca.pem")
    }

    /// The service's privileged identity.
    pub fn service_tls(&self) -> fleetwave::mqtt::bridge::TlsFiles {
        fleetwave::mqtt::bridge::TlsFiles {
            ca: self.ca(),
            cert: self.dir().join("broker/service.pem"),
            key: self.dir().join("broker/service.key"),
        }
    }

    /// Issues device `id` a bundle (`device.pem`, `device.key`, `ca.pem`); returns its folder.
    pub fn provision(&self, id: &str) -> Result<PathBuf> {
        fleetwave(
            self.dir(),
            &["device", "provision", id, "--pki", "pki", "--out", id],
        )?;
        Ok(self.dir().join(id))
    }

    /// Revokes `id`'s certificate, copies the new CRL to the broker and restarts it, as the
    /// README tells an operator to.
    pub async fn revoke(&mut self, id: &str) -> Result<()> {
        fleetwave(self.dir(), &["device", "revoke", id, "--pki", "pki"])?;
        std::fs::copy(
            self.dir().join("pki/crl.pem"),
            self.dir().join("broker/crl.pem"),
        )?;
        self.child.kill().await?;
        self.child = start_mosquitto(&self.dir().join("broker/mosquitto.conf"), self.port).await?;
        Ok(())
    }
}

/// A plain MQTT listener on 127.0.0.1 with fleetwave's message limits.
pub struct PlainBroker {
    /// Its port.
    pub port: u16,
    _tmp: tempfile::TempDir,
    child: tokio::process::Child,
}

impl PlainBroker {
    /// Starts it on a free port.
    pub async fn start() -> Result<PlainBroker> {
        let tmp = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        std::fs::create_dir(tmp.path().join("broker"))?;
        let conf = tmp.path().join("broker/mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n{}",
                fleetwave::pki::BROKER_LIMITS
            ),
        )?;
        let child = start_mosquitto(&conf, port).await?;
        Ok(PlainBroker {
            port,
            _tmp: tmp,
            child,
        })
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

impl PlainBroker {
    /// Options for a service (in process, on `backend`) whose bridge and test clients use
    /// this broker, in a fresh topic namespace.
    pub fn service_options(&self, backend: super::app::Backend) -> super::app::Options {
        let mut mqtt = super::mqtt::TestMqtt::new();
        mqtt.port = self.port;
        let mut options = super::app::Options::new(backend);
        options.broker = Some((mqtt, format!("mqtt://127.0.0.1:{}", self.port), None));
        options
    }
}

/// Starts Mosquitto on `port` with the configuration file `conf`; waits until it listens.
async fn start_mosquitto(conf: &Path, port: u16) -> Result<tokio::process::Child> {
    // Mosquitto started as root reads its files as the `mosquitto` user: the configuration's
    // directory (`<temporary directory>/broker`), its parent and every file in it.
    use std::os::unix::fs::PermissionsExt;
    let dir = conf.parent().context("a configuration directory")?;
    for path in [dir, dir.parent().context("a parent")?] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    }
    for f in std::fs::read_dir(dir)? {
        std::fs::set_permissions(f?.path(), std::fs::Permissions::from_mode(0o644))?;
    }
    let child = tokio::process::Command::new("mosquitto")
        .arg("-c")
        .arg(conf)
        .kill_on_drop(true)
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("mosquitto (installed by scripts/services.sh)")?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(child);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("mosquitto did not listen on {port}")
}
