//! Benchmark: rollout fan-out and status at fleet scale, on the real PostgreSQL and
//! Mosquitto, each against a baseline measured in the same run.
//!
//! - P1 fan-out: one wave over N devices of a static group, from the engine's tick to every
//!   execution queued (with its history row) and the wave's notice published, against
//!   `COPY` of the same N execution rows into a copy of the executions table in the same
//!   database. Rounds alternate (`--rounds`, default 3): a new rollout to the same devices,
//!   then a COPY into the same copy, so both tables grow alike; the fastest of each counts,
//!   and every round is printed. Each rollout is paused (and an untimed tick takes the
//!   pause in) before the next starts, so a timed tick steps only the rollout it times.
//! - P1 batched: the same for a second rollout to the same devices under a rate limit that
//!   lets them all through in one tick: queued in batches that delete the targets written
//!   pending, as every wave after the first is.
//! - P4 status: `GET /v1/rollouts/{id}` latency (p50, p99) over many sequential requests at N
//!   executions, against `GET /v1/health` on the same service (the HTTP floor).
//!
//! `scripts/bench.sh` runs it at 100k devices; CI runs a 5k smoke run so it never rots.
//! Usage: bench-rollout [--devices N] [--requests R] [--rounds K]

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use fleetwave_artifacts::SecretKey;
use fleetwave_tests::harness::app::{Backend, Options, TestApp};
use fleetwave_tests::harness::postgres::register_fleet;
use fleetwave_tests::harness::release;
use reqwest::Method;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::json;

/// P1 and P4: a rollout's fan-out against `COPY`, and its status latency.
#[derive(clap::Parser)]
struct Args {
    /// Devices in the rollout's group.
    #[arg(value_name = "N", long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    devices: u64,
    /// Status requests timed.
    #[arg(value_name = "R", long, default_value_t = 1000, value_parser = fleetwave_tests::harness::count_parser())]
    requests: usize,
    /// Alternating rounds of fan-out and `COPY` (the fastest of each counts).
    #[arg(value_name = "K", long, default_value_t = 3, value_parser = fleetwave_tests::harness::count_parser())]
    rounds: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let Args {
        devices,
        requests,
        rounds,
    } = clap::Parser::parse();
    let key = SecretKey::generate()?;
    let mut options = Options::new(Backend::Postgres);
    options.trusted_keys = vec![key.public()];
    let app = TestApp::spawn_with(options).await?;

    // A release.
    let form = release::small_upload(&key, "2.0.0")?;
    let release: serde_json::Value = app
        .request(Method::POST, "/v1/releases", Some(&app.admin_token))
        .multipart(form)
        .send()
        .await?
        .json()
        .await?;
    let release = release["id"].as_str().context("a release id")?.to_owned();

    // N devices running 1.0.0 in one static group, inserted in bulk.
    register_fleet(&app.db, devices, "bench").await?;

    // P4: status latency against the HTTP floor, at the first rollout's N executions.
    let latency = |path: String| {
        let app = &app;
        async move {
            let mut times = Vec::with_capacity(requests);
            // Warm up: connections in the pools, caches.
            for _ in 0..20 {
                app.request(Method::GET, &path, Some(&app.admin_token))
                    .send()
                    .await?
                    .bytes()
                    .await?;
            }
            for _ in 0..requests {
                let t = Instant::now();
                let response = app
                    .request(Method::GET, &path, Some(&app.admin_token))
                    .send()
                    .await?;
                anyhow::ensure!(response.status().is_success());
                response.bytes().await?;
                times.push(t.elapsed());
            }
            times.sort();
            Ok::<_, anyhow::Error>((times[times.len() / 2], times[times.len() * 99 / 100]))
        }
    };
    // P1: the fan-out, against COPY of the same rows into a copy of the table (same
    // database), round after round.
    app.db
        .execute_unprepared("CREATE TABLE copy_baseline (LIKE job_executions INCLUDING ALL)")
        .await?;
    let spec = json!({"release": release, "target": {"group": "bench"}, "waves": [{"size": {"percent": 100}}]});
    let mut timed = Vec::with_capacity(rounds);
    let mut p4 = None;
    for _ in 0..rounds {
        let (id, status, fanout) = fan_out(&app, spec.clone(), devices).await?;
        let job = status["job"].as_str().context("a job")?.to_owned();
        let copy = copy_baseline(&app, &job, &id, devices).await?;
        timed.push((fanout, copy));
        if p4.is_none() {
            let status = latency(format!("/v1/rollouts/{id}")).await?;
            let health = latency("/v1/health".to_owned()).await?;
            p4 = Some((status, health));
        }
        pause(&app, &id).await?;
    }
    let ((s50, s99), (h50, h99)) = p4.context("a first round")?;
    let fanout = timed.iter().map(|t| t.0).min().context("a round")?;
    let copy = timed.iter().map(|t| t.1).min().context("a round")?;
    let each: Vec<String> = timed
        .iter()
        .map(|(f, c)| format!("{:.2}/{:.2}", f.as_secs_f64(), c.as_secs_f64()))
        .collect();

