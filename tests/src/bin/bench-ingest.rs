//! Benchmark P2: device updates ingested through the broker into PostgreSQL. Many MQTT
//! clients publish shadow updates (the path a job update takes too: a job report is the
//! `reported.ota` section of one; each client's first update reports its firmware, as the
//! agent's does, so the registry follows every update) to a Mosquitto of the benchmark's own, with the message
//! limits `fleetwave broker config` writes; `fleetwave serve`, a process of its own as
//! deployed, applies each in a transaction and answers on `…/update/accepted` and
//! `…/update/documents`. The baseline is the raw
//! publish → subscribe rate of the same broker: the same clients publish the same payloads
//! to other topics and one subscriber counts them. Lost messages are counted for both (an
//! applied update raises its shadow's version by one).
//!
//! Rounds alternate (`--rounds`, default 3): raw, then the database-free ceiling, then
//! fleetwave, each round with the same clients; the fastest of each counts, every round's
//! ratio is printed, and a message lost in any round fails the run. The CPU time each part
//! used per update over all rounds (the broker, the service, PostgreSQL, this process's
//! clients) is printed too: the two cores are shared, so what the service and the database
//! use is taken from the broker. So is the service's peak RSS (sampled every 5 ms).
//!
//! `scripts/bench.sh` runs it with 100 clients × 1000 updates (and 100 × 100, a burst); CI
//! runs a smoke run.
//! Usage: bench-ingest [--clients N] [--messages K] [--rounds R]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fleetwave::mqtt::bridge;
use fleetwave_tests::harness::broker::PlainBroker;
use fleetwave_tests::harness::mqtt::TestMqtt;
use fleetwave_tests::harness::postgres::TestDb;
use fleetwave_tests::harness::proc;
use fleetwave_tests::harness::s3::TestBucket;
use fleetwave_tests::harness::service::ServiceProcess;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use sea_orm::{ConnectionTrait, Statement};

/// P2: shadow updates from many MQTT clients through Mosquitto into PostgreSQL, against
/// the broker's raw pub → sub rate.
#[derive(clap::Parser)]
struct Args {
    /// MQTT clients, one per registered device.
    #[arg(value_name = "N", long, default_value_t = 100, value_parser = fleetwave_tests::harness::count_parser())]
    clients: usize,
    /// Shadow updates each client publishes.
    #[arg(value_name = "K", long, default_value_t = 100, value_parser = fleetwave_tests::harness::count_parser())]
    messages: usize,
    /// Alternating rounds of each phase (the best is kept).
    #[arg(value_name = "R", long, default_value_t = 3, value_parser = fleetwave_tests::harness::count_parser())]
    rounds: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let Args {
        clients,
        messages,
        rounds,
    } = clap::Parser::parse();
    fleetwave::telemetry::init();
    // A Mosquitto of the benchmark's own with the limits `fleetwave broker config` writes.
    let broker = PlainBroker::start().await?;
    // The service as a process of its own (`fleetwave serve`, as deployed), on the
    // benchmark's broker and a fresh database.
    let db = TestDb::new().await?;
    let bucket = TestBucket::new().await?;
    let mut mqtt = TestMqtt::new();
    mqtt.port = broker.port;
    let dir = tempfile::tempdir()?;
    let (_, keys) = fleetwave_tests::harness::release::trusted_key(dir.path())?;
    let service = ServiceProcess::start("ingest", &db.url, &bucket, &mqtt, &keys, dir.path())?;
    service.ready().await?;
    let app = Bench {
        db: db.conn.clone(),
        mqtt,
    };
    app.db
        .execute_unprepared(&format!(
            "INSERT INTO devices (id, serial, hardware, attributes, firmware_version, firmware_key, created_at, updated_at) \
             SELECT 'dev-' || i, NULL, 'rpi4', '{{}}'::jsonb, '1.0.0', NULL, now(), now() \
             FROM generate_series(0, {}) AS i",
            clients - 1
        ))
        .await
        .context("registering the devices")?;
    let publishers = connect_publishers(&app, clients).await?;
    let total = u64::try_from(clients * messages).context("updates to publish")?;
    let prefix = app.mqtt.prefix.clone();

