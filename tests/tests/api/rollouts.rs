//! The rollout engine against simulated fleets (plain MQTT clients reporting through their
//! shadows) on the real PostgreSQL and Mosquitto. The engine is ticked by the test with a
//! clock of its own (real time plus an offset the test moves), so soak times, timeouts,
//! backoffs and maintenance windows pass in milliseconds.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleetwave::registry::entities::{execution_history, job_executions};
use fleetwave::rollouts::engine::Engine;
use fleetwave_artifacts::SecretKey;
use fleetwave_tests::harness::app::{Backend, Options, TestApp};
use fleetwave_tests::harness::fleet::{Behaviour, Fleet, Member};
use reqwest::{Method, StatusCode};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use crate::releases::{image, manifest, sign, upload};

/// The engine's clock: real time plus an offset the test moves forward.
struct Clock(Mutex<chrono::Duration>);

impl Clock {
    fn new() -> Self {
        Clock(Mutex::new(chrono::Duration::zero()))
    }

    fn now(&self) -> DateTime<Utc> {
        Utc::now() + *self.0.lock().unwrap()
    }

    fn advance(&self, secs: i64) {
        *self.0.lock().unwrap() += chrono::Duration::seconds(secs);
    }

    fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap() = at - Utc::now();
    }
}

/// How the fleet is targeted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Targeting {
    /// A static group `fleet` whose members read its notices.
    StaticGroup,
    /// A dynamic group `berlin` (`attributes.site = "berlin"`).
    DynamicGroup,
    /// A device list.
    List,
}

struct Rig {
    app: TestApp,
    release: String,
    fleet: Fleet,
    ids: Vec<String>,
    clock: Clock,
}

fn id(i: usize) -> String {
    format!("d{i:03}")
}

