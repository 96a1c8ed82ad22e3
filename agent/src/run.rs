//! The agent's IO loop around the pure [`machine`]: it resumes the persisted phase on every
//! start, hears jobs (targeted `notify-next`, its groups' retained wave notices, answers to
//! `start-next` and `jobs/{job}/get`), verifies them before a byte is fetched, performs the
//! machine's actions one by one (persisting first where the machine says so), and reports
//! every step and the outcome through the device shadow.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fleetwave_artifacts::digest::ImageHasher;
use fleetwave_artifacts::protocol::jobs::{JobDocument, WaveNotice};
use fleetwave_artifacts::protocol::topics::{Reply, Request, ShadowOp, Topics};
use fleetwave_artifacts::rules::{Device, Request as RuleRequest};
use fleetwave_artifacts::{DeviceId, SignedManifest, Timestamp, TrustedKeys};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS, Transport};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::download::{self, Stop};
use crate::fault;
use crate::health;
use crate::slots::{self, Bootloader, REBOOT_EXIT};
use crate::state::machine::{self as machine, Action, Event, Failure, Job, Outcome, Phase, Slot};
use crate::store::{State, Store, Work};
use crate::tunnel::{self, Tunnel};
use crate::verify::{self, Trust};

/// Download attempts before a download counts as failed.
const DOWNLOAD_ATTEMPTS: u32 = 6;
/// How long to wait for the service to accept a report.
const REPORT_WAIT: Duration = Duration::from_secs(10);
/// Least time between two progress reports of a download.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// What the broker brought.
#[derive(Debug)]
enum Inbound {
    /// A job document (notify-next, start-next or jobs/{job}/get accepted).
    Job(Box<JobDocument>),
    /// A group's wave notice.
    Notice(Box<WaveNotice>),
    /// The service answered a request with "nothing" (no pending job, no such job).
    Nothing,
    /// The service accepted a shadow update carrying this client token.
    Accepted(String),
    /// The connection (re)opened.
    Connected,
}

/// The running agent.
pub struct Agent {
    config: Config,
    thing: DeviceId,
    topics: Topics,
    trust: Trust,
    store: Store,
    state: State,
    boot: Box<dyn Bootloader>,
    booted: Slot,
    /// Whether this boot is the bootloader's one-shot trial.
    trial: bool,
    client: AsyncClient,
    inbox: mpsc::UnboundedReceiver<Inbound>,
    held: VecDeque<Inbound>,
    http: reqwest::Client,
    last_progress: Option<Instant>,
    tokens: u64,
    /// The digest of the slot as read back by this process's download (job id, slot): the
    /// verification needs no second pass over the slot then. Gone after a restart, when
    /// the slot is read back once more.
    readback: Option<(String, Slot, ImageHasher)>,
}

/// How the agent stopped.
pub enum Exit {
    /// It "rebooted" (file backend) or asked the system to: exit with this status.
    Reboot,
}

/// Runs the agent until it reboots; returns the exit status for the process.
pub async fn run(config: Config, keys: TrustedKeys) -> Result<i32> {
    let mut agent = Agent::start(config, keys).await?;
    match agent.serve().await? {
        Exit::Reboot => Ok(REBOOT_EXIT),
    }
}

