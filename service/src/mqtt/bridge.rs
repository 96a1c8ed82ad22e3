//! The service's MQTT client: subscribes (as a shared subscription, so replicas split the
//! work) to every device request, handles them in order in batches of up to [`BATCH`] per
//! database transaction, publishes the answers after the commit (from a replier task, in
//! commit order, while the next batch is handled), and acknowledges a message only then.
//! While the database is down a batch is retried with backoff, unacknowledged, so nothing is
//! lost (the broker keeps the rest for the persistent session).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use fleetwave_artifacts::DeviceId;
use fleetwave_artifacts::protocol::jobs::WaveNotice;
use fleetwave_artifacts::protocol::topics::{Reply, Request, ShadowOp, Topics};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use sea_orm::{DatabaseConnection, TransactionTrait};
use tokio::sync::{mpsc, watch};

use crate::jobs;
use crate::shadow::{self, Channel, Outgoing};
use crate::storage::Storage;

/// The prefix of the shared-subscription groups all replicas join (one per filter).
const SHARE_GROUP: &str = "fleetwave-service";
/// Most messages handled in one database transaction.
const BATCH: usize = 256;
/// Committed batches whose answers may wait for the replier before the handler waits too.
const REPLIES_AHEAD: usize = 2;
/// Most queued answers and acknowledgements written to the broker in one go.
pub const REQUEST_BATCH: usize = 256;
/// The QoS of the answers to a shadow request (`…/accepted`, `…/rejected`) and of
/// `…/update/documents`: an answer is for a requester that is connected and waiting (one
/// that is not asks again, as the agent does until its report is accepted), so the broker
/// neither acknowledges it to the service nor queues it for a device that is away. At QoS 1
/// each answer cost the broker a PUBACK more and a queued copy per absent device; the
/// ingestion benchmark (P2) measured the two answers of an update at QoS 1 halving what the
/// broker carries.
pub const REPLY_QOS: QoS = QoS::AtMostOnce;
/// A batch's answers, one per message (none for a message on an unknown topic).
type Answers = Vec<Option<(DeviceId, Request, Answer)>>;
/// Most messages waiting for the handler before QoS 0 ones are dropped: a device flooding at
/// QoS 0 must not grow the service's memory without end, nor hold up other devices'
/// requests behind its flood.
const MAX_WAITING_QOS0: usize = 4096;
/// Most messages waiting for the handler before the service stops reading from the broker,
/// which then keeps the rest (fleetwave's devices publish at QoS 1, and the broker queues
/// for the service's persistent session). Above [`MAX_WAITING_QOS0`], so that a QoS 0 flood
/// is shed rather than held up in the broker with everything behind it. The broker's
/// in-flight window was meant to bound this queue, but Debian 12's Mosquitto (2.0.11, whose
/// in-flight accounting was reworked in 2.0.13) sent far past it: in the ingestion
/// benchmark up to 93 000 messages waited here, about 50 MiB (BENCHMARKS.md, P2).
const MAX_WAITING: usize = 16_384;

/// A cheap, cloneable handle for publishing to devices.
#[derive(Clone)]
pub struct Bridge {
    client: AsyncClient,
    topics: Topics,
    subscribed: watch::Receiver<bool>,
}

