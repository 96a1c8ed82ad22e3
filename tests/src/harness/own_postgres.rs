//! A PostgreSQL server of the test's own, for tests that stop and restart the database
//! (stopping the machine's shared server would break every test running beside them). It is
//! created with the machine's `initdb` in a temporary directory, listens on a free port on
//! 127.0.0.1, and is stopped and deleted when dropped.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// A private PostgreSQL server.
pub struct OwnPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl OwnPostgres {
    /// Creates and starts the server.
    pub fn start() -> Result<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL's binaries are not in /usr/lib/postgresql")?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").is_file())
            .max()
            .context("no initdb under /usr/lib/postgresql/*/bin")?;
        let dir = tempfile::tempdir()?;
        let as_root = Command::new("id")
            .arg("-u")
            .output()?
            .stdout
            .starts_with(b"0");
        if as_root {
            // initdb refuses to run as root: the server runs as postgres.
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()))?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let server = OwnPostgres { dir, bin, port };
        let data = server.data();
        server.as_owner(
            &server.bin.join("initdb"),
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        )?;
        server.resume()?;
        Ok(server)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn as_owner(&self, program: &std::path::Path, args: &[&str]) -> Result<()> {
        let as_root = Command::new("id")
            .arg("-u")
            .output()?
            .stdout
            .starts_with(b"0");
        let mut cmd = if as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        run(cmd.args(args))
    }

    /// The admin URL.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (connections are cut).
    pub fn pause(&self) -> Result<()> {
        self.as_owner(
            &self.bin.join("pg_ctl"),
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        )
    }

    /// Starts it (again) and waits until it accepts connections.
    pub fn resume(&self) -> Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.as_owner(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        )
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self.pause();
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