impl Agent {
    async fn start(config: Config, keys: TrustedKeys) -> Result<Self> {
        let thing = DeviceId::parse(&config.device_id).context("device_id")?;
        let topics = Topics::new(&config.broker.prefix).context("broker.prefix")?;
        let mut boot = slots::open(&config)?;
        let (booted, trial) = boot.booted().context("asking the bootloader what runs")?;
        tracing::info!(slot = ?booted, trial, "booted");
        let store = Store::open(&config.data_dir)?;
        let state = store.load(booted, &config.version)?;
        tracing::info!(phase = ?state.phase, "agent starting");
        let (client, inbox) = connect(&config, &thing, &topics)?;
        let threshold = config.trust.threshold;
        Ok(Agent {
            trust: Trust { keys, threshold },
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(20))
                .build()
                .context("building the HTTP client")?,
            config,
            thing,
            topics,
            store,
            state,
            boot,
            booted,
            trial,
            client,
            inbox,
            held: VecDeque::new(),
            last_progress: None,
            tokens: 0,
            readback: None,
        })
    }

    async fn serve(&mut self) -> Result<Exit> {
        crate::watchdog::start();
        self.wait_connected().await;
        self.report_firmware().await;
        if let Some(exit) = self
            .feed(Event::Started {
                trial: self.trial,
                booted: self.booted,
            })
            .await?
        {
            return Ok(exit);
        }
        if self.state.phase == Phase::Idle {
            self.ask_next().await;
        }
        loop {
            let message = match self.held.pop_front() {
                Some(m) => m,
                None => self
                    .inbox
                    .recv()
                    .await
                    .context("the MQTT connection task ended")?,
            };
            let exit = match message {
                Inbound::Job(doc) => self.consider(*doc).await?,
                Inbound::Notice(notice) => {
                    self.notice(*notice).await;
                    None
                }
                Inbound::Connected => {
                    self.report_firmware().await;
                    if self.state.phase == Phase::Idle {
                        self.ask_next().await;
                    }
                    None
                }
                Inbound::Nothing | Inbound::Accepted(_) => None,
            };
            if let Some(exit) = exit {
                return Ok(exit);
            }
        }
    }

    /// Feeds `event` to the machine and performs what it asks, until it asks nothing more.
    async fn feed(&mut self, event: Event) -> Result<Option<Exit>> {
        let mut queue: VecDeque<Event> = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let (phase, actions) = machine::step(self.state.phase.clone(), event);
            self.state.phase = phase;
            for action in actions {
                match self.perform(action).await? {
                    Step::Next(Some(e)) => queue.push_back(e),
                    Step::Next(None) => {}
                    Step::Exit(exit) => return Ok(Some(exit)),
                }
            }
        }
        Ok(None)
    }

    async fn perform(&mut self, action: Action) -> Result<Step> {
        let job = current_job(&self.state.phase);
        Ok(match action {
            Action::Persist => {
                if self.state.phase == Phase::Idle {
                    self.state.work = None;
                }
                self.store.save(&self.state)?;
                fault::after_persist(&self.state.phase);
                Step::Next(None)
            }
            Action::ReportProgress => {
                self.report_progress(None).await;
                Step::Next(None)
            }
            Action::ReportOutcome => {
                self.report_outcome().await?;
                Step::Next(Some(Event::Reported))
            }
            Action::Download { slot, from } => {
                let job = job.context("a download without a job")?;
                Step::Next(Some(self.download(&job, slot, from).await?))
            }
            Action::Verify { slot } => {
                let job = job.context("verifying without a job")?;
                Step::Next(Some(self.verify_slot(&job, slot).await?))
            }
            Action::SwitchToTrial { slot } => Step::Next(Some(match self.boot.arm_trial(slot) {
                Ok(()) => Event::Switched,
                Err(e) => Event::Failed(Failure::new("switch_failed", format!("{e:#}"))),
            })),
            Action::Reboot { trial } => {
                self.boot.reboot(trial).context("rebooting")?;
                if self.config.slots.backend != crate::config::Backend::File {
                    // The system is going down; if it does not, exit and let the
                    // supervisor restart us, which resumes as "the reboot never happened".
                    tokio::time::sleep(Duration::from_secs(120)).await;
                }
                Step::Exit(Exit::Reboot)
            }
            Action::CheckHealth => {
                let command = self.config.health.command.clone();
                let deadline = self.config.health.deadline;
                let builtin = self.builtin_health();
                let outcome = health::check(&command, deadline, builtin).await;
                let health = match &outcome {
                    Ok(()) => json!({"ok": true, "checked_at": Timestamp::now().to_string()}),
                    Err(f) => {
                        json!({"ok": false, "checked_at": Timestamp::now().to_string(), "error": f.code})
                    }
                };
                self.update_shadow(json!({"health": health})).await;
                Step::Next(Some(match outcome {
                    Ok(()) => Event::HealthPassed,
                    Err(f) => Event::Failed(f),
                }))
            }
            Action::Commit { slot } => {
                let job = job.context("committing without a job")?;
                Step::Next(Some(match self.boot.commit(slot) {
                    Ok(()) => {
                        self.state.set_version(slot, Some(job.version.clone()));
                        if let Some(floor) = self.signed_floor() {
                            self.state.security_floor = Some(floor);
                        }
                        Event::Committed
                    }
                    Err(e) => Event::Failed(Failure::new("commit_failed", format!("{e:#}"))),
                }))
            }
        })
    }

    /// Decides on a job document: run it, refresh the URL of the one running, or ignore it.
    async fn consider(&mut self, doc: JobDocument) -> Result<Option<Exit>> {
        if let Some(work) = &mut self.state.work {
            if work.job == doc.job && doc.execution_number >= work.execution {
                work.url = doc.url.clone();
            }
            return Ok(None);
        }
        if self.state.phase != Phase::Idle || self.state.is_finished(&doc.job, doc.execution_number)
        {
            return Ok(None);
        }
        let manifest = doc.manifest.manifest().clone();
        let job = Job {
            id: doc.job.clone(),
            version: manifest.version.to_string(),
            target: self.booted.other(),
            size: manifest.size,
        };
        self.state.work = Some(Work {
            job: doc.job.clone(),
            execution: doc.execution_number,
            manifest: doc.manifest.to_json(),
            url: doc.url.clone(),
            fetched: 0,
        });
        let installed = self
            .state
            .version(self.booted)
            .and_then(|v| semver::Version::parse(v).ok());
        let floor = self
            .state
            .security_floor
            .as_deref()
            .and_then(|v| semver::Version::parse(v).ok());
        let verdict = verify::check_release(
            &doc.manifest,
            &self.trust,
            Device {
                hardware: &self.config.hardware,
                installed: installed.as_ref(),
                security_floor: floor.as_ref(),
            },
            RuleRequest {
                now: Timestamp::now(),
                force: false,
            },
        );
        let event = match verdict {
            Ok(_) => Event::Offered(job),
            Err(e) => Event::Refused(job, Failure::new(e.code(), e.to_string())),
        };
        tracing::info!(job = %doc.job, execution = doc.execution_number, event = ?event, "job received");
        self.feed(event).await
    }

    /// A wave notice: when it covers this device and names a job it has not run, ask for
    /// the job's document (which says whether there is an execution for it).
    async fn notice(&mut self, notice: WaveNotice) {
        if notice.covers(&self.thing)
            && self.state.phase == Phase::Idle
            && !self.state.is_finished(&notice.job, 1)
        {
            let topic = self.topics.job_get(&self.thing, &notice.job);
            self.publish(topic, json!({})).await;
        }
    }

    async fn download(&mut self, job: &Job, slot: Slot, from: u64) -> Result<Event> {
        let path = self.boot.slot_path(slot);
        let mut from = from;
        let mut fresh_url_asked = false;
        for attempt in 1..=DOWNLOAD_ATTEMPTS {
            let url = self.state.work.as_ref().context("no work")?.url.clone();
            let mut durable = Vec::new();
            let result = download::fetch(&self.http, &url, &path, from, job.size, |p| {
                fault::after_write(p.durable);
                durable.push(p);
            })
            .await;
            // Record what is durable, through the machine (it persists).
            let fetched: u64 = match &result {
                Ok(f) => f.progress.fetched,
                Err(_) => durable.last().map_or(0, |p| p.fetched),
            };
            if let Some(work) = &mut self.state.work {
                work.fetched += fetched;
            }
            // Only the furthest durable point matters: one save, not one per synced chunk.
            if let Some(p) = durable.last() {
                let (phase, actions) =
                    machine::step(self.state.phase.clone(), Event::Progress(p.durable));
                self.state.phase = phase;
                if actions.contains(&Action::Persist) {
                    self.store.save(&self.state)?;
                }
            }
            if let Some(last) = durable.last() {
                from = last.durable;
                self.report_progress(Some(from * 100 / job.size.max(1)))
                    .await;
            }
            match result {
                Ok(fetched) => {
                    self.readback = Some((job.id.clone(), slot, fetched.readback));
                    return Ok(Event::Downloaded);
                }
                Err(Stop::TooLarge(size)) => {
                    return Ok(Event::Failed(Failure::new(
                        "exceeds_signed_size",
                        format!("the server sent more than the signed {size} bytes"),
                    )));
                }
                Err(Stop::UrlRefused(status)) if !fresh_url_asked => {
                    tracing::warn!(%status, "download URL refused; asking for a fresh one");
                    fresh_url_asked = true;
                    self.refresh_url(&job.id).await;
                }
                Err(Stop::Io(e)) => {
                    return Ok(Event::Failed(Failure::new(
                        "slot_write_failed",
                        format!("writing {}: {e}", path.display()),
                    )));
                }
                Err(e) => {
                    tracing::warn!(attempt, error = %e, resume_at = from, "download interrupted");
                    if attempt == DOWNLOAD_ATTEMPTS {
                        return Ok(Event::Failed(Failure::new(
                            "download_failed",
                            format!("after {attempt} attempts: {e}"),
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
                }
            }
        }
        Ok(Event::Failed(Failure::new(
            "download_failed",
            "no attempt left",
        )))
    }

    /// Asks the service for the job's document again (a fresh URL) and waits for it.
    async fn refresh_url(&mut self, job: &str) {
        let topic = self.topics.job_get(&self.thing, job);
        self.publish(topic, json!({})).await;
        let fresh = self
            .wait_for(|m| match m {
                Inbound::Job(doc) if doc.job == job => Some(doc.url.clone()),
                _ => None,
            })
            .await;
        if let (Some(url), Some(work)) = (fresh, &mut self.state.work) {
            work.url = url;
        }
    }

    /// Waits up to [`REPORT_WAIT`] for the first message `pick` takes; everything else is
    /// kept, in order, for the main loop (acknowledgements nobody waits for are dropped).
    async fn wait_for<T>(&mut self, mut pick: impl FnMut(&Inbound) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + REPORT_WAIT;
        while let Ok(Some(message)) = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            self.inbox.recv(),
        )
        .await
        {
            match pick(&message) {
                Some(found) => return Some(found),
                None if matches!(message, Inbound::Accepted(_)) => {}
                None => self.held.push_back(message),
            }
        }
        None
    }

    async fn verify_slot(&mut self, job: &Job, slot: Slot) -> Result<Event> {
        let work = self.state.work.clone().context("no work")?;
        let signed =
            SignedManifest::parse(work.manifest.as_bytes()).context("the stored manifest")?;
        let verified = match self.trust.keys.verify(&signed, self.trust.threshold) {
            Ok(v) => v,
            Err(e) => return Ok(Event::Failed(Failure::new(e.code(), e.to_string()))),
        };
        if let Some((_, _, readback)) = self
            .readback
            .take()
            .filter(|(id, s, _)| *id == job.id && *s == slot)
        {
            return Ok(match readback.finish(&verified.manifest().sha256) {
                Ok(()) => Event::Verified,
                Err(e) => Event::Failed(Failure::new(e.code(), e.to_string())),
            });
        }
        let path = self.boot.slot_path(slot);
        let size = job.size;
        let result =
            tokio::task::spawn_blocking(move || -> Result<(), fleetwave_artifacts::Error> {
                use std::io::Read;
                let file = std::fs::File::open(&path)?;
                verify::check_image(&verified, file.take(size), |_| {})
            })
            .await
            .context("the verification task")?;
        Ok(match result {
            Ok(()) => Event::Verified,
            Err(e) => Event::Failed(Failure::new(e.code(), e.to_string())),
        })
    }

    fn signed_floor(&self) -> Option<String> {
        let work = self.state.work.as_ref()?;
        let signed = SignedManifest::parse(work.manifest.as_bytes()).ok()?;
        let offered = signed.manifest().security_floor.clone()?;
        let current = self
            .state
            .security_floor
            .as_deref()
            .and_then(|v| semver::Version::parse(v).ok());
        Some(
            current
                .map_or(offered.clone(), |c| c.max(offered))
                .to_string(),
        )
    }

    /// The built-in health check: the broker is reachable and the service answers
    /// `start-next`.
    async fn builtin_health(&mut self) -> Result<(), String> {
        let topic = self.topics.start_next(&self.thing);
        self.publish(topic, json!({})).await;
        loop {
            match self.inbox.recv().await {
                Some(Inbound::Job(_) | Inbound::Nothing) => return Ok(()),
                Some(other) => self.held.push_back(other),
                None => return Err("the MQTT connection ended".to_owned()),
            }
        }
    }

    async fn ask_next(&mut self) {
        let topic = self.topics.start_next(&self.thing);
        self.publish(topic, json!({})).await;
    }

    /// The version running now: on a trial boot of a job's target slot, the job's version
    /// (recorded for the slot only once committed).
    fn running_version(&self) -> String {
        match current_job(&self.state.phase) {
            Some(job)
                if job.target == self.booted
                    && !matches!(self.state.phase, Phase::RollingBack { .. }) =>
            {
                job.version
            }
            _ => self
                .state
                .version(self.booted)
                .unwrap_or(&self.config.version)
                .to_owned(),
        }
    }

    async fn report_firmware(&mut self) {
        let version = self.running_version();
        let reported = json!({"firmware": {"version": version, "slot": slot_name(self.booted)}});
        self.update_shadow(reported).await;
    }

    async fn report_progress(&mut self, percent: Option<u64>) {
        let Some(work) = self.state.work.clone() else {
            return;
        };
        let step = match &self.state.phase {
            Phase::Downloading { .. } => "downloading",
            Phase::Verifying { .. } => "verifying",
            Phase::Switching { .. } => "installing",
            Phase::Rebooting { .. } => "rebooting",
            Phase::HealthCheck { .. } | Phase::Committing { .. } => "health-check",
            _ => return,
        };
        if percent.is_some() {
            if self
                .last_progress
                .is_some_and(|t| t.elapsed() < PROGRESS_EVERY)
                && percent != Some(100)
            {
                return;
            }
            self.last_progress = Some(Instant::now());
        }
        let ota = json!({"job": work.job, "state": "IN_PROGRESS", "step": step, "progress": percent.unwrap_or(0).min(100)});
        self.update_shadow(json!({"ota": ota})).await;
    }

    /// Reports the outcome with the running firmware and waits until the service accepted
    /// it (retrying while it does not).
    async fn report_outcome(&mut self) -> Result<()> {
        let Phase::Reporting { job, outcome } = self.state.phase.clone() else {
            bail!("reporting an outcome outside the Reporting phase");
        };
        let (state, error) = match &outcome {
            Outcome::Succeeded => ("SUCCEEDED", None),
            Outcome::Rejected(f) => ("REJECTED", Some(f.clone())),
            Outcome::Failed(f) => ("FAILED", Some(f.clone())),
        };
        let mut ota = json!({"job": job.id, "state": state});
        if let Some(f) = error {
            ota["error"] = json!({"code": f.code, "message": f.message});
        }
        let version = self.running_version();
        let reported = json!({
            "firmware": {"version": version, "slot": slot_name(self.booted)},
            "ota": ota,
        });
        let mut wait = Duration::from_secs(1);
        while !self.update_shadow(reported.clone()).await {
            tracing::warn!(job = %job.id, "the outcome report was not accepted yet; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(60));
        }
        if let Some(work) = &self.state.work {
            let (j, n) = (work.job.clone(), work.execution);
            self.state.finish(&j, n);
        }
        tracing::info!(job = %job.id, state, "outcome reported");
        Ok(())
    }

    /// Publishes a shadow update and waits (up to [`REPORT_WAIT`]) for the service to accept
    /// it before anything else is sent: replicas may handle one device's messages in
    /// parallel, so waiting is what keeps its reports in order. Returns whether it was
    /// accepted (the outcome report retries until it is).
    async fn update_shadow(&mut self, reported: Value) -> bool {
        self.tokens += 1;
        let token = format!("{}-{}", std::process::id(), self.tokens);
        let body = json!({"state": {"reported": reported}, "clientToken": token});
        let topic = self.topics.shadow(&self.thing, ShadowOp::Update);
        self.publish(topic, body).await;
        self.wait_for(|m| matches!(m, Inbound::Accepted(t) if *t == token).then_some(()))
            .await
            .is_some()
    }

    async fn publish(&self, topic: String, body: Value) {
        if let Err(e) = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, body.to_string())
            .await
        {
            tracing::warn!(error = %e, "publishing");
        }
    }

    async fn wait_connected(&mut self) {
        loop {
            match self.inbox.recv().await {
                Some(Inbound::Connected) | None => return,
                Some(other) => self.held.push_back(other),
            }
        }
    }
}

/// What performing an action led to.
enum Step {
    /// Continue, with the event it produced.
    Next(Option<Event>),
    /// Stop the process.
    Exit(Exit),
}

fn current_job(phase: &Phase) -> Option<Job> {
    match phase {
        Phase::Idle => None,
        Phase::Downloading { job, .. }
        | Phase::Verifying { job }
        | Phase::Switching { job }
        | Phase::Rebooting { job, .. }
        | Phase::HealthCheck { job }
        | Phase::Committing { job }
        | Phase::RollingBack { job, .. }
        | Phase::Reporting { job, .. } => Some(job.clone()),
    }
}

fn slot_name(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "a",
        Slot::B => "b",
    }
}

/// Connects to the broker with a persistent session and subscribes to this device's job and
/// shadow answers and its groups' notices; messages arrive on the returned channel.
fn connect(
    config: &Config,
    thing: &DeviceId,
    topics: &Topics,
) -> Result<(AsyncClient, mpsc::UnboundedReceiver<Inbound>)> {
    let url = url_parts(&config.broker.url)?;
    let mut options = if url.tls {
        let (Some(ca), Some(cert), Some(key)) =
            (&config.broker.ca, &config.broker.cert, &config.broker.key)
        else {
            bail!("broker.ca, broker.cert and broker.key are required for mqtts://");
        };
        let tls = tunnel::client_config(ca, cert, key)?;
        let tunnel = Tunnel::start(tls, &url.host, url.port, &config.data_dir.join("tunnel"))?;
        tracing::info!(broker = %config.broker.url, "connecting to the broker over mutual TLS");
        let mut options = MqttOptions::new(
            thing.as_str(),
            tunnel.socket.to_string_lossy().into_owned(),
            0,
        );
        options.set_transport(Transport::Unix);
        options
    } else {
        tracing::warn!(broker = %config.broker.url, "connecting to the broker over plain TCP (allow_plaintext)");
        MqttOptions::new(thing.as_str(), url.host, url.port)
    };
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        .set_max_packet_size(256 * 1024, 256 * 1024);
    let (client, mut events) = AsyncClient::new(options, 64);
    // Connecting includes the TLS handshake the tunnel makes (up to 10 s for TCP and 15 s for
    // TLS): rumqttc's default of 5 s would give up on a slow link before it could succeed.
    events.network_options.set_connection_timeout(30);
    // Reports go out as they are written, not after the broker's delayed ACK.
    events.network_options.set_tcp_nodelay(true);
    let (tx, rx) = mpsc::unbounded_channel();
    let mut filters = vec![
        topics.notify_next(thing),
        topics.reply(thing, &Request::StartNext, Reply::Accepted),
        topics.reply(thing, &Request::StartNext, Reply::Rejected),
        format!("{}/things/{}/jobs/+/get/+", topics.prefix(), thing.as_str()),
        topics.shadow_reply(thing, ShadowOp::Update, Reply::Accepted),
    ];
    filters.extend(config.groups.iter().map(|g| topics.group_notify(g)));
    let subscriber = client.clone();
    let accepted = topics.shadow_reply(thing, ShadowOp::Update, Reply::Accepted);
    let notify_prefix = format!("{}/groups/", topics.prefix());
    tokio::spawn(async move {
        let mut acks = 0;
        loop {
            match events.poll().await {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    acks = 0;
                    for f in &filters {
                        let _ = subscriber.subscribe(f.clone(), QoS::AtLeastOnce).await;
                    }
                }
                Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                    acks += 1;
                    if acks == filters.len() && tx.send(Inbound::Connected).is_err() {
                        return;
                    }
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    let message = if p.topic == accepted {
                        serde_json::from_slice::<Value>(&p.payload)
                            .ok()
                            .and_then(|v| v["clientToken"].as_str().map(str::to_owned))
                            .map(Inbound::Accepted)
                    } else if p.topic.starts_with(&notify_prefix) {
                        serde_json::from_slice::<WaveNotice>(&p.payload)
                            .ok()
                            .map(|n| Inbound::Notice(Box::new(n)))
                    } else if p.topic.ends_with("/rejected") {
                        Some(Inbound::Nothing)
                    } else {
                        match serde_json::from_slice::<JobDocument>(&p.payload) {
                            Ok(doc) => Some(Inbound::Job(Box::new(doc))),
                            Err(e) => {
                                tracing::warn!(topic = %p.topic, error = %e, "ignoring a malformed job document");
                                None
                            }
                        }
                    };
                    if let Some(m) = message {
                        if tx.send(m).is_err() {
                            return;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "MQTT connection lost; reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok((client, rx))
}

struct BrokerUrl {
    tls: bool,
    host: String,
    port: u16,
}

fn url_parts(url: &str) -> Result<BrokerUrl> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        bail!("broker.url {url:?} must start with mqtts:// or mqtt://");
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h.to_owned(),
            p.parse().with_context(|| format!("the port in {url:?}"))?,
        ),
        None => (rest.to_owned(), if tls { 8883 } else { 1883 }),
    };
    Ok(BrokerUrl { tls, host, port })
}
