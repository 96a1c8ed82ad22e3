//! `fleetwave demo`: the whole product on one machine with nothing installed but Rust. It
//! starts the service on its embedded defaults (SQLite, a local object store, the in-process
//! broker) in a scratch directory, N agents on file-backed slots in the same process,
//! generates a release key, signs and uploads two releases (and shows a tampered one
//! refused), then rolls 2.0.0 out in three waves with a live bar per wave. With
//! `--fail-rate`, some devices fail their health check on the trial boot, roll back, and the
//! rollout halts itself. It ends with the per-device table and the audit-chain check.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fleetwave_agent::config::{Backend, Broker, Config as AgentConfig, Health, Slots, Trust};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use super::client::{Client, ServerArgs};
use super::{Output, error_code, key, release};
use crate::config::Settings;
use crate::registry::entities::{devices, job_executions};
use crate::startup::Application;

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many devices (agents) to run.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=500))]
    pub devices: u16,
    /// The share of devices (0 to 1) whose health check fails on the new image.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Size of the generated images in MiB.
    #[arg(long, default_value_t = 4)]
    pub image_mib: u64,
    /// Work in this directory instead of a fresh temporary one (kept afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Runs the demo; fails if the product does not behave as it must.
pub fn run(args: Args, out: Output) -> Result<()> {
    if !(0.0..=1.0).contains(&args.fail_rate) {
        bail!(
            "--fail-rate must be between 0 and 1, not {}",
            args.fail_rate
        );
    }
    let scratch;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            scratch = std::env::temp_dir().join(format!("fleetwave-demo-{}", std::process::id()));
            std::fs::create_dir_all(&scratch)?;
            scratch.clone()
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(demo(&args, &dir, out));
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// Whether device `i` of `n` fails its health check: an even spread of `rate`.
fn failing(i: usize, n: usize, rate: f64) -> bool {
    let want = (rate * n as f64).round() as usize;
    want > 0 && (i * want) / n != ((i + 1) * want) / n
}

async fn demo(args: &Args, dir: &Path, out: Output) -> Result<()> {
    let say = |line: String| {
        if !out.json {
            println!("{line}");
        }
    };
    let started = Instant::now();
    let n = usize::from(args.devices);

    // The service on its embedded defaults, in the scratch directory.
    let (secret, public) = key::generate(&dir.join("release"))?;
    let mut settings = Settings::load(None)?;
    settings.data_dir = dir.join("service");
    settings.server.listen = "127.0.0.1:0".parse()?;
    settings.mqtt.listen = "127.0.0.1:0".parse()?;
    settings.releases.trusted_keys = Some(public.display().to_string());
    settings.rollouts.tick_ms = 200;
    let app = Application::build(settings)
        .await
        .context("starting the service")?;
    let token = app
        .bootstrap_token()
        .context("a fresh database yields a bootstrap token")?
        .secret
        .clone();
    let base_url = app.base_url();
    let broker = app.mqtt_url().to_owned();
    let db = app.db().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    say(format!(
        "1. service on {base_url} (SQLite, local object store, embedded MQTT broker {broker}), data in {}",
        dir.display()
    ));
    let client = Client::new(&ServerArgs {
        server: base_url.clone(),
        token: Some(token),
        token_file: PathBuf::new(),
    })?;

    // Two signed releases; a tampered upload is refused.
    let quiet = Output { json: true };
    let mut release_ids = Vec::new();
    for (version, seed) in [("1.0.0", 1u64), ("2.0.0", 2)] {
        let image = dir.join(format!("gateway-os-{version}.img"));
        write_seeded_image(&image, args.image_mib << 20, seed)?;
        let manifest = dir.join(format!("gateway-os-{version}.manifest.json"));
        release::sign(
            &release::SignArgs {
                image: image.clone(),
                product: "gateway-os".to_owned(),
                version: version.parse()?,
                hardware: vec!["rpi4".to_owned()],
                keys: vec![secret.clone()],
                expires: Duration::from_secs(90 * 86_400),
                security_floor: None,
                min_version: None,
                delta_base: None,
                out: manifest.clone(),
            },
            quiet,
        )?;
        if version == "2.0.0" {
            let tampered = dir.join("tampered.img");
            std::fs::copy(&image, &tampered)?;
            flip_byte(&tampered, (args.image_mib << 20) / 2)?;
            let refused = release::upload(&client, &tampered, &manifest, quiet).await;
            match refused {
                Ok(_) => bail!("the service accepted a tampered image"),
                Err(e) => say(format!(
                    "   2.0.0 with one image byte flipped is refused ({}), nothing stored",
                    error_code(&e)
                )),
            }
        }
        let uploaded = release::upload(&client, &image, &manifest, quiet).await?;
        release_ids.push(uploaded["id"].as_str().unwrap_or_default().to_owned());
    }
    say(format!(
        "2. generated release key {}, signed and uploaded gateway-os 1.0.0 and 2.0.0 ({} MiB each)",
        secret.display(),
        args.image_mib
    ));

    // The fleet: registered, grouped, and an agent per device on file-backed slots.
    let ids: Vec<String> = (0..n).map(|i| format!("pi-{i:03}")).collect();
    for id in &ids {
        client
            .json(
                reqwest::Method::POST,
                "/v1/devices",
                &json!({"id": id, "hardware": "rpi4"}),
            )
            .await?;
    }
    client
        .json(
            reqwest::Method::POST,
            "/v1/groups",
            &json!({"name": "demo-fleet"}),
        )
        .await?;
    client
        .json(
            reqwest::Method::POST,
            "/v1/groups/demo-fleet/members",
            &json!({"devices": ids}),
        )
        .await?;
    let mut agents = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let sick = failing(i, n, args.fail_rate);
        agents.push(tokio::spawn(agent(agent_config(
            dir, id, &broker, &public, sick,
        )?)));
    }
    wait_for_fleet(&db, n).await?;
    let sick = (0..n).filter(|i| failing(*i, n, args.fail_rate)).count();
    say(format!(
        "3. {n} devices registered in group demo-fleet, each running an agent on 1.0.0 ({sick} with a failing health check on the new image)"
    ));

    // The rollout, watched live.
    let rollout = client
        .json(
            reqwest::Method::POST,
            "/v1/rollouts",
            &json!({
                "name": "gateway-os 2.0.0 to demo-fleet",
                "release": release_ids[1],
                "target": {"group": "demo-fleet"},
                "waves": [
                    {"size": {"percent": 10}, "soak_secs": 2, "halt": [{"on": "ANY", "count": 1}]},
                    {"size": {"percent": 50}, "soak_secs": 2, "halt": [{"on": "ANY", "rate_percent": 10}]},
                    {"size": {"percent": 100}, "halt": [{"on": "ANY", "rate_percent": 10}]},
                ],
                "in_progress_timeout_secs": 120,
            }),
        )
        .await?;
    let rollout_id = rollout["id"].as_str().unwrap_or_default().to_owned();
    say(format!(
        "4. rollout {rollout_id}: 10 % canary, 50 %, 100 %; each wave halts on failures"
    ));
    let watched = super::rollout::follow(
        &client,
        &format!("/v1/rollouts/{rollout_id}"),
        Duration::from_millis(300),
        Output { json: false },
    )
    .await;
    let status = client.get(&format!("/v1/rollouts/{rollout_id}")).await?;
    let state = status["state"].as_str().unwrap_or_default().to_owned();
    match (&watched, args.fail_rate > 0.0) {
        (Ok(()), _) => say("5. the rollout completed".to_owned()),
        (Err(e), true) => say(format!(
            "5. the rollout halted itself, as it should with failing devices: {e:#}"
        )),
        (Err(e), false) => bail!("the rollout did not complete: {e:#}"),
    }

    // Let in-flight devices finish, then the table.
    settle(&db, status["job"].as_str().unwrap_or_default()).await;
    let table = device_table(&db, status["job"].as_str().unwrap_or_default(), &ids).await?;
    say(table.text);
    let report = crate::audit::verify(&db).await?;
    let chain_ok = report.broken.is_none();
    say(format!(
        "6. audit chain: {} links, {} (head {})",
        report.links,
        if chain_ok { "intact" } else { "BROKEN" },
        report.head.as_deref().unwrap_or("none")
    ));
    for a in &agents {
        a.abort();
    }
    let _ = stop.send(());
    let _ = server.await;
    let secs = started.elapsed().as_secs_f64();
    say(format!("done in {secs:.1} s"));
    if out.json {
        println!(
            "{}",
            json!({"ok": chain_ok, "rollout": rollout_id, "state": state, "devices": table.rows, "audit_links": report.links, "seconds": secs})
        );
    }
    if !chain_ok {
        bail!("the audit chain does not verify");
    }
    if args.fail_rate == 0.0 && state != "COMPLETED" {
        bail!("the rollout ended {state}");
    }
    Ok(())
}