    // P1, batched: a second rollout to the same devices under a rate limit that lets all
    // of them through at once. A rate limit (like every wave after the first) queues in
    // batches that delete the pending targets they queue, not in the statement writing them.
    let spec = json!({"release": release, "target": {"group": "bench"},
        "waves": [{"size": {"percent": 100}}], "rate_per_minute": devices * 60});
    let (_, _, batched) = fan_out(&app, spec, devices).await?;

    let rate = devices as f64 / fanout.as_secs_f64();
    println!("| bench | devices | fleetwave | baseline | ratio | goal |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| P1 fan-out (queue + history + notice) vs COPY of the executions, best of {rounds} (each round, s: {}) | {devices} | {:.2} s ({rate:.0} devices/s) | {:.2} s | {:.2}× | ≥ 50k devices/s, ≤ 2× |",
        each.join(", "),
        fanout.as_secs_f64(),
        copy.as_secs_f64(),
        fanout.as_secs_f64() / copy.as_secs_f64()
    );
    println!(
        "| P1 batched (a rate-limited wave: pending targets, then queue + history + target deletes) vs the fastest COPY above | {devices} | {:.2} s ({:.0} devices/s) | {:.2} s | {:.2}× | ≥ 50k devices/s, ≤ 2× |",
        batched.as_secs_f64(),
        devices as f64 / batched.as_secs_f64(),
        copy.as_secs_f64(),
        batched.as_secs_f64() / copy.as_secs_f64()
    );
    println!(
        "| P4 status p50 / p99 vs /v1/health | {devices} executions | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.2}× (p99) | p99 < 50 ms |",
        s50.as_secs_f64() * 1e3,
        s99.as_secs_f64() * 1e3,
        h50.as_secs_f64() * 1e3,
        h99.as_secs_f64() * 1e3,
        s99.as_secs_f64() / h99.as_secs_f64()
    );
    Ok(())
}

/// Creates the rollout `spec`, times the engine's tick that starts it, and checks that it
/// queued every one of the `devices`; returns its id, its status and the tick's time.
async fn fan_out(
    app: &TestApp,
    spec: serde_json::Value,
    devices: u64,
) -> Result<(String, serde_json::Value, std::time::Duration)> {
    let (status, rollout) = app.call(Method::POST, "/v1/rollouts", Some(spec)).await;
    anyhow::ensure!(status.is_success(), "creating the rollout: {rollout}");
    let id = rollout["id"].as_str().context("a rollout id")?.to_owned();
    let started = Instant::now();
    app.engine.tick(chrono::Utc::now()).await?;
    let took = started.elapsed();
    let (_, status) = app
        .call(Method::GET, &format!("/v1/rollouts/{id}"), None)
        .await;
    let queued = status["wave_status"][0]["queued"].as_i64().unwrap_or(0);
    anyhow::ensure!(
        queued == devices as i64,
        "{queued} of {devices} queued: {status}"
    );
    Ok((id, status, took))
}

/// Copies `devices` execution rows of `job` (rollout `rollout`), as the fan-out wrote them,
/// into `copy_baseline` with `psql`'s `\copy`, and checks they all landed; returns the
/// time from starting `psql` to its exit.
async fn copy_baseline(
    app: &TestApp,
    job: &str,
    rollout: &str,
    devices: u64,
) -> Result<std::time::Duration> {
    let before = copied(app).await?;
    let mut csv = String::with_capacity(devices as usize * 120);
    let at = chrono::Utc::now().to_rfc3339();
    for i in 1..=devices {
        csv.push_str(&format!(
            "{job},dev-{i:07},1,1,QUEUED,,,,,{at},,{at},{rollout},0,\n"
        ));
    }
    let started = Instant::now();
    let mut psql = std::process::Command::new("psql")
        .arg(&app.database_url)
        .args(["-q", "-c", "\\copy copy_baseline (job_id, device_id, execution_number, version, state, step, progress, error_code, error_message, queued_at, started_at, updated_at, rollout_id, wave, retry_at) FROM STDIN WITH (FORMAT csv)"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("running psql (the PostgreSQL client)")?;
    psql.stdin
        .take()
        .context("psql stdin")?
        .write_all(csv.as_bytes())?;
    let ok = psql.wait()?;
    let took = started.elapsed();
    anyhow::ensure!(ok.success(), "psql COPY failed");
    let rows = copied(app).await? - before;
    anyhow::ensure!(rows == devices as i64, "COPY wrote {rows} rows");
    Ok(took)
}

/// Rows in `copy_baseline`.
async fn copied(app: &TestApp) -> Result<i64> {
    Ok(app
        .db
        .query_one_raw(Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT count(*) AS n FROM copy_baseline",
        ))
        .await?
        .context("a count")?
        .try_get::<i64>("", "n")?)
}

/// Pauses rollout `id` and lets the engine take it in (an untimed tick clears its wave's
/// notice), so the next timed tick steps only the rollout being timed.
async fn pause(app: &TestApp, id: &str) -> Result<()> {
    let (status, body) = app
        .call(Method::POST, &format!("/v1/rollouts/{id}/pause"), None)
        .await;
    anyhow::ensure!(status.is_success(), "pausing rollout {id}: {body}");
    app.engine.tick(chrono::Utc::now()).await?;
    Ok(())
}