    // Baseline: the same publishers and payloads, one plain subscriber counting.
    let (counter, mut counter_events) = AsyncClient::new(
        {
            let mut o = app.mqtt.options("raw-subscriber");
            o.set_clean_session(true);
            o
        },
        1024,
    );
    counter
        .subscribe(format!("{prefix}/raw/#"), QoS::AtLeastOnce)
        .await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = counter_events.poll().await? {
            break;
        }
    }
    // Polled all along (its keep-alive pings too, between the raw phases), counting.
    let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counting = counted.clone();
    let counter_loop = tokio::spawn(async move {
        loop {
            match counter_events.poll().await {
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    counting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => return anyhow::Error::from(e),
            }
        }
    });
    let mut echo = Echo::connect(&app).await?;

    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
    let (mut raw, mut echoed, mut ingest) = (Duration::MAX, Duration::MAX, Duration::MAX);
    let (mut raw_lost, mut echo_lost, mut lost) = (0u64, 0u64, 0u64);
    let mut ratios = Vec::with_capacity(rounds);
    let parts = Parts {
        broker: broker.pid().context("the broker's process")?,
        service: service.pid().context("the service's process")?,
    };
    let (mut raw_cpu, mut echo_cpu, mut ingest_cpu) =
        (Cpu::default(), Cpu::default(), Cpu::default());
    let service_rss = proc::PeakSampler::start(parts.service, Duration::from_millis(5));
    for _ in 0..rounds {
        // Baseline: the same publishers and payloads, one plain subscriber counting.
        let before = counted.load(std::sync::atomic::Ordering::Relaxed);
        let cpu = parts.cpu();
        let started = Instant::now();
        publish_all(&publishers, messages, |i| {
            format!("{prefix}/raw/things/dev-{i}/shadow/update")
        });
        let mut received = 0u64;
        let mut last = Instant::now();
        while received < total && last.elapsed() < Duration::from_secs(5) {
            if counter_loop.is_finished() {
                bail!("the counting subscriber: {}", counter_loop.await?);
            }
            let now = counted.load(std::sync::atomic::Ordering::Relaxed) - before;
            if now > received {
                received = now;
                last = Instant::now();
            } else {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        let raw_round = last.duration_since(started);
        raw_cpu.add(parts.cpu().since(&cpu));
        raw_lost += total - received.min(total);
        settle().await;

        // The protocol's ceiling: the same updates answered by a client without a database.
        let cpu = parts.cpu();
        let (echo_round, handled) = echo.run(&publishers, messages, total).await?;
        echo_cpu.add(parts.cpu().since(&cpu));
        echo_lost += total - handled.min(total);
        settle().await;

        // fleetwave: the same updates on the devices' shadow topics, applied in PostgreSQL.
        let before = versions(&app).await?;
        let cpu = parts.cpu();
        let started = Instant::now();
        publish_all(&publishers, messages, |i| {
            format!("{prefix}/things/dev-{i}/shadow/update")
        });
        let mut applied = 0u64;
        let mut last = Instant::now();
        loop {
            let now = versions(&app).await? - before;
            if now > applied {
                applied = now;
                last = Instant::now();
            }
            if applied >= total || last.elapsed() > Duration::from_secs(10) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ingest_round = last.duration_since(started);
        ingest_cpu.add(parts.cpu().since(&cpu));
        lost += total - applied.min(total);
        ratios.push(format!(
            "{:.0} %",
            100.0 * rate(applied, ingest_round) / rate(received, raw_round)
        ));
        raw = raw.min(raw_round);
        echoed = echoed.min(echo_round);
        ingest = ingest.min(ingest_round);
        settle().await;
    }
    drop(counter);
    counter_loop.abort();
    let service_peak_kib = service_rss.stop();

    let profile = if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    };
    println!(
        "| profile | clients × updates | raw pub → sub (Mosquitto) | lost | answered without a database | through fleetwave into PostgreSQL | lost | ratio of rates | goal |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {profile} | {clients} × {messages}, best of {rounds} | {:.2} s ({:.0} msg/s) | {raw_lost} | {:.2} s ({:.0} msg/s, {:.0} %) | {:.2} s ({:.0} msg/s) | {lost} | {:.0} % (rounds: {}) | ≥ 50 %, 0 lost |",
        raw.as_secs_f64(),
        rate(total, raw),
        echoed.as_secs_f64(),
        rate(total, echoed),
        100.0 * rate(total, echoed) / rate(total, raw),
        ingest.as_secs_f64(),
        rate(total, ingest),
        100.0 * rate(total, ingest) / rate(total, raw),
        ratios.join(", "),
    );
    let updates = total as f64 * rounds as f64;
    println!();
    println!(
        "CPU time per update over all rounds, µs (the broker, the service, PostgreSQL: every postgres process on this machine, this process's clients; all):"
    );
    for (phase, cpu) in [
        ("raw pub → sub", &raw_cpu),
        ("answered without a database", &echo_cpu),
        ("through fleetwave", &ingest_cpu),
    ] {
        println!("- {phase}: {}", cpu.per_update(updates));
    }
    println!(
        "`fleetwave serve`'s peak RSS: {:.1} MiB",
        service_peak_kib as f64 / 1024.0
    );
    anyhow::ensure!(
        raw_lost == 0 && echo_lost == 0 && lost == 0,
        "messages were lost: {raw_lost} raw, {echo_lost} by the ceiling's client, {lost} through fleetwave"
    );
    Ok(())
}

/// The protocol's ceiling: a client that takes the same updates as the service does (a
/// shared subscription, a persistent session, acknowledged by hand in order after its
/// answers, the service's MQTT settings), answers each with the two messages fleetwave
/// sends (`…/accepted` and `…/documents`, about as large, at the same QoS), and touches no
/// database. Connected once, run every round.
struct Echo {
    client: AsyncClient,
    requests: tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>,
    prefix: String,
}

impl Echo {
    async fn connect(app: &Bench) -> Result<Self> {
        let prefix = format!("{}/echo", app.mqtt.prefix);
        let mut options = app.mqtt.options("echo-service");
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_max_packet_size(256 * 1024, 256 * 1024)
            .set_max_request_batch(bridge::REQUEST_BATCH);
        let (client, mut events) = AsyncClient::new(options, 256);
        events.network_options.set_tcp_nodelay(true);
        client
            .subscribe(
                format!("$share/echo/{prefix}/things/+/shadow/update"),
                QoS::AtLeastOnce,
            )
            .await?;
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = events.poll().await? {
                break;
            }
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<rumqttc::Publish>();
        tokio::spawn(async move {
            while let Ok(event) = events.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = event {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Echo {
            client,
            requests: rx,
            prefix,
        })
    }

    /// Every publisher sends `messages` updates to the echo's topics; returns the time from
    /// the first publish to the last update answered, and how many were.
    async fn run(
        &mut self,
        publishers: &[AsyncClient],
        messages: usize,
        total: u64,
    ) -> Result<(Duration, u64)> {
        let Echo {
            client,
            requests: rx,
            prefix,
        } = self;
        let started = Instant::now();
        publish_all(publishers, messages, |i| {
            format!("{prefix}/things/dev-{i}/shadow/update")
        });
        let mut handled = 0u64;
        let mut last = Instant::now();
        while handled < total {
            let Ok(Some(request)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await
            else {
                break;
            };
            for (reply, factor) in [("accepted", 2), ("documents", 4)] {
                let answer = vec![b' '; factor * request.payload.len()];
                client
                    .publish(
                        format!("{}/{reply}", request.topic),
                        bridge::REPLY_QOS,
                        false,
                        answer,
                    )
                    .await?;
            }
            client.ack(&request).await?;
            handled += 1;
            last = Instant::now();
        }
        Ok((last.duration_since(started), handled))
    }
}

/// The processes whose CPU time is counted.
struct Parts {
    broker: u32,
    service: u32,
}

impl Parts {
    /// The CPU time each part has used so far.
    fn cpu(&self) -> Cpu {
        Cpu {
            broker: proc::cpu_seconds(self.broker).unwrap_or(0.0),
            service: proc::cpu_seconds(self.service).unwrap_or(0.0),
            postgres: proc::cpu_seconds_of("postgres"),
            clients: proc::cpu_seconds(std::process::id()).unwrap_or(0.0),
        }
    }
}

/// CPU seconds by part: the broker, the service, PostgreSQL (all its processes) and this
/// process (the publishers, the counting subscriber and the echo client).
#[derive(Clone, Copy, Default)]
struct Cpu {
    broker: f64,
    service: f64,
    postgres: f64,
    clients: f64,
}

impl Cpu {
    fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            broker: self.broker - before.broker,
            service: self.service - before.service,
            postgres: self.postgres - before.postgres,
            clients: self.clients - before.clients,
        }
    }

    fn add(&mut self, other: Cpu) {
        self.broker += other.broker;
        self.service += other.service;
        self.postgres += other.postgres;
        self.clients += other.clients;
    }

    fn per_update(&self, updates: f64) -> String {
        let us = |s: f64| 1e6 * s / updates;
        format!(
            "broker {:.1}, service {:.1}, PostgreSQL {:.1}, clients {:.1}; all {:.1}",
            us(self.broker),
            us(self.service),
            us(self.postgres),
            us(self.clients),
            us(self.broker + self.service + self.postgres + self.clients)
        )
    }
}

/// What the benchmark's clients reach: the service's database and its broker namespace.
struct Bench {
    db: sea_orm::DatabaseConnection,
    mqtt: TestMqtt,
}

/// A pause between phases, so one phase's last answers are through the broker before the
/// next phase's clock starts.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// `n` connected publisher clients (one per device), their event loops polled in the
/// background.
async fn connect_publishers(app: &Bench, n: usize) -> Result<Vec<AsyncClient>> {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut options = app.mqtt.options(&format!("pub-{i}"));
        options.set_inflight(100);
        let (client, mut events) = AsyncClient::new(options, 256);
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = events.poll().await? {
                break;
            }
        }
        tokio::spawn(async move { while events.poll().await.is_ok() {} });
        clients.push(client);
    }
    Ok(clients)
}