impl Bridge {
    /// Connects to `url` (`mqtt://host:port`) as `client_id` with a persistent session and
    /// starts handling device requests under `topics`.
    pub fn start(
        url: &str,
        client_id: &str,
        tls: Option<&TlsFiles>,
        topics: Topics,
        db: DatabaseConnection,
        storage: Storage,
    ) -> Result<Self> {
        let parsed = url::Url::parse(url).with_context(|| format!("[mqtt] url {url:?}"))?;
        let secure = match parsed.scheme() {
            "mqtts" => true,
            "mqtt" => false,
            other => anyhow::bail!("[mqtt] url: {other}:// is neither mqtt:// nor mqtts://"),
        };
        let host = parsed
            .host_str()
            .context("[mqtt] url has no host")?
            .to_owned();
        let port = parsed.port().unwrap_or(if secure { 8883 } else { 1883 });
        let mut options = MqttOptions::new(client_id, host, port);
        if secure {
            let files = tls.context("[mqtt] ca, cert and key are required for mqtts://")?;
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(files.client_config()?)),
            ));
        } else {
            tracing::warn!(
                "connecting to the MQTT broker over plain TCP: use mqtts:// with [mqtt] ca, cert and key in production"
            );
        }
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_max_packet_size(256 * 1024, 256 * 1024)
            // A batch's answers and acknowledgements leave in a few writes, not one each
            // (`vendor/rumqttc`).
            .set_max_request_batch(REQUEST_BATCH);
        let waiting = Arc::new(AtomicUsize::new(0));
        // Flow control of the service's own (the vendored rumqttc's read pause).
        options.set_read_pause(waiting.clone(), MAX_WAITING);
        if !parsed.username().is_empty() {
            options.set_credentials(parsed.username(), parsed.password().unwrap_or(""));
        }
        let (client, mut events) = AsyncClient::new(options, 256);
        // Answers go out as soon as they are written: with Nagle's algorithm on (rumqttc's
        // default) a burst of them waited on the broker's delayed ACKs, ~40 ms a batch.
        events.network_options.set_tcp_nodelay(true);
        // The event loop never waits for the handler: it must keep polling so that the
        // handler's answers and acknowledgements go out (with a bounded queue, a full queue
        // stalled both for good). The queue holds what the broker sent and the handler has
        // not committed yet: past [`MAX_WAITING_QOS0`] QoS 0 messages are dropped, and at
        // [`MAX_WAITING`] the event loop stops reading (the handler's acknowledgements wake
        // it to look again).
        let (tx, rx) = mpsc::unbounded_channel::<Publish>();
        let counted = waiting.clone();
        let filters = topics.service_filters();
        let subscriber = client.clone();
        let (ready, subscribed) = watch::channel(false);
        tokio::spawn(async move {
            let mut acks = 0;
            let mut dropped = 0u64;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        acks += 1;
                        if acks == filters.len() {
                            let _ = ready.send(true);
                        }
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        acks = 0;
                        // One share group per filter: rumqttd delivers only one filter's
                        // messages to a client holding several in the same group.
                        for (n, filter) in filters.iter().enumerate() {
                            let shared = format!("$share/{SHARE_GROUP}-{n}/{filter}");
                            if let Err(e) = subscriber.subscribe(shared, QoS::AtLeastOnce).await {
                                tracing::error!(error.message = %e, "subscribing to device requests");
                            }
                        }
                        tracing::info!("connected to the MQTT broker");
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.qos == QoS::AtMostOnce
                            && counted.load(Ordering::Relaxed) >= MAX_WAITING_QOS0
                        {
                            dropped += 1;
                            if dropped % 1000 == 1 {
                                tracing::warn!(mqtt.topic = %p.topic, dropped, "too many device messages waiting: dropping QoS 0 ones");
                            }
                            continue;
                        }
                        counted.fetch_add(1, Ordering::Relaxed);
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error.message = %e, "MQTT connection lost; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        let bridge = Bridge {
            client,
            topics,
            subscribed,
        };
        tokio::spawn(bridge.clone().handle_all(db, storage, rx, waiting));
        Ok(bridge)
    }

    /// Waits until the service has subscribed to device requests (it keeps trying to
    /// connect in the background whatever this returns).
    pub async fn wait_subscribed(&self, timeout: Duration) -> bool {
        let mut rx = self.subscribed.clone();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s))
            .await
            .is_ok()
    }

    /// The topic names in use.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Handles device messages in batches: up to [`BATCH`] queued messages in one
    /// transaction, answered after it commits and acknowledged after their answers went out.
    /// A replier task sends the answers and acknowledgements, batch after batch in commit
    /// order, while the next batch is already in the database.
    async fn handle_all(
        self,
        db: DatabaseConnection,
        storage: Storage,
        mut rx: mpsc::UnboundedReceiver<Publish>,
        waiting: Arc<AtomicUsize>,
    ) {
        let (committed, mut to_send) = mpsc::channel::<(Answers, Vec<Publish>)>(REPLIES_AHEAD);
        let replier = self.clone();
        tokio::spawn(async move {
            while let Some((answers, batch)) = to_send.recv().await {
                for (thing, request, answer) in answers.into_iter().flatten() {
                    replier.answer(&thing, &request, answer).await;
                }
                for publish in &batch {
                    if let Err(e) = replier.client.ack(publish).await {
                        tracing::warn!(error.message = %e, "acknowledging a device message");
                    }
                }
            }
        });
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            waiting.fetch_sub(batch.len(), Ordering::Relaxed);
            let answers = self.handle_batch(&db, &storage, &batch).await;
            let handled = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            if committed.send((answers, handled)).await.is_err() {
                return;
            }
        }
    }

    /// Runs a batch until its transaction commits: while the database is unavailable it is
    /// retried with backoff, its messages unacknowledged, so nothing is lost.
    async fn handle_batch(
        &self,
        db: &DatabaseConnection,
        storage: &Storage,
        batch: &[Publish],
    ) -> Answers {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.try_batch(db, storage, batch).await {
                Ok(answers) => return answers,
                Err(e) => {
                    tracing::warn!(error.cause_chain = ?e, batch.len = batch.len(), "handling device messages; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn try_batch(
        &self,
        db: &DatabaseConnection,
        storage: &Storage,
        batch: &[Publish],
    ) -> Result<Answers> {
        let txn = db.begin().await?;
        let parsed: Vec<_> = batch
            .iter()
            .map(|publish| {
                let parsed = self.topics.parse_request(&publish.topic);
                if parsed.is_none() {
                    tracing::warn!(mqtt.topic = %publish.topic, "ignoring a message on an unknown topic");
                }
                parsed
            })
            .collect();
        let mut answers = Vec::with_capacity(batch.len());
        let mut i = 0;
        while i < batch.len() {
            let Some((thing, request)) = &parsed[i] else {
                answers.push(None);
                i += 1;
                continue;
            };
            // A run of shadow updates goes through set-based statements together.
            let run_len = parsed[i..]
                .iter()
                .take_while(|p| matches!(p, Some((_, Request::Shadow(ShadowOp::Update)))))
                .count();
            if run_len > 0 {
                let run: Vec<(&DeviceId, &[u8])> = parsed[i..i + run_len]
                    .iter()
                    .zip(&batch[i..i + run_len])
                    .filter_map(|(p, publish)| p.as_ref().map(|(t, _)| (t, &publish.payload[..])))
                    .collect();
                let outs = shadow::update_run(&txn, &run).await?;
                for ((thing, request), out) in parsed[i..i + run_len].iter().flatten().zip(outs) {
                    answers.push(Some((thing.clone(), request.clone(), Answer::Shadow(out))));
                }
                i += run_len;
                continue;
            }
            let answer = match request {
                Request::Shadow(op) => {
                    Answer::Shadow(shadow::handle(&txn, thing, *op, &batch[i].payload).await?)
                }
                Request::StartNext => Answer::Job(jobs::next_document(&txn, storage, thing).await?),
                Request::JobGet(job) => {
                    Answer::Job(jobs::document(&txn, storage, job, thing).await?)
                }
            };
            answers.push(Some((thing.clone(), request.clone(), answer)));
            i += 1;
        }
        txn.commit().await?;
        Ok(answers)
    }

    async fn answer(&self, thing: &DeviceId, request: &Request, answer: Answer) {
        match answer {
            Answer::Shadow(out) => self.publish_shadow(thing, out).await,
            Answer::Job(Some(doc)) => {
                let topic = self.topics.reply(thing, request, Reply::Accepted);
                self.publish_bytes(topic, doc).await;
            }
            Answer::Job(None) => {
                let doc =
                    serde_json::json!({"code": 404, "message": "no such job for this device"});
                let topic = self.topics.reply(thing, request, Reply::Rejected);
                self.publish_bytes(topic, doc.to_string().into_bytes())
                    .await;
            }
        }
    }

    /// Publishes a wave notice to a whole group, retained, so members that connect later
    /// read it at once.
    pub async fn publish_notice(
        &self,
        group: &str,
        notice: &WaveNotice,
    ) -> Result<(), rumqttc::ClientError> {
        let payload = serde_json::to_vec(notice).expect("a notice serialises");
        self.client
            .publish(
                self.topics.group_notify(group),
                QoS::AtLeastOnce,
                true,
                payload,
            )
            .await
    }

    /// Clears a group's retained notice (when its rollout halts, completes or is canceled).
    pub async fn clear_notice(&self, group: &str) -> Result<(), rumqttc::ClientError> {
        self.client
            .publish(
                self.topics.group_notify(group),
                QoS::AtLeastOnce,
                true,
                Vec::new(),
            )
            .await
    }

    /// Sends a job document to one device on `jobs/notify-next`.
    pub async fn notify_next(&self, thing: &DeviceId, document: Vec<u8>) {
        self.publish_bytes(self.topics.notify_next(thing), document)
            .await;
    }

    /// Publishes shadow answers for `thing`: a delta at QoS 1 (the broker keeps it for a
    /// device that is away), the answers to a request and the `documents` at [`REPLY_QOS`].
    pub async fn publish_shadow(&self, thing: &DeviceId, out: Vec<Outgoing>) {
        for message in out {
            let (topic, qos) = match message.channel {
                Channel::Reply(op, reply) => {
                    (self.topics.shadow_reply(thing, op, reply), REPLY_QOS)
                }
                Channel::Delta => (self.topics.shadow_delta(thing), QoS::AtLeastOnce),
                Channel::Documents => (self.topics.shadow_documents(thing), REPLY_QOS),
            };
            self.publish_with(topic, qos, message.payload).await;
        }
    }

    async fn publish_bytes(&self, topic: String, payload: Vec<u8>) {
        self.publish_with(topic, QoS::AtLeastOnce, payload).await;
    }

    async fn publish_with(&self, topic: String, qos: QoS, payload: Vec<u8>) {
        if let Err(e) = self.client.publish(topic, qos, false, payload).await {
            tracing::warn!(error.message = %e, "publishing to a device");
        }
    }
}

/// What handling a device request produced.
enum Answer {
    Shadow(Vec<Outgoing>),
    Job(Option<Vec<u8>>),
}

/// The service's TLS identity towards the broker: the CA that signed the broker's
/// certificate, and the service's own certificate and key (from `fleetwave broker config`).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// CA certificate(s), PEM.
    pub ca: std::path::PathBuf,
    /// The service's certificate, PEM.
    pub cert: std::path::PathBuf,
    /// Its key, PEM.
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    /// A rustls client configuration trusting only `ca` and presenting `cert`/`key`.
    pub fn client_config(&self) -> Result<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca)
            .with_context(|| format!("[mqtt] ca {}", self.ca.display()))?
        {
            roots
                .add(c.with_context(|| format!("[mqtt] ca {}", self.ca.display()))?)
                .with_context(|| format!("[mqtt] ca {}", self.ca.display()))?;
        }
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .with_context(|| format!("[mqtt] cert {}", self.cert.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("[mqtt] cert {}", self.cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("[mqtt] key {}", self.key.display()))?;
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("[mqtt] cert and key do not form an identity")
    }
}