fn agent_config(
    dir: &Path,
    id: &str,
    broker: &str,
    keys: &Path,
    sick: bool,
) -> Result<AgentConfig> {
    let home = dir.join("agents").join(id);
    std::fs::create_dir_all(home.join("slots"))?;
    // Slot A holds the factory image.
    std::fs::write(home.join("slots/a.img"), format!("factory image of {id}"))?;
    let config = AgentConfig {
        device_id: id.to_owned(),
        hardware: "rpi4".to_owned(),
        data_dir: home.join("data"),
        version: "1.0.0".to_owned(),
        groups: vec!["demo-fleet".to_owned()],
        broker: Broker {
            url: broker.to_owned(),
            allow_plaintext: true,
            prefix: "fleetwave".to_owned(),
            ca: None,
            cert: None,
            key: None,
        },
        trust: Trust {
            keys: keys.to_owned(),
            threshold: 1,
        },
        slots: Slots {
            backend: Backend::File,
            a: home.join("slots/a.img"),
            b: home.join("slots/b.img"),
            boot_dir: None,
            device_tree_dir: None,
            reboot_command: Vec::new(),
            printenv_command: Vec::new(),
            setenv_command: Vec::new(),
        },
        health: Health {
            command: if sick {
                vec![
                    "sh".into(),
                    "-c".into(),
                    "echo the new image lost its network >&2; exit 1".into(),
                ]
            } else {
                Vec::new()
            },
            deadline: Duration::from_secs(20),
        },
    };
    Ok(config)
}