/// Every client publishes `messages` shadow updates (QoS 1) to `topic(its index)`, all
/// clients at once.
fn publish_all(clients: &[AsyncClient], messages: usize, topic: impl Fn(usize) -> String) {
    for (i, client) in clients.iter().enumerate() {
        let client = client.clone();
        let topic = topic(i);
        tokio::spawn(async move {
            for k in 0..messages {
                // The first update reports the running firmware, as the agent does when it
                // connects; the shadow keeps reporting it, so every later update takes
                // the registry's path too (its firmware and last-seen time).
                let firmware = if k == 0 {
                    r#""firmware":{"version":"1.0.0","slot":"a"},"#
                } else {
                    ""
                };
                let payload = format!(
                    r#"{{"state":{{"reported":{{{firmware}"seq":{k},"temperature":41.5,"uptime":{}}}}},"clientToken":"u-{k}"}}"#,
                    k * 10
                );
                if client
                    .publish(&topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

/// Updates applied so far: the sum of the shadows' versions.
async fn versions(app: &Bench) -> Result<u64> {
    let row = app
        .db
        .query_one_raw(Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT coalesce(sum(version), 0)::bigint AS n FROM shadows",
        ))
        .await?
        .context("a sum")?;
    Ok(row.try_get::<i64>("", "n")? as u64)
}
