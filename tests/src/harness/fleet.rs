//! A simulated fleet: many plain MQTT clients (rumqttc, not the agent), each behaving as a
//! device would. They hear targeted jobs on `jobs/notify-next` and their group's retained
//! wave notice (taking part only when their bucket is covered), and report progress and the
//! outcome through their shadow: success reports the new firmware version with the
//! SUCCEEDED state, as a device does after booting, checking and committing the new slot.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetwave_artifacts::DeviceId;
use fleetwave_artifacts::protocol::jobs::{JobDocument, WaveNotice};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::mqtt::TestMqtt;

/// How a simulated device answers a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Installs, reboots, passes its health check, commits: SUCCEEDED.
    Succeed,
    /// Fails its health check and rolls back: FAILED.
    Fail,
    /// Fails its first `n` attempts, then succeeds.
    FailTimes(u32),
    /// Starts and then says nothing more.
    Silent,
    /// Refuses the release: REJECTED.
    Reject,
}

/// One device to simulate.
#[derive(Clone, Debug)]
pub struct Member {
    /// Its id.
    pub id: String,
    /// The static group whose notices it reads, if any.
    pub group: Option<String>,
    /// How it answers.
    pub behaviour: Behaviour,
    /// The version it runs at the start.
    pub version: String,
}

/// What one device did.
#[derive(Clone, Debug, Default)]
pub struct Log {
    /// Every (job, execution number) it started, in order.
    pub started: Vec<(String, u64)>,
    /// How it learnt of each: `notice` or `notify-next`.
    pub via: Vec<&'static str>,
    /// The version it runs now.
    pub version: String,
}

/// A running fleet.
pub struct Fleet {
    logs: Arc<Mutex<HashMap<String, Log>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// Connects every member, has each report its firmware version and waits until the
    /// service accepted all of them.
    pub async fn start(mqtt: &TestMqtt, members: Vec<Member>) -> Fleet {
        let logs = Arc::new(Mutex::new(HashMap::new()));
        let tasks = Fleet::start_into(mqtt, members, logs.clone()).await;
        Fleet { logs, tasks }
    }

    /// What device `id` did.
    pub fn log(&self, id: &str) -> Log {
        self.logs
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// Devices that started any job.
    pub fn started(&self) -> HashSet<String> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| !l.started.is_empty())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Adds more devices to the running fleet.
    pub async fn add(&mut self, mqtt: &TestMqtt, members: Vec<Member>) {
        let more = Fleet::start_into(mqtt, members, self.logs.clone()).await;
        self.tasks.extend(more);
    }