/// One device: the agent, started again after each (simulated) reboot.
async fn agent(config: AgentConfig) {
    let keys = match config.check() {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(device = %config.device_id, error = %e, "demo agent configuration");
            return;
        }
    };
    loop {
        match fleetwave_agent::run::run(config.clone(), keys.clone()).await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(device = %config.device_id, error = ?e, "demo agent stopped; restarting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn wait_for_fleet(db: &sea_orm::DatabaseConnection, n: usize) -> Result<()> {
    for _ in 0..300 {
        let reported = devices::Entity::find()
            .filter(devices::Column::FirmwareVersion.is_not_null())
            .all(db)
            .await?
            .len();
        if reported >= n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the agents did not all report their firmware within 30 s")
}

/// Waits (up to 30 s) until no execution of `job` is in progress.
async fn settle(db: &sea_orm::DatabaseConnection, job: &str) {
    for _ in 0..300 {
        let busy = job_executions::Entity::find()
            .filter(job_executions::Column::JobId.eq(job))
            .filter(job_executions::Column::State.eq("IN_PROGRESS"))
            .all(db)
            .await
            .map(|v| v.len())
            .unwrap_or(0);
        if busy == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Table {
    text: String,
    rows: Vec<Value>,
}

async fn device_table(
    db: &sea_orm::DatabaseConnection,
    job: &str,
    ids: &[String],
) -> Result<Table> {
    let executions = job_executions::Entity::find()
        .filter(job_executions::Column::JobId.eq(job))
        .all(db)
        .await?;
    let mut text = format!(
        "{:<8} {:<18} {:<10} {:>7}  {}",
        "DEVICE", "VERSION", "STATE", "TIME", "REASON"
    );
    let mut rows = Vec::new();
    for id in ids {
        let device = devices::Entity::find_by_id(id.clone()).one(db).await?;
        let now = device
            .as_ref()
            .and_then(|d| d.firmware_version.clone())
            .unwrap_or_default();
        let e = executions.iter().find(|e| &e.device_id == id);
        let (state, reason, secs) = match e {
            Some(e) => (
                e.state.clone(),
                e.error_message.clone().unwrap_or_default(),
                (e.updated_at - e.queued_at).num_milliseconds() as f64 / 1000.0,
            ),
            None => ("not queued".to_owned(), String::new(), 0.0),
        };
        let versions = if now == "2.0.0" {
            "1.0.0 → 2.0.0".to_owned()
        } else {
            format!("{now} (stays)")
        };
        text.push_str(&format!(
            "\n{id:<8} {versions:<18} {state:<10} {:>6.1}s  {reason}",
            secs
        ));
        rows.push(json!({"device": id, "version": now, "state": state, "reason": reason, "seconds": secs}));
    }
    Ok(Table { text, rows })
}

/// [`write_image`] with a seed, so two releases differ.
fn write_seeded_image(path: &Path, len: u64, seed: u64) -> Result<()> {
    write_image(path, len)?;
    if seed != 1 {
        // Make the second image differ in its first bytes.
        let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.write_all(&seed.to_le_bytes())?;
    }
    Ok(())
}

/// Writes `len` bytes of deterministic pseudo-random data (xorshift), 1 MiB at a time:
/// incompressible, so no layer can cheat on it. Demos and benchmarks make images with it.
pub fn write_image(path: &Path, len: u64) -> Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(())
}

fn flip_byte(path: &Path, offset: u64) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut byte)?;
    byte[0] ^= 0x01;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(&byte)?;
    Ok(())
}
