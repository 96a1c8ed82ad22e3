//! Benchmark: a release upload through the real `fleetwave serve` process (PostgreSQL + the
//! S3 server) against the baseline of the same bytes uploaded straight into the same S3
//! server with object_store, measured in the same run. Reports throughput as a ratio to the
//! baseline and the service's resident memory before and during the upload (sampled from
//! /proc every 20 ms), which must stay flat whatever the image size.
//!
//! `scripts/bench.sh` runs it (1 GiB by default); CI runs a 16 MiB smoke run so it never rots.
//! Usage: bench-upload [--size-mib N]

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fleetwave_artifacts::SignedManifest;
use fleetwave_tests::harness::postgres::TestDb;
use fleetwave_tests::harness::proc::{PeakSampler, rss_kib};
use fleetwave_tests::harness::s3::TestBucket;
use fleetwave_tests::harness::{bin, release};

/// A release upload through the service against object_store straight to S3.
#[derive(clap::Parser)]
struct Args {
    /// Image size in MiB.
    #[arg(value_name = "N", long = "size-mib", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    size_mib: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let size_mib = <Args as clap::Parser>::parse().size_mib;
    let size = size_mib << 20;
    let dir = tempfile::tempdir()?;

    // The image, its signature, a key the service trusts.
    let image = dir.path().join("image.img");
    fleetwave::cli::demo::write_image(&image, size)?;
    let (sha256, _) =
        fleetwave_artifacts::digest::sha256_reader(std::fs::File::open(&image)?, |_| {})?;
    let (key, keys) = release::trusted_key(dir.path())?;
    let manifest = release::manifest("1.0.0", size, sha256, Duration::from_secs(3600));
    let envelope = SignedManifest::sign(manifest, &[&key])?.to_json();

    // Baseline: the same bytes straight into the same S3 server, same part size.
    let baseline_bucket = TestBucket::new().await?;
    let started = Instant::now();
    baseline_bucket.upload_file("baseline.img", &image).await?;
    let baseline = started.elapsed();

    // The service, as a process of its own.
    let db = TestDb::new().await?;
    let bucket = TestBucket::new().await?;
    let mqtt = fleetwave_tests::harness::mqtt::TestMqtt::new();
    let mut child = bin::command("fleetwave")
        .arg("serve")
        .current_dir(dir.path())
        .env("FLEETWAVE__SERVER__LISTEN", "127.0.0.1:0")
        .env("FLEETWAVE__DATABASE__URL", &db.url)
        .env(
            "FLEETWAVE__MQTT__URL",
            format!("mqtt://{}:{}", mqtt.host, mqtt.port),
        )
        .env("FLEETWAVE__MQTT__PREFIX", &mqtt.prefix)
        .env(
            "FLEETWAVE__MQTT__CLIENT_ID",
            mqtt.client_id("bench-service"),
        )
        .env("FLEETWAVE__STORAGE__KIND", "s3")
        .env("FLEETWAVE__STORAGE__ENDPOINT", &bucket.server.endpoint)
        .env("FLEETWAVE__STORAGE__BUCKET", &bucket.name)
        .env("FLEETWAVE__STORAGE__REGION", &bucket.server.region)
        .env(
            "FLEETWAVE__STORAGE__ACCESS_KEY_ID",
            &bucket.server.access_key,
        )
        .env(
            "FLEETWAVE__STORAGE__SECRET_ACCESS_KEY",
            &bucket.server.secret_key,
        )
        .env("FLEETWAVE__STORAGE__ALLOW_HTTP", "true")
        .env("FLEETWAVE__RELEASES__TRUSTED_KEYS", &keys)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting fleetwave serve")?;
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut url = None;
    let mut token = None;
    for line in lines.by_ref().take(3) {
        let line = line?;
        for word in line.split_whitespace() {
            if word.starts_with("http://") && url.is_none() {
                url = Some(word.to_owned());
            }
            if word.starts_with("fwt_") {
                token = Some(word.to_owned());
            }
        }
    }
    let (url, token) = (
        url.context("no URL in the banner")?,
        token.context("no token in the banner")?,
    );
    let rss_before = rss_kib(pid)?;

    let sampler = PeakSampler::start(pid, Duration::from_millis(20));
    let started = Instant::now();
    let stream = tokio_util::io::ReaderStream::with_capacity(
        tokio::fs::File::open(&image).await?,
        256 << 10,
    );
    let form = reqwest::multipart::Form::new()
        .part("manifest", reqwest::multipart::Part::text(envelope))
        .part(
            "image",
            reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), size),
        );
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/releases"))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await?;
    let status = response.status();
    let through_service = started.elapsed();
    let peak = sampler.stop().max(rss_before);
    let _ = child.kill();
    let _ = child.wait();
    if !status.is_success() {
        bail!(
            "the upload failed: {status}: {}",
            response.text().await.unwrap_or_default()
        );
    }

    let mib_s = |d: Duration| size_mib as f64 / d.as_secs_f64();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "| image | baseline (object_store → S3) | through fleetwave | ratio | service RSS before | peak during | growth |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|")?;
    writeln!(
        out,
        "| {size_mib} MiB | {:.2} s ({:.0} MiB/s) | {:.2} s ({:.0} MiB/s) | {:.2}× | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
        baseline.as_secs_f64(),
        mib_s(baseline),
        through_service.as_secs_f64(),
        mib_s(through_service),
        through_service.as_secs_f64() / baseline.as_secs_f64(),
        rss_before as f64 / 1024.0,
        peak as f64 / 1024.0,
        (peak - rss_before) as f64 / 1024.0,
    )?;
    Ok(())
}