async fn register(app: &TestApp, ids: &[String], site: &str) {
    for d in ids {
        let (status, body) = app
            .call(
                Method::POST,
                "/v1/devices",
                Some(json!({"id": d, "hardware": "rpi4", "attributes": {"site": site}})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

/// Creates the static group `name` with `ids` as members.
async fn static_group(app: &TestApp, name: &str, ids: &[String]) {
    app.call(Method::POST, "/v1/groups", Some(json!({"name": name})))
        .await;
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/groups/{name}/members"),
            Some(json!({"devices": ids})),
        )
        .await;
    assert!(status.is_success(), "{body}");
}

/// Creates the dynamic group `berlin` (`attributes.site = "berlin"`).
async fn berlin_group(app: &TestApp) {
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/groups",
            Some(json!({"name": "berlin", "query": "attributes.site = \"berlin\""})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// A service on `options` trusting a fresh key, with release 2.0.0 signed by it uploaded.
async fn app_with_release(mut options: Options) -> (TestApp, Value) {
    let key = SecretKey::generate().unwrap();
    options.trusted_keys = vec![key.public()];
    let app = TestApp::spawn_with(options).await.unwrap();
    let bytes = image(4096, 3);
    let (status, release) = upload(
        &app,
        sign(manifest(&bytes, "2.0.0", -60, 7 * 86_400), &key),
        bytes,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{release}");
    (app, release)
}

async fn rig(
    n: usize,
    targeting: Targeting,
    behaviour: impl Fn(usize) -> Behaviour,
    options: Options,
) -> Rig {
    let (app, release) = app_with_release(options).await;
    let ids: Vec<String> = (0..n).map(id).collect();
    register(&app, &ids, "berlin").await;
    match targeting {
        Targeting::StaticGroup => static_group(&app, "fleet", &ids).await,
        Targeting::DynamicGroup => berlin_group(&app).await,
        Targeting::List => {}
    }
    let members = ids
        .iter()
        .enumerate()
        .map(|(i, d)| Member {
            id: d.clone(),
            group: (targeting == Targeting::StaticGroup).then(|| "fleet".to_owned()),
            behaviour: behaviour(i),
            version: "1.0.0".to_owned(),
        })
        .collect();
    let fleet = Fleet::start(&app.mqtt, members).await;
    Rig {
        release: release["id"].as_str().unwrap().to_owned(),
        app,
        fleet,
        ids,
        clock: Clock::new(),
    }
}

impl Rig {
    async fn create(&self, mut body: Value) -> String {
        body["release"] = json!(self.release);
        let (status, rollout) = self
            .app
            .call(Method::POST, "/v1/rollouts", Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{rollout}");
        rollout["id"].as_str().unwrap().to_owned()
    }

    async fn status(&self, id: &str) -> Value {
        let (status, body) = self
            .app
            .call(Method::GET, &format!("/v1/rollouts/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for wave in waves(&body) {
            for (k, v) in wave.as_object().unwrap() {
                if let Some(n) = v.as_i64() {
                    assert!(n >= 0, "counter {k} went negative: {wave}");
                }
            }
        }
        body
    }

    /// Ticks `engine` until `done` holds, moving the clock `step` seconds per tick.
    async fn drive(
        &self,
        engine: &Engine,
        id: &str,
        step: i64,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        for _ in 0..600 {
            engine.tick(self.clock.now()).await.unwrap();
            let status = self.status(id).await;
            if done(&status) {
                return status;
            }
            self.clock.advance(step);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("not reached: {}", self.status(id).await);
    }

    async fn executions(&self, job: &str) -> Vec<job_executions::Model> {
        job_executions::Entity::find()
            .filter(job_executions::Column::JobId.eq(job))
            .all(&self.app.db)
            .await
            .unwrap()
    }
}

fn state(s: &Value) -> &str {
    s["state"].as_str().unwrap()
}

fn waves(s: &Value) -> &Vec<Value> {
    s["wave_status"].as_array().unwrap()
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn three_waves_complete_each_after_threshold_and_soak() {
    let rig = rig(
        100,
        Targeting::StaticGroup,
        |_| Behaviour::Succeed,
        Options::new(Backend::Postgres),
    )
    .await;
    let id = rig
        .create(json!({
            "target": {"group": "fleet"},
            "waves": [
                {"size": {"percent": 10}, "soak_secs": 600, "success_percent": 100},
                {"size": {"percent": 50}, "soak_secs": 600, "success_percent": 90},
                {"size": {"percent": 100}, "success_percent": 100},
            ],
        }))
        .await;
    // The clock moves only while a wave soaks, so its devices have time to report.
    let end = {
        let mut result = None;
        for _ in 0..600 {
            rig.app.engine.tick(rig.clock.now()).await.unwrap();
            let s = rig.status(&id).await;
            if state(&s) == "COMPLETED" {
                result = Some(s);
                break;
            }
            let current = s["wave"].as_u64().unwrap() as usize - 1;
            if !waves(&s)[current]["threshold_met_at"].is_null() {
                rig.clock.advance(120);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        result.expect("the rollout completes")
    };
    let w = waves(&end);
    assert_eq!(
        w.iter()
            .map(|w| w["planned"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![10, 40, 50]
    );
    for wave in w {
        assert_eq!(wave["succeeded"], wave["planned"], "{wave}");
    }
    // Each wave started only after the previous one met its threshold and soaked.
    for i in 1..3 {
        let met = time(&w[i - 1]["threshold_met_at"]);
        let started = time(&w[i]["started_at"]);
        assert!(
            started >= met + chrono::Duration::seconds(600),
            "wave {} started {started}, wave {} met {met}",
            i + 1,
            i
        );
    }
    let job = end["job"].as_str().unwrap();
    let executions = rig.executions(job).await;
    assert_eq!(executions.len(), 100);
    for e in &executions {
        let wave = e.wave.unwrap() as usize;
        assert!(
            e.queued_at >= time(&w[wave]["started_at"]),
            "{} queued before its wave",
            e.device_id
        );
        assert_eq!(e.state, "SUCCEEDED");
    }
    // Every device runs the new version, and most heard of it from the group's notice.
    for d in &rig.ids {
        let (_, device) = rig
            .app
            .call(Method::GET, &format!("/v1/devices/{d}"), None)
            .await;
        assert_eq!(device["firmware_version"], "2.0.0", "{device}");
    }
    let by_notice = rig
        .ids
        .iter()
        .filter(|d| rig.fleet.log(d).via.contains(&"notice"))
        .count();
    assert!(
        by_notice >= 90,
        "{by_notice} devices took part through the retained notice"
    );
    // Nothing is left retained once it completed.
    assert!(retained(&rig.app, "fleet").await.is_none());

    // The auditor's report names, for every device, the version, since when and the
    // rollout, page by page; and as CSV.
    let auditor = rig.app.token("auditor").await;
    let mut listed = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = rig
            .app
            .call_as(
                &auditor,
                Method::GET,
                &format!("/v1/audit/devices?limit=30&after={after}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let page = page.as_array().unwrap().clone();
        if page.is_empty() {
            break;
        }
        after = page.last().unwrap()["device"].as_str().unwrap().to_owned();
        listed.extend(page);
    }
    assert_eq!(listed.len(), 100);
    for line in &listed {
        assert_eq!(line["version"], "2.0.0", "{line}");
        assert_eq!(line["rollout"], id.as_str(), "{line}");
        assert!(
            line["since"].is_string() && line["created_by_name"].is_string(),
            "{line}"
        );
    }
    let csv = rig
        .app
        .request(
            Method::GET,
            "/v1/audit/devices?format=csv&limit=10000",
            Some(&auditor),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(csv.lines().count(), 101, "a header and a line per device");
    assert!(csv.starts_with("device,hardware,version,since,job,release,rollout"));
}

/// The group's retained notice, if any: a fresh subscriber receives it at once.
async fn retained(app: &TestApp, group: &str) -> Option<Vec<u8>> {
    use rumqttc::{Event, Packet, QoS};
    let (client, mut events) = app
        .mqtt
        .client(&format!("probe-{}", fleetwave_tests::harness::unique_id()));
    client
        .subscribe(
            format!("{}/groups/{group}/jobs/notify", app.mqtt.prefix),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    // The retained message arrives first; a clear still on its way arrives after it, so
    // the last message within a quiet second is what the broker holds.
    let mut got = None;
    while let Ok(payload) = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = events.poll().await {
                return p.payload.to_vec();
            }
        }
    })
    .await
    {
        got = Some(payload);
    }
    got.filter(|p| !p.is_empty())
}

#[tokio::test]
async fn a_failing_canary_halts_clears_the_notice_and_tells_the_webhook() {
    let hook = Receiver::start().await;
    let mut options = Options::new(Backend::Postgres);
    options.webhooks = vec![fleetwave::config::Webhook {
        url: hook.url.clone(),
        secret: "hook-secret".to_owned().into(),
    }];
    let rig = rig(50, Targeting::StaticGroup, |_| Behaviour::Fail, options).await;
    let id = rig
        .create(json!({
            "target": {"group": "fleet"},
            "waves": [
                {"size": {"count": 5}, "halt": [{"on": "FAILED", "count": 3}]},
                {"size": {"percent": 100}},
            ],
        }))
        .await;
    let end = rig
        .drive(&rig.app.engine, &id, 1, |s| state(s) == "HALTED")
        .await;
    assert!(end["reason"].as_str().unwrap().contains("FAILED"), "{end}");
    let w = waves(&end);
    assert!(
        w[1]["started_at"].is_null(),
        "the second wave never started"
    );
    let canary = w[0]["planned"].as_i64().unwrap() as usize;
    assert!(canary >= 5);
    let job = end["job"].as_str().unwrap();
    let executions = rig.executions(job).await;
    assert!(
        executions.iter().all(|e| e.wave == Some(0)),
        "nothing queued beyond the canary"
    );
    assert_eq!(executions.len(), canary);
    // A halt cancels what is still queued; a device that had not started stays unchanged.
    let settled: i64 = ["failed", "canceled", "in_progress"]
        .iter()
        .map(|k| w[0][k].as_i64().unwrap())
        .sum();
    assert_eq!(settled, canary as i64, "{}", w[0]);
    assert!(
        rig.fleet.started().len() <= canary,
        "only canary devices started"
    );
    assert!(
        retained(&rig.app, "fleet").await.is_none(),
        "the notice was cleared"
    );

    // The webhook receives the halt, signed.
    let (headers, body) = hook.wait_for("rollout.halted").await;
    assert_eq!(
        hook.refused.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one delivery was refused and retried"
    );
    // Delivered in order, each once, with its position in the event log.
    let ids: Vec<u64> = hook
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|(h, _)| {
            h.get("x-fleetwave-event")
                .unwrap()
                .to_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    let expected = fleetwave::events::signature("hook-secret", body.as_bytes());
    assert_eq!(headers.get("x-fleetwave-signature").unwrap(), &expected);
    let event: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(event["details"]["rollout"], id);
    // And the audit log says who decided.
    let (_, audit) = rig.app.call(Method::GET, "/v1/audit/verify", None).await;
    assert!(audit["broken"].is_null(), "{audit}");
    let actions: Vec<(String, String)> =
        fleetwave::registry::entities::audit_events::Entity::find()
            .all(&rig.app.db)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.action, e.actor))
            .collect();
    assert!(
        actions
            .iter()
            .any(|(a, who)| a == "rollout.halt" && who == "system"),
        "{actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|(a, who)| a == "execution.failed" && who.starts_with("device:")),
        "{actions:?}"
    );
}

/// A webhook receiver: a small HTTP server that records every POST.
struct Receiver {
    url: String,
    got: std::sync::Arc<Mutex<Vec<(reqwest::header::HeaderMap, String)>>>,
    refused: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl Receiver {
    async fn start() -> Receiver {
        use axum::routing::post;
        let got = std::sync::Arc::new(Mutex::new(Vec::new()));
        let store = got.clone();
        // The first delivery is refused (500): the service must try again.
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let refusing = refused.clone();
        let router = axum::Router::new().route(
            "/hook",
            post(move |headers: axum::http::HeaderMap, body: String| {
                let store = store.clone();
                let refusing = refusing.clone();
                async move {
                    if refusing
                        .compare_exchange(
                            0,
                            1,
                            std::sync::atomic::Ordering::SeqCst,
                            std::sync::atomic::Ordering::SeqCst,
                        )
                        .is_ok()
                    {
                        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "try later");
                    }
                    let mut h = reqwest::header::HeaderMap::new();
                    for (k, v) in headers.iter() {
                        if let (Ok(k), Ok(v)) = (
                            reqwest::header::HeaderName::from_bytes(k.as_str().as_bytes()),
                            reqwest::header::HeaderValue::from_bytes(v.as_bytes()),
                        ) {
                            h.insert(k, v);
                        }
                    }
                    store.lock().unwrap().push((h, body));
                    (axum::http::StatusCode::OK, "ok")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Receiver { url, got, refused }
    }

    async fn wait_for(&self, kind: &str) -> (reqwest::header::HeaderMap, String) {
        for _ in 0..200 {
            if let Some(hit) =
                self.got.lock().unwrap().iter().find(|(_, b)| {
                    serde_json::from_str::<Value>(b).is_ok_and(|v| v["kind"] == kind)
                })
            {
                return hit.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no {kind} event reached the webhook: {:?}",
            self.got.lock().unwrap()
        );
    }
}

#[tokio::test]
async fn silent_devices_time_out_and_retries_follow_the_policy() {
    // d000 stays silent, d001 fails once then succeeds, d002 always fails.
    let rig = rig(
        3,
        Targeting::List,
        |i| match i {
            0 => Behaviour::Silent,
            1 => Behaviour::FailTimes(1),
            _ => Behaviour::Fail,
        },
        Options::new(Backend::Postgres),
    )
    .await;
    let id = rig
        .create(json!({
            "target": {"devices": rig.ids},
            "waves": [{"size": {"percent": 100}}],
            "in_progress_timeout_secs": 30,
            "retry": {"attempts": 2, "backoff_secs": 10, "on": ["FAILED", "TIMED_OUT"]},
        }))
        .await;
    let end = rig
        .drive(&rig.app.engine, &id, 4, |s| {
            let w = &waves(s)[0];
            w["succeeded"] == 1 && w["failed"] == 1 && w["timed_out"] == 1
        })
        .await;
    let w = &waves(&end)[0];
    assert_eq!(w["retrying"], 0);
    assert_eq!(w["queued"], 0);
    assert_eq!(
        state(&end),
        "RUNNING",
        "100 % success is out of reach, and no halt rule"
    );
    let job = end["job"].as_str().unwrap();
    let by_device: BTreeMap<String, job_executions::Model> = rig
        .executions(job)
        .await
        .into_iter()
        .map(|e| (e.device_id.clone(), e))
        .collect();
    assert_eq!(by_device["d000"].state, "TIMED_OUT");
    assert_eq!(by_device["d001"].state, "SUCCEEDED");
    assert_eq!(by_device["d002"].state, "FAILED");
    for d in ["d000", "d001", "d002"] {
        assert_eq!(
            by_device[d].execution_number, 2,
            "{d} had exactly its two attempts"
        );
    }
    // The history shows the retry: a second QUEUED after the first failure.
    let history = execution_history::Entity::find()
        .filter(execution_history::Column::JobId.eq(job))
        .filter(execution_history::Column::DeviceId.eq("d000"))
        .all(&rig.app.db)
        .await
        .unwrap();
    let states: Vec<&str> = history.iter().map(|h| h.to_state.as_str()).collect();
    assert_eq!(
        states,
        vec![
            "QUEUED",
            "IN_PROGRESS",
            "TIMED_OUT",
            "QUEUED",
            "IN_PROGRESS",
            "TIMED_OUT"
        ]
    );
    assert_eq!(rig.fleet.log("d000").started.len(), 2);
}

#[tokio::test]
async fn a_maintenance_window_defers_queueing_and_a_rate_limit_spreads_it() {
    let rig = rig(
        30,
        Targeting::List,
        |_| Behaviour::Silent,
        Options::new(Backend::Postgres),
    )
    .await;
    let id = rig
        .create(json!({
            "target": {"devices": rig.ids},
            "waves": [{"size": {"percent": 100}}],
            "in_progress_timeout_secs": 86400,
            "maintenance_window": {"cron": "0 3 * * *", "duration_secs": 3600, "time_zone": "UTC"},
            "rate_per_minute": 10,
        }))
        .await;
    let today = Utc::now().date_naive();
    let at = |h: u32, m: u32, s: u32| {
        today.and_hms_opt(h, m, s).unwrap().and_utc() + chrono::Duration::days(1)
    };
    let queued = |s: &Value| {
        let w = &waves(s)[0];
        ["queued", "in_progress", "succeeded", "failed", "timed_out"]
            .iter()
            .map(|k| w[k].as_i64().unwrap())
            .sum::<i64>()
    };
    rig.clock.set(at(2, 59, 0));
    rig.app.engine.tick(rig.clock.now()).await.unwrap();
    let s = rig.status(&id).await;
    assert_eq!(state(&s), "RUNNING");
    assert_eq!(queued(&s), 0, "the window is closed at 02:59");
    rig.clock.set(at(3, 0, 1));
    rig.app.engine.tick(rig.clock.now()).await.unwrap();
    assert_eq!(
        queued(&rig.status(&id).await),
        10,
        "a minute's worth at once when it opens"
    );
    // Half a second of slack: the clock is real time plus an offset.
    rig.clock
        .set(at(3, 0, 31) + chrono::Duration::milliseconds(500));
    rig.app.engine.tick(rig.clock.now()).await.unwrap();
    assert_eq!(queued(&rig.status(&id).await), 15, "five more after 30 s");
    rig.clock.set(at(3, 2, 31));
    rig.app.engine.tick(rig.clock.now()).await.unwrap();
    assert_eq!(
        queued(&rig.status(&id).await),
        25,
        "at most a minute's worth after a pause"
    );
    rig.clock.set(at(4, 30, 0));
    rig.app.engine.tick(rig.clock.now()).await.unwrap();
    assert_eq!(
        queued(&rig.status(&id).await),
        25,
        "nothing once the window closed"
    );
    let executions = rig
        .executions(rig.status(&id).await["job"].as_str().unwrap())
        .await;
    assert_eq!(executions.len(), 25);
}

#[tokio::test]
async fn a_late_joiner_of_a_dynamic_group_is_taken_by_the_current_wave() {
    let mut rig = rig(
        20,
        Targeting::DynamicGroup,
        |_| Behaviour::Succeed,
        Options::new(Backend::Postgres),
    )
    .await;
    let id = rig
        .create(json!({
            "target": {"group": "berlin"},
            "waves": [
                {"size": {"percent": 50}, "soak_secs": 3600},
                {"size": {"percent": 100}},
            ],
            "in_progress_timeout_secs": 86400,
        }))
        .await;
    rig.drive(&rig.app.engine, &id, 0, |s| {
        !waves(s)[0]["threshold_met_at"].is_null()
    })
    .await;
    // Wave 1 soaks; a device joins the group.
    let late = vec!["late-1".to_owned()];
    register(&rig.app, &late, "berlin").await;
    rig.fleet
        .add(
            &rig.app.mqtt,
            vec![Member {
                id: late[0].clone(),
                group: None,
                behaviour: Behaviour::Succeed,
                version: "1.0.0".into(),
            }],
        )
        .await;
    let s = rig
        .drive(&rig.app.engine, &id, 0, |s| waves(s)[0]["succeeded"] == 11)
        .await;
    assert_eq!(
        waves(&s)[0]["planned"],
        11,
        "the joiner belongs to the current wave"
    );
    assert_eq!(s["wave"], 1, "still the first wave");
    let end = rig
        .drive(&rig.app.engine, &id, 600, |s| state(s) == "COMPLETED")
        .await;
    assert_eq!(waves(&end)[1]["succeeded"], 10);
    let (_, device) = rig.app.call(Method::GET, "/v1/devices/late-1", None).await;
    assert_eq!(device["firmware_version"], "2.0.0");
    assert_eq!(rig.fleet.log("late-1").via, vec!["notify-next"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_queue_exactly_once_and_one_survives_the_other_dying() {
    let rig = rig(
        60,
        Targeting::StaticGroup,
        |_| Behaviour::Succeed,
        Options::new(Backend::Postgres),
    )
    .await;
    let id = rig
        .create(json!({
            "target": {"group": "fleet"},
            "waves": [
                {"size": {"percent": 20}},
                {"size": {"percent": 60}},
                {"size": {"percent": 100}},
            ],
        }))
        .await;
    // A second replica's engine: its own connection pool, the same database.
    let other_db = fleetwave::db::connect(&rig.app.database_url, 4)
        .await
        .unwrap();
    let other = Engine::new(
        other_db,
        rig.app.bridge.clone(),
        rig.app.storage.clone(),
        Duration::from_millis(1),
    );
    let doomed = rig.app.engine.clone();
    let clock = std::sync::Arc::new(Clock::new());
    let c = clock.clone();
    let a = tokio::spawn(async move {
        loop {
            let _ = doomed.tick(c.now()).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let c = clock.clone();
    let b_engine = other.clone();
    let b = tokio::spawn(async move {
        loop {
            let _ = b_engine.tick(c.now()).await;
            tokio::time::sleep(Duration::from_millis(7)).await;
        }
    });
    // Kill the first engine mid-rollout: once the second wave is under way.
    for _ in 0..400 {
        let s = rig.status(&id).await;
        if s["wave"].as_u64().unwrap() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    a.abort();
    let mut end = Value::Null;
    for _ in 0..600 {
        end = rig.status(&id).await;
        if state(&end) == "COMPLETED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.abort();
    assert_eq!(state(&end), "COMPLETED", "{end}");
    let job = end["job"].as_str().unwrap();
    let executions = rig.executions(job).await;
    assert_eq!(executions.len(), 60, "one execution per device");
    assert!(
        executions
            .iter()
            .all(|e| e.execution_number == 1 && e.state == "SUCCEEDED")
    );
    let queued = execution_history::Entity::find()
        .filter(execution_history::Column::JobId.eq(job))
        .filter(execution_history::Column::ToState.eq("QUEUED"))
        .all(&rig.app.db)
        .await
        .unwrap();
    let devices: HashSet<&str> = queued.iter().map(|h| h.device_id.as_str()).collect();
    assert_eq!(
        (queued.len(), devices.len()),
        (60, 60),
        "each device queued exactly once"
    );
    let counted: i64 = waves(&end)
        .iter()
        .map(|w| w["succeeded"].as_i64().unwrap())
        .sum();
    assert_eq!(counted, 60, "the counters agree with the executions");
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_field_named() {
    let rig = rig(
        2,
        Targeting::StaticGroup,
        |_| Behaviour::Silent,
        Options::new(Backend::Postgres),
    )
    .await;
    let cases = [
        (json!({"target": {"group": "fleet"}, "waves": []}), "waves"),
        (
            json!({"target": {"group": "fleet"}, "waves": [{"size": {"percent": 0}}]}),
            "waves[0].size",
        ),
        (
            json!({"target": {"group": "fleet"}, "waves": [{"size": {"percent": 50}}, {"size": {"percent": 40}}]}),
            "waves[1].size",
        ),
        (
            json!({"target": {"group": "fleet"}, "waves": [{"size": {"count": 1}}], "maintenance_window": {"cron": "0 3 * * *", "duration_secs": 60, "time_zone": "Mars/Olympus"}}),
            "maintenance_window.time_zone",
        ),
        (
            json!({"target": {"group": "fleet"}, "waves": [{"size": {"count": 1}}], "retry": {"attempts": 0}}),
            "retry.attempts",
        ),
    ];
    for (mut body, field) in cases {
        body["release"] = json!(rig.release);
        let (status, answer) = rig.app.call(Method::POST, "/v1/rollouts", Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}:")),
            "{answer}"
        );
    }
    let (status, answer) = rig
        .app
        .call(Method::POST, "/v1/rollouts", Some(json!({"release": rig.release, "target": {"group": "nope"}, "waves": [{"size": {"count": 1}}]})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (status, _) = rig
        .app
        .call(Method::POST, "/v1/rollouts", Some(json!({"release": rig.release, "target": {"devices": ["d000", "ghost"]}, "waves": [{"size": {"count": 1}}]})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let auditor = rig.app.token("auditor").await;
    let (status, _) = rig
        .app
        .call_as(&auditor, Method::POST, "/v1/rollouts", Some(json!({"release": rig.release, "target": {"group": "fleet"}, "waves": [{"size": {"count": 1}}]})))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_engine_runs_by_itself_on_the_embedded_sqlite_default() {
    let mut options = Options::new(Backend::Sqlite);
    options.engine = true;
    let rig = rig(12, Targeting::StaticGroup, |_| Behaviour::Succeed, options).await;
    let id = rig
        .create(json!({
            "target": {"group": "fleet"},
            "waves": [{"size": {"count": 2}}, {"size": {"percent": 100}}],
        }))
        .await;
    let mut end = Value::Null;
    for _ in 0..300 {
        end = rig.status(&id).await;
        if state(&end) == "COMPLETED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state(&end), "COMPLETED", "{end}");
    let succeeded: i64 = waves(&end)
        .iter()
        .map(|w| w["succeeded"].as_i64().unwrap())
        .sum();
    assert_eq!(succeeded, 12);
    let (_, report) = rig.app.call(Method::GET, "/v1/audit/devices", None).await;
    let report = report.as_array().unwrap();
    assert_eq!(report.len(), 12);
    assert!(
        report
            .iter()
            .all(|l| l["version"] == "2.0.0" && l["rollout"] == id.as_str()),
        "{report:?}"
    );
}

/// Runs the real `fleetwave` binary against the rig's service.
fn cli(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    let out = fleetwave_tests::harness::bin::command("fleetwave")
        .args(["--server", &app.base_url, "--token", &app.admin_token])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// The CLI runs as a blocking child process while the service answers from this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_watches_and_lists_rollouts_and_shows_incompatible_devices() {
    let mut options = Options::new(Backend::Postgres);
    options.engine = true;
    let rig = rig(8, Targeting::StaticGroup, |_| Behaviour::Succeed, options).await;
    let release = rig.release.clone();
    let app = &rig.app;
    let (ok, stdout, stderr) = tokio::task::block_in_place(|| {
        cli(
            app,
            &[
                "--json",
                "rollout",
                "create",
                "--release",
                &release,
                "--group",
                "fleet",
                "--name",
                "spring",
                "--wave",
                "25%,halt=FAILED:1",
                "--wave",
                "100%",
            ],
        )
    });
    assert!(ok, "{stderr}");
    let created: Value = serde_json::from_str(&stdout).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["name"], "spring");
    let (ok, stdout, stderr) = tokio::task::block_in_place(|| {
        cli(
            app,
            &[
                "--json",
                "rollout",
                "status",
                &id,
                "--watch",
                "--interval",
                "200ms",
            ],
        )
    });
    assert!(ok, "watch ends well on completion: {stderr}");
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["state"], "COMPLETED");
    let (ok, stdout, _) = tokio::task::block_in_place(|| cli(app, &["rollout", "status", &id]));
    assert!(ok);
    assert!(
        stdout.contains("COMPLETED") && stdout.contains("wave 2:"),
        "{stdout}"
    );
    let (ok, stdout, _) = tokio::task::block_in_place(|| cli(app, &["--json", "rollout", "list"]));
    assert!(ok);
    assert!(stdout.contains(&id));
    // A completed rollout cannot be paused: a clear error and its code.
    let (ok, stdout, stderr) =
        tokio::task::block_in_place(|| cli(app, &["--json", "rollout", "pause", &id]));
    assert!(!ok);
    assert!(stderr.contains("cannot be paused"), "{stderr}");
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap()["code"],
        "illegal_state"
    );
    // Rolled out again, every device already runs it: counted and listed, not skipped.
    let (ok, stdout, stderr) = tokio::task::block_in_place(|| {
        cli(
            app,
            &[
                "--json",
                "rollout",
                "create",
                "--release",
                &release,
                "--group",
                "fleet",
                "--wave",
                "100%",
            ],
        )
    });
    assert!(ok, "{stderr}");
    let again = serde_json::from_str::<Value>(&stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, stdout, _) = tokio::task::block_in_place(|| {
        cli(
            app,
            &[
                "rollout",
                "status",
                &again,
                "--watch",
                "--interval",
                "200ms",
            ],
        )
    });
    assert!(
        stdout.contains("incompatible devices:") && stdout.contains("not_newer"),
        "{stdout}"
    );
    let status = rig.status(&again).await;
    assert_eq!(status["incompatible"].as_array().unwrap().len(), 8);
    assert_eq!(waves(&status)[0]["incompatible"], 8);
    // A bad wave is refused before anything is sent.
    let (ok, _, stderr) = tokio::task::block_in_place(|| {
        cli(
            app,
            &[
                "rollout",
                "create",
                "--release",
                &release,
                "--group",
                "fleet",
                "--wave",
                "10%,soak=forever",
            ],
        )
    });
    assert!(!ok);
    assert!(stderr.contains("soak=forever"), "{stderr}");
}

#[tokio::test]
async fn schedule_approval_pause_resume_and_cancel() {
    let rig = rig(
        10,
        Targeting::StaticGroup,
        |i| {
            if i % 2 == 0 {
                Behaviour::Succeed
            } else {
                Behaviour::Silent
            }
        },
        Options::new(Backend::Postgres),
    )
    .await;
    let start = Utc::now() + chrono::Duration::hours(2);
    let id = rig
        .create(json!({
            "target": {"group": "fleet"},
            "waves": [
                {"size": {"count": 2}, "success_percent": 0},
                {"size": {"percent": 100}, "approval": true},
            ],
            "start_at": start,
            "in_progress_timeout_secs": 86400,
        }))
        .await;
    rig.app.engine.tick(rig.clock.now()).await.unwrap();
    assert_eq!(
        state(&rig.status(&id).await),
        "SCHEDULED",
        "not before its start time"
    );
    rig.clock.set(start + chrono::Duration::seconds(1));
    let s = rig
        .drive(&rig.app.engine, &id, 0, |s| {
            s["reason"].as_str().is_some_and(|r| r.contains("approval"))
        })
        .await;
    assert_eq!(state(&s), "RUNNING");
    assert_eq!(s["reason"], "awaiting approval of wave 2");
    assert!(
        retained(&rig.app, "fleet").await.is_some(),
        "wave 1's notice is out"
    );

    // Pausing clears the notice; resuming brings it back.
    let (status, paused) = rig
        .app
        .call(Method::POST, &format!("/v1/rollouts/{id}/pause"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    rig.app.engine.tick(rig.clock.now()).await.unwrap();
    assert_eq!(state(&rig.status(&id).await), "PAUSED");
    assert!(
        retained(&rig.app, "fleet").await.is_none(),
        "no notice while paused"
    );
    let (status, _) = rig
        .app
        .call(
            Method::POST,
            &format!("/v1/rollouts/{id}/approve"),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a paused rollout's next wave may be approved ahead"
    );
    let (status, again) = rig
        .app
        .call(
            Method::POST,
            &format!("/v1/rollouts/{id}/approve"),
            Some(json!({"wave": 2})),
        )
        .await;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("illegal_state"))
    );
    let (status, _) = rig
        .app
        .call(Method::POST, &format!("/v1/rollouts/{id}/resume"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let s = rig.drive(&rig.app.engine, &id, 0, |s| s["wave"] == 2).await;
    assert!(waves(&s)[1]["approved_by"].is_string());
    assert!(
        retained(&rig.app, "fleet").await.is_some(),
        "wave 2's notice is out"
    );

    // Silent devices never finish: cancel ends it, canceling what is still queued.
    let (status, canceled) = rig
        .app
        .call(Method::POST, &format!("/v1/rollouts/{id}/cancel"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{canceled}");
    assert_eq!(canceled["state"], "CANCELED");
    rig.app.engine.tick(rig.clock.now()).await.unwrap();
    assert!(
        retained(&rig.app, "fleet").await.is_none(),
        "no notice once canceled"
    );
    let end = rig.status(&id).await;
    let queued: i64 = waves(&end)
        .iter()
        .map(|w| w["queued"].as_i64().unwrap())
        .sum();
    assert_eq!(queued, 0, "{end}");
    let (status, _) = rig
        .app
        .call(Method::POST, &format!("/v1/rollouts/{id}/resume"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Every action is in the audit log.
    let actions: Vec<String> = fleetwave::registry::entities::audit_events::Entity::find()
        .all(&rig.app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    for action in [
        "rollout.create",
        "rollout.start",
        "rollout.pause",
        "rollout.approve",
        "rollout.resume",
        "rollout.advance",
        "rollout.cancel",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} missing from {actions:?}"
        );
    }
}

/// Creates a rollout of `release` (as the API returned it) to the group `fleet` in `waves`,
/// rationed to `rate` devices a minute if given; returns its id.
async fn fleet_rollout(app: &TestApp, release: &Value, waves: Value, rate: Option<u32>) -> String {
    let mut spec = json!({"release": release["id"], "target": {"group": "fleet"}, "waves": waves});
    if let Some(rate) = rate {
        spec["rate_per_minute"] = json!(rate);
    }
    let (status, rollout) = app.call(Method::POST, "/v1/rollouts", Some(spec)).await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    rollout["id"].as_str().unwrap().to_owned()
}

/// The engine queues on PostgreSQL with set-based statements that restate the bucket and
/// the install rules in SQL, and on SQLite device by device in Rust: both must agree with
/// the Rust originals for every device, pre-releases and build metadata included. On
/// PostgreSQL a static group's first wave is queued by the statement writing the targets,
/// unless a rate limit rations it (`rate`): then by the batches that queue later waves.
async fn fanout_agrees_with_the_rust_rules(backend: Backend, rate: Option<u32>) {
    use fleetwave::registry::entities::rollout_targets;
    use fleetwave_artifacts::protocol::bucket::bucket;
    use fleetwave_artifacts::{DeviceId, Timestamp, rules};

    let key = SecretKey::generate().unwrap();
    let mut options = Options::new(backend);
    options.trusted_keys = vec![key.public()];
    let app = TestApp::spawn_with(options).await.unwrap();
    let bytes = image(2048, 5);
    let mut m = manifest(&bytes, "2.0.0-rc.10", -60, 7 * 86_400);
    m.min_version = Some("1.0.0-beta.2".parse().unwrap());
    let (status, release) = upload(&app, sign(m.clone(), &key), bytes).await;
    assert_eq!(status, StatusCode::CREATED, "{release}");
    let firmware = [
        None,
        Some("0.9.0"),
        Some("1.0.0-beta.1"),
        Some("1.0.0-beta.2"),
        Some("1.0.0-beta.10"),
        Some("1.0.0"),
        Some("1.0.0+build.7"),
        Some("2.0.0-rc.9"),
        Some("2.0.0-rc.10"),
        Some("2.0.0-rc.10+b"),
        Some("2.0.0-rc.11"),
        Some("2.0.0"),
        Some("3.1.4"),
    ];
    let mut devices = Vec::new();
    for copy in 0..3 {
        for hardware in ["rpi4", "rpi3"] {
            for (i, version) in firmware.iter().enumerate() {
                let id = format!("fw-{hardware}-{i:02}-{copy}");
                let (status, body) = app
                    .call(
                        Method::POST,
                        "/v1/devices",
                        Some(json!({"id": id, "hardware": hardware})),
                    )
                    .await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                let installed = version.map(|v| semver::Version::parse(v).unwrap());
                if let Some(v) = &installed {
                    fleetwave_tests::harness::app::record_firmware(&app.db, &id, v).await;
                }
                devices.push((id, hardware, installed));
            }
        }
    }
    let ids: Vec<String> = devices.iter().map(|(id, _, _)| id.clone()).collect();
    static_group(&app, "fleet", &ids).await;
    let rollout = fleet_rollout(
        &app,
        &release,
        json!([{"size": {"percent": 40}}, {"size": {"percent": 100}}]),
        rate,
    )
    .await;
    app.engine.tick(Utc::now()).await.unwrap();

    // A device's place in the rollout is its target row until it is queued, then its
    // execution (which names the rollout and the wave): never both, never neither.
    let targets: BTreeMap<String, rollout_targets::Model> = rollout_targets::Entity::find()
        .filter(rollout_targets::Column::RolloutId.eq(&rollout))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.device_id.clone(), t))
        .collect();
    let executions: BTreeMap<String, job_executions::Model> = job_executions::Entity::find()
        .filter(job_executions::Column::RolloutId.eq(&rollout))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.device_id.clone(), e))
        .collect();
    let status = {
        let (code, body) = app
            .call(Method::GET, &format!("/v1/rollouts/{rollout}"), None)
            .await;
        assert_eq!(code, StatusCode::OK, "{body}");
        body
    };
    let first_wave_threshold = waves(&status)[0]["threshold"].as_i64().unwrap();
    let now = Timestamp::now();
    let (mut queued, mut incompatible, mut planned) = (0, 0, 0);
    for (id, hardware, installed) in &devices {
        let b = i32::from(bucket(&DeviceId::parse(id).unwrap(), &rollout));
        let first_wave = i64::from(b) < first_wave_threshold;
        planned += i64::from(first_wave);
        let verdict = rules::check_manifest(
            &m,
            rules::Device {
                hardware,
                installed: installed.as_ref(),
                security_floor: None,
            },
            rules::Request { now, force: false },
        );
        let history = execution_history::Entity::find()
            .filter(execution_history::Column::DeviceId.eq(id.as_str()))
            .all(&app.db)
            .await
            .unwrap();
        match (targets.get(id), executions.get(id)) {
            (Some(target), None) => {
                assert_eq!(
                    target.bucket, b,
                    "{id}: the bucket written is the one devices compute"
                );
                assert_eq!(
                    target.wave == 0,
                    first_wave,
                    "{id}: waves are cut by bucket"
                );
                assert!(history.is_empty(), "{id}: a history row iff queued");
                if !first_wave {
                    assert_eq!(target.status, "pending", "{id}: the second wave waits");
                    continue;
                }
                let e = verdict.expect_err(&format!("{id} ({installed:?}) should be queued"));
                assert_eq!(target.status, "incompatible", "{id} ({installed:?})");
                assert_eq!(target.reason.as_deref(), Some(e.code()), "{id}");
                incompatible += 1;
            }
            (None, Some(execution)) => {
                assert!(first_wave, "{id}: only the first wave is queued");
                assert_eq!(execution.wave, Some(0), "{id}");
                verdict.unwrap_or_else(|e| panic!("{id} ({installed:?}) queued: {e}"));
                assert_eq!(history.len(), 1, "{id}: a history row iff queued");
                assert_eq!(history[0].hardware, *hardware);
                assert_eq!(
                    history[0].firmware_version,
                    installed.as_ref().map(ToString::to_string)
                );
                queued += 1;
            }
            (target, execution) => {
                panic!("{id}: a target row ({target:?}) or an execution ({execution:?})")
            }
        }
    }
    let wave = &waves(&status)[0];
    assert_eq!(wave["incompatible"], incompatible, "{status}");
    assert_eq!(wave["queued"], queued, "{status}");
    assert_eq!(wave["planned"], planned, "{status}");
    assert!(queued > 0 && incompatible > 0, "{status}");

    // A rollout that starts after its release expired queues nobody, on either path.
    let late = fleet_rollout(&app, &release, json!([{"size": {"percent": 100}}]), None).await;
    let executions_before = job_executions::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
        .len();
    let after_expiry = Utc::now() + chrono::Duration::days(8);
    app.engine.tick(after_expiry).await.unwrap();
    let expired = rules::check_manifest(
        &m,
        rules::Device {
            hardware: "rpi4",
            installed: None,
            security_floor: None,
        },
        rules::Request {
            now: Timestamp::from_unix(after_expiry.timestamp() as u64),
            force: false,
        },
    )
    .unwrap_err();
    let late_targets = rollout_targets::Entity::find()
        .filter(rollout_targets::Column::RolloutId.eq(&late))
        .all(&app.db)
        .await
        .unwrap();
    assert!(!late_targets.is_empty());
    for t in &late_targets {
        assert_eq!(t.status, "incompatible", "{}", t.device_id);
        assert_eq!(t.reason.as_deref(), Some(expired.code()), "{}", t.device_id);
    }
    assert_eq!(
        job_executions::Entity::find()
            .all(&app.db)
            .await
            .unwrap()
            .len(),
        executions_before,
        "nothing queued for an expired release"
    );
}

#[tokio::test]
async fn the_set_based_fanout_on_postgres_agrees_with_the_rust_rules() {
    fanout_agrees_with_the_rust_rules(Backend::Postgres, None).await;
}

#[tokio::test]
async fn the_batched_fanout_on_postgres_agrees_with_the_rust_rules() {
    fanout_agrees_with_the_rust_rules(Backend::Postgres, Some(100_000)).await;
}

#[tokio::test]
async fn the_row_by_row_fanout_on_sqlite_agrees_with_the_rust_rules() {
    fanout_agrees_with_the_rust_rules(Backend::Sqlite, None).await;
}

/// A queued device has no target row (its execution holds its place), and a device's
/// deletion takes its executions: a device deleted and registered again under the same id
/// must not join the rollout a second time (the job's history, which outlives the device,
/// says it was queued), on either backend.
async fn a_queued_device_registered_again_does_not_join_twice(backend: Backend) {
    let (app, release) = app_with_release(Options::new(backend)).await;
    let ids: Vec<String> = (0..10).map(id).collect();
    register(&app, &ids, "berlin").await;
    berlin_group(&app).await;
    let spec = json!({"release": release["id"], "target": {"group": "berlin"},
        "waves": [{"size": {"percent": 100}, "soak_secs": 3600}]});
    let (status, rollout) = app.call(Method::POST, "/v1/rollouts", Some(spec)).await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    let rollout = rollout["id"].as_str().unwrap().to_owned();
    app.engine.tick(Utc::now()).await.unwrap();
    let before = rollout_status(&app, &rollout).await;
    assert_eq!(waves(&before)[0]["planned"], 10, "{before}");
    assert_eq!(waves(&before)[0]["queued"], 10, "{before}");

    let again = &ids[3];
    let (code, body) = app
        .call(Method::DELETE, &format!("/v1/devices/{again}"), None)
        .await;
    assert!(code.is_success(), "{body}");
    register(&app, std::slice::from_ref(again), "berlin").await;
    // Ticks past each step's next tick, so every one steps the rollout (and looks for
    // joiners).
    for minutes in 1..=3 {
        app.engine
            .tick(Utc::now() + chrono::Duration::minutes(minutes))
            .await
            .unwrap();
    }
    let after = rollout_status(&app, &rollout).await;
    assert_eq!(waves(&after)[0]["planned"], 10, "no second place: {after}");
    assert_eq!(waves(&after)[0]["queued"], 10, "{after}");
    let executions = job_executions::Entity::find()
        .filter(job_executions::Column::DeviceId.eq(again.as_str()))
        .all(&app.db)
        .await
        .unwrap();
    assert!(executions.is_empty(), "{executions:?}");

    // Going back to a service from before the change: migration `…000010`'s `down` (with
    // those of every later migration) writes a queued target back for every execution (on
    // PostgreSQL with the devices' bucket), and `up` takes them away again.
    use fleetwave::registry::entities::rollout_targets;
    use fleetwave_artifacts::DeviceId;
    use fleetwave_artifacts::protocol::bucket::bucket;
    use sea_orm_migration::MigratorTrait;
    let since = fleetwave_migrations::Migrator::migrations()
        .iter()
        .rev()
        .position(|m| m.name() == "m20261128_000010_queued_targets_leave")
        .expect("the migration is listed")
        + 1;
    fleetwave_migrations::Migrator::down(&app.db, Some(u32::try_from(since).unwrap()))
        .await
        .unwrap();
    let restored = rollout_targets::Entity::find()
        .filter(rollout_targets::Column::RolloutId.eq(&rollout))
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(
        restored.len(),
        9,
        "the deleted device's execution went with it"
    );
    for t in &restored {
        assert_eq!(t.status, "queued", "{t:?}");
        assert_eq!(t.wave, 0, "{t:?}");
        if backend == Backend::Postgres {
            let expected = bucket(&DeviceId::parse(&t.device_id).unwrap(), &rollout);
            assert_eq!(t.bucket, i32::from(expected), "{t:?}");
        }
    }
    fleetwave_migrations::Migrator::up(&app.db, None)
        .await
        .unwrap();
    let left = rollout_targets::Entity::find()
        .filter(rollout_targets::Column::RolloutId.eq(&rollout))
        .all(&app.db)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

async fn rollout_status(app: &TestApp, id: &str) -> Value {
    let (code, body) = app
        .call(Method::GET, &format!("/v1/rollouts/{id}"), None)
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn a_queued_device_registered_again_does_not_join_twice_on_postgres() {
    a_queued_device_registered_again_does_not_join_twice(Backend::Postgres).await;
}

#[tokio::test]
async fn a_queued_device_registered_again_does_not_join_twice_on_sqlite() {
    a_queued_device_registered_again_does_not_join_twice(Backend::Sqlite).await;
}
