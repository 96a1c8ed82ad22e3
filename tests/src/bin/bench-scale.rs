//! Benchmark P5: the service's resident memory with a large fleet registered, during a
//! rollout over all of it. `fleetwave serve` runs as a process of its own (PostgreSQL, the S3
//! server, the machine's Mosquitto, its rollout engine ticking every 200 ms); N devices are
//! bulk-inserted in one static group; one rollout of two waves (1 %, then the rest) goes
//! through the API while an operator's client polls its status and pages through the device
//! list. Memory is sampled from /proc every 20 ms, from before the rollout until every
//! execution is queued; the baseline is the same service idle with the fleet registered.
//!
//! `scripts/bench.sh` runs it at 1M devices; CI runs a 5k smoke run.
//! Usage: bench-scale [--devices N]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fleetwave_tests::harness::mqtt::TestMqtt;
use fleetwave_tests::harness::postgres::TestDb;
use fleetwave_tests::harness::postgres::register_fleet;
use fleetwave_tests::harness::proc::{PeakSampler, rss_kib};
use fleetwave_tests::harness::release;
use fleetwave_tests::harness::s3::TestBucket;
use fleetwave_tests::harness::service::ServiceProcess;
use serde_json::{Value, json};

/// P5: the service's memory with a large fleet during a rollout.
#[derive(clap::Parser)]
struct Args {
    /// Devices registered and rolled out to.
    #[arg(value_name = "N", long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    devices: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    fleetwave_tests::harness::init();
    let devices = <Args as clap::Parser>::parse().devices;
    let dir = tempfile::tempdir()?;
    let (key, keys) = release::trusted_key(dir.path())?;
    let db = TestDb::new().await?;
    register_fleet(&db.conn, devices, "fleet").await?;
    let bucket = TestBucket::new().await?;
    let mqtt = TestMqtt::new();
    let service = ServiceProcess::start("scale", &db.url, &bucket, &mqtt, &keys, dir.path())?;
    service.ready().await?;
    let pid = service.pid().context("the service's pid")?;
    let token = service.admin_token().context("the admin token")?;
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let request = http
            .request(method, format!("{}{path}", service.url))
            .bearer_auth(&token);
        let request = match body {
            Some(b) => request.json(&b),
            None => request,
        };
        async move {
            let response = request.send().await?;
            let status = response.status();
            let body: Value = response.json().await?;
            ensure!(status.is_success(), "{status}: {body}");
            Ok::<Value, anyhow::Error>(body)
        }
    };

    // A release (small: the fleet's size is what is measured).
    let form = release::small_upload(&key, "2.0.0")?;
    let release: Value = http
        .post(format!("{}/v1/releases", service.url))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await?
        .json()
        .await?;
    let release = release["id"].as_str().context("a release id")?.to_owned();

    // Idle with the fleet registered: the baseline.
    call(reqwest::Method::GET, "/v1/devices?limit=1000".into(), None).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kib(pid)?;

    let sampler = PeakSampler::start(pid, Duration::from_millis(20));
    let started = Instant::now();
    let rollout = call(
        reqwest::Method::POST,
        "/v1/rollouts".into(),
        Some(json!({
            "release": release,
            "target": {"group": "fleet"},
            "waves": [
                {"size": {"percent": 1}, "success_percent": 0.0},
                {"size": {"percent": 100}}
            ]
        })),
    )
    .await?;
    let id = rollout["id"].as_str().context("a rollout id")?.to_owned();
    let mut cursor: Option<String> = None;
    let queued = loop {
        let status = call(reqwest::Method::GET, format!("/v1/rollouts/{id}"), None).await?;
        let queued: i64 = status["wave_status"]
            .as_array()
            .map(|w| w.iter().map(|w| w["queued"].as_i64().unwrap_or(0)).sum())
            .unwrap_or(0);
        if queued >= devices as i64 {
            break queued;
        }
        // Far slower than the slowest fan-out measured (3 500 devices/s at 1M, release).
        let limit = Duration::from_secs(120 + devices / 200);
        ensure!(
            started.elapsed() < limit,
            "not all queued after {limit:?}: {status}"
        );
        // An operator paging through the fleet meanwhile.
        let path = match &cursor {
            Some(c) => format!("/v1/devices?limit=1000&cursor={c}"),
            None => "/v1/devices?limit=1000".to_owned(),
        };
        let page = call(reqwest::Method::GET, path, None).await?;
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let took = started.elapsed();
    let peak = sampler.stop();
    let profile = if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    };
    println!(
        "| profile | devices | idle RSS (fleet registered) | peak RSS during the rollout | growth | rollout to all queued | goal |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {profile} | {devices} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} s ({queued} queued) | peak < 200 MiB |",
        idle as f64 / 1024.0,
        peak as f64 / 1024.0,
        peak.saturating_sub(idle) as f64 / 1024.0,
        took.as_secs_f64()
    );
    ensure!(
        peak < 200 * 1024,
        "the service's peak RSS {:.1} MiB exceeds the 200 MiB goal",
        peak as f64 / 1024.0
    );
    Ok(())
}