    async fn start_into(
        mqtt: &TestMqtt,
        members: Vec<Member>,
        logs: Arc<Mutex<HashMap<String, Log>>>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let mut ready = Vec::new();
        for member in members {
            let (tx, rx) = tokio::sync::oneshot::channel();
            ready.push(rx);
            tasks.extend(run(mqtt, member, logs.clone(), tx));
        }
        for rx in ready {
            tokio::time::timeout(Duration::from_secs(30), rx)
                .await
                .expect("every device reported its version within 30 s")
                .expect("a device task ended before reporting");
        }
        tasks
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn run(
    mqtt: &TestMqtt,
    member: Member,
    logs: Arc<Mutex<HashMap<String, Log>>>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (client, mut events) = mqtt.client(&member.id);
    let base = format!("{}/things/{}", mqtt.prefix, member.id);
    let notice_topic = member
        .group
        .as_ref()
        .map(|g| format!("{}/groups/{g}/jobs/notify", mqtt.prefix));
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Vec<u8>)>();
    let accepted_topic = format!("{base}/shadow/update/accepted");
    let mut ready = Some(ready);
    let (accepted_tx, mut accepted_rx) = mpsc::unbounded_channel::<()>();
    let sub = client.clone();
    let mut filters = vec![format!("{base}/jobs/notify-next"), accepted_topic.clone()];
    filters.extend(notice_topic.clone());
    let pump = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for f in &filters {
                        let _ = sub.subscribe(f.clone(), QoS::AtLeastOnce).await;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if p.topic == accepted_topic {
                        let _ = accepted_tx.send(());
                    } else if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    logs.lock().unwrap().insert(
        member.id.clone(),
        Log {
            version: member.version.clone(),
            ..Log::default()
        },
    );
    let worker = tokio::spawn(async move {
        let device = Sim {
            client,
            base,
            member,
        };
        // Subscriptions are sent on ConnAck; give them a moment, then report the version
        // until the service accepts it.
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            device
                .shadow(json!({"firmware": {"version": device.member.version, "slot": "a"}}))
                .await;
            if tokio::time::timeout(Duration::from_secs(2), accepted_rx.recv())
                .await
                .is_ok()
            {
                break;
            }
        }
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        let mut seen = HashSet::new();
        let mut attempts = 0u32;
        let thing = DeviceId::parse(&device.member.id).expect("a valid device id");
        while let Some((topic, payload)) = rx.recv().await {
            let (job, execution, version, via) = if topic.ends_with("/jobs/notify-next") {
                let Ok(doc) = serde_json::from_slice::<JobDocument>(&payload) else {
                    continue;
                };
                let v = doc.manifest.manifest().version.to_string();
                (doc.job, doc.execution_number, v, "notify-next")
            } else {
                if payload.is_empty() {
                    continue;
                }
                let Ok(notice) = serde_json::from_slice::<WaveNotice>(&payload) else {
                    continue;
                };
                if !notice.covers(&thing) {
                    continue;
                }
                let v = notice.manifest.manifest().version.to_string();
                (notice.job, 1, v, "notice")
            };
            // A notice and a notify-next may both announce the first execution.
            if !seen.insert((job.clone(), execution)) {
                continue;
            }
            {
                let mut logs = logs.lock().unwrap();
                let log = logs.get_mut(&device.member.id).expect("a log per device");
                log.started.push((job.clone(), execution));
                log.via.push(via);
            }
            attempts += 1;
            device
                .ota(
                    &job,
                    json!({"state": "IN_PROGRESS", "step": "downloading", "progress": 0}),
                )
                .await;
            let fail = match device.member.behaviour {
                Behaviour::Succeed => false,
                Behaviour::Fail => true,
                Behaviour::FailTimes(n) => attempts <= n,
                Behaviour::Silent => continue,
                Behaviour::Reject => {
                    device.ota(&job, json!({"state": "REJECTED", "error": {"code": "incompatible_hardware", "message": "simulated refusal"}})).await;
                    continue;
                }
            };
            device
                .ota(
                    &job,
                    json!({"state": "IN_PROGRESS", "step": "health-check", "progress": 50}),
                )
                .await;
            if fail {
                device.ota(&job, json!({"state": "FAILED", "error": {"code": "health_check_failed", "message": "simulated: the health check failed; rolled back"}})).await;
            } else {
                device
                    .shadow(json!({
                        "firmware": {"version": version, "slot": "b"},
                        "ota": {"job": job, "state": "SUCCEEDED"},
                    }))
                    .await;
                logs.lock()
                    .unwrap()
                    .get_mut(&device.member.id)
                    .expect("a log per device")
                    .version = version;
            }
        }
    });
    vec![pump, worker]
}

struct Sim {
    client: AsyncClient,
    base: String,
    member: Member,
}

impl Sim {
    async fn shadow(&self, reported: Value) {
        let body = json!({"state": {"reported": reported}});
        let _ = self
            .client
            .publish(
                format!("{}/shadow/update", self.base),
                QoS::AtLeastOnce,
                false,
                body.to_string(),
            )
            .await;
    }

    async fn ota(&self, job: &str, mut ota: Value) {
        ota["job"] = json!(job);
        self.shadow(json!({"ota": ota})).await;
    }
}
