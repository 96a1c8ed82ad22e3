//! Device shadows over the real Mosquitto and PostgreSQL, driven by a plain MQTT client
//! (rumqttc, not the agent) as a device would, and through the HTTP API.

use std::time::Duration;

use fleetwave_tests::harness::app::{Backend, TestApp};
use fleetwave_tests::harness::device::SimDevice;
use reqwest::{Method, StatusCode};
use rumqttc::QoS;
use serde_json::{Value, json};
use tokio::time::timeout;

use crate::on_both_backends;

/// A device talking to its shadow.
struct Device(SimDevice);

impl Device {
    async fn connect(app: &TestApp, id: &str) -> Device {
        Device(SimDevice::connect(&app.mqtt, id, &["shadow/#"]).await)
    }

    /// The next answer, delta or documents message: (topic after `shadow/`, JSON). Our own
    /// requests, echoed by the wildcard subscription, are skipped.
    async fn next(&mut self) -> (String, Value) {
        loop {
            let (topic, payload) = self.0.next().await;
            let rest = topic.strip_prefix("shadow/").unwrap_or(&topic).to_owned();
            if !matches!(rest.as_str(), "update" | "get" | "delete") {
                return (rest, serde_json::from_slice(&payload).unwrap());
            }
        }
    }

    /// Sends `payload` to `shadow/{op}` and returns the accepted or rejected answer, keeping
    /// any delta and documents messages that arrive in between.
    async fn request(&mut self, op: &str, payload: Value) -> (String, Value, Vec<(String, Value)>) {
        self.0.send(&format!("shadow/{op}"), payload).await;
        let mut others = Vec::new();
        loop {
            let (topic, doc) = self.next().await;
            if topic == format!("{op}/accepted") || topic == format!("{op}/rejected") {
                // The documents/delta of an update follow its answer: collect them briefly.
                if topic == "update/accepted" {
                    while let Ok(extra) = timeout(Duration::from_millis(300), self.next()).await {
                        others.push(extra);
                    }
                }
                return (topic, doc, others);
            }
            others.push((topic, doc));
        }
    }
}

async fn app_with_device(id: &str) -> (TestApp, Device) {
    let app = app_with_devices(&[id]).await;
    let device = Device::connect(&app, id).await;
    (app, device)
}

/// A service on PostgreSQL with the devices `ids` registered (hardware `rpi4`).
async fn app_with_devices(ids: &[&str]) -> TestApp {
    let app = TestApp::spawn(Backend::Postgres).await.unwrap();
    for id in ids {
        app.register_device(id).await;
    }
    app
}

#[tokio::test]
async fn shadow_semantics_over_mqtt() {
    let (app, mut d) = app_with_device("pi-1").await;

    // Delta against a missing reported section.
    let (topic, doc, others) = d
        .request(
            "update",
            json!({"state": {"desired": {"led": "on", "cfg": {"rate": 5}}}, "clientToken": "t1"}),
        )
        .await;
    assert_eq!(topic, "update/accepted", "{doc}");
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["clientToken"], "t1");
    let delta = others
        .iter()
        .find(|(t, _)| t == "update/delta")
        .expect("a delta")
        .1
        .clone();
    assert_eq!(delta["state"], json!({"led": "on", "cfg": {"rate": 5}}));
    assert!(others.iter().any(|(t, _)| t == "update/documents"));

    // Nested objects merge; the delta shrinks as reported catches up.
    let (topic, _, _) = d
        .request(
            "update",
            json!({"state": {"reported": {"led": "on", "cfg": {"rate": 5, "mode": "x"}}}}),
        )
        .await;
    assert_eq!(topic, "update/accepted");
    let (topic, got, _) = d.request("get", json!({"clientToken": "g"})).await;
    assert_eq!(topic, "get/accepted");
    assert_eq!(
        got["state"]["reported"],
        json!({"led": "on", "cfg": {"rate": 5, "mode": "x"}})
    );
    assert!(got["state"].get("delta").is_none(), "{got}");
    assert_eq!(got["version"], 2);
    assert_eq!(got["clientToken"], "g");
    assert!(got["metadata"]["reported"]["cfg"]["mode"]["timestamp"].is_u64());

    // null deletes a field; arrays replace whole; null inside an array is refused.
    d.request(
        "update",
        json!({"state": {"reported": {"cfg": {"mode": null}, "peers": ["a", "b"]}}}),
    )
    .await;
    d.request("update", json!({"state": {"reported": {"peers": ["c"]}}}))
        .await;
    let (topic, err, _) = d
        .request(
            "update",
            json!({"state": {"reported": {"peers": ["c", null]}}, "clientToken": "bad"}),
        )
        .await;
    assert_eq!(
        (topic.as_str(), err["code"].as_u64()),
        ("update/rejected", Some(400)),
        "{err}"
    );
    assert_eq!(err["clientToken"], "bad");
    let (_, got, _) = d.request("get", json!({})).await;
    assert_eq!(
        got["state"]["reported"],
        json!({"led": "on", "cfg": {"rate": 5}, "peers": ["c"]})
    );
    assert_eq!(got["version"], 4);

    // A stale version is refused with 409; the current one is accepted and incremented.
    let (topic, err, _) = d
        .request(
            "update",
            json!({"state": {"reported": {"led": "off"}}, "version": 3}),
        )
        .await;
    assert_eq!(
        (topic.as_str(), err["code"].as_u64()),
        ("update/rejected", Some(409)),
        "{err}"
    );
    let (topic, ok, _) = d
        .request(
            "update",
            json!({"state": {"reported": {"led": "off"}}, "version": 4}),
        )
        .await;
    assert_eq!(topic, "update/accepted");
    assert_eq!(ok["version"], 5);

    // A clientToken over 64 bytes, and not JSON at all.
    let (topic, err, _) = d
        .request(
            "update",
            json!({"state": {"reported": {}}, "clientToken": "x".repeat(65)}),
        )
        .await;
    assert_eq!(
        (topic.as_str(), err["code"].as_u64()),
        ("update/rejected", Some(400))
    );
    d.0.client
        .publish(
            format!("{}/shadow/update", d.0.base),
            QoS::AtLeastOnce,
            false,
            "{not json",
        )
        .await
        .unwrap();
    let (topic, err) = d.next().await;
    assert_eq!(
        (topic.as_str(), err["code"].as_u64()),
        ("update/rejected", Some(400)),
        "{err}"
    );

    // reported.firmware keeps the registry's version in step.
    d.request(
        "update",
        json!({"state": {"reported": {"firmware": {"version": "1.9.0", "slot": "a"}}}}),
    )
    .await;
    let (_, device) = app.call(Method::GET, "/v1/devices/pi-1", None).await;
    assert_eq!(device["firmware_version"], "1.9.0");

    // Delete, then get: 404.
    let (topic, doc, _) = d.request("delete", json!({})).await;
    assert_eq!(topic, "delete/accepted", "{doc}");
    let (topic, err, _) = d.request("get", json!({})).await;
    assert_eq!(
        (topic.as_str(), err["code"].as_u64()),
        ("get/rejected", Some(404))
    );
}

#[tokio::test]
async fn desired_state_set_over_http_reaches_the_device_as_a_delta() {
    let (app, mut d) = app_with_device("pi-2").await;
    d.request(
        "update",
        json!({"state": {"reported": {"firmware": {"version": "1.0.0", "slot": "a"}}}}),
    )
    .await;
    let (status, body) = app
        .call(
            Method::PATCH,
            "/v1/devices/pi-2/shadow",
            Some(json!({"desired": {"mode": "eco"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    loop {
        let (topic, doc) = d.next().await;
        if topic == "update/delta" {
            assert_eq!(doc["state"], json!({"mode": "eco"}));
            break;
        }
    }
    let (status, shadow) = app.call(Method::GET, "/v1/devices/pi-2/shadow", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shadow["state"]["delta"], json!({"mode": "eco"}));
    assert_eq!(shadow["state"]["reported"]["firmware"]["version"], "1.0.0");
    let (status, body) = app
        .call(
            Method::PATCH,
            "/v1/devices/pi-2/shadow",
            Some(json!({"desired": {"mode": "x"}, "version": 1})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("version_conflict"))
    );
    let (status, _) = app
        .call(Method::GET, "/v1/devices/nobody/shadow", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// PROTOCOL.md: the answers to a request and `…/documents` at QoS 0 (a device subscribed
/// at QoS 1 gets them at 0, and the broker keeps none for it while it is away), a delta at
/// QoS 1.
#[tokio::test]
async fn answers_come_at_qos_0_and_a_delta_at_qos_1() {
    let (_app, mut d) = app_with_device("pi-qos").await;
    d.0.send(
        "shadow/update",
        json!({"state": {"desired": {"mode": "eco"}}, "clientToken": "q"}),
    )
    .await;
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < 3 {
        let (topic, qos, _) = d.0.next_with_qos().await;
        if topic != "shadow/update" {
            seen.insert(topic, qos);
        }
    }
    assert_eq!(
        seen,
        [
            ("shadow/update/accepted".to_owned(), QoS::AtMostOnce),
            ("shadow/update/delta".to_owned(), QoS::AtLeastOnce),
            ("shadow/update/documents".to_owned(), QoS::AtMostOnce),
        ]
        .into()
    );
    d.0.send("shadow/get", json!({})).await;
    loop {
        let (topic, qos, _) = d.0.next_with_qos().await;
        if topic == "shadow/get/accepted" {
            assert_eq!(qos, QoS::AtMostOnce);
            break;
        }
    }
}

#[tokio::test]
async fn an_unregistered_device_gets_404() {
    let app = TestApp::spawn(Backend::Postgres).await.unwrap();
    let mut d = Device::connect(&app, "ghost").await;
    let (topic, err, _) = d
        .request("update", json!({"state": {"reported": {"a": 1}}}))
        .await;
    assert_eq!(
        (topic.as_str(), err["code"].as_u64()),
        ("update/rejected", Some(404)),
        "{err}"
    );
}

/// A burst far larger than the service's batch and the old 1 024-message hand-off queue: the
/// bridge must keep polling the broker while the handler publishes answers, or both stall for
/// good (as they did). 20 000 updates can also outgrow the 16 384 messages the bridge lets
/// wait before it stops reading (on Debian 12's Mosquitto it paused ten times when counted by
/// hand; the test does not count), and reading must resume each time. On a Mosquitto with
/// the limits `fleetwave broker config` writes, every update is applied, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_updates_from_many_devices_is_applied_completely() {
    use fleetwave_tests::harness::broker::PlainBroker;
    fleetwave_tests::harness::init();
    let broker = PlainBroker::start().await.unwrap();
    let app = TestApp::spawn_with(broker.service_options(Backend::Postgres))
        .await
        .unwrap();
    let mqtt = app.mqtt.clone();
    const DEVICES: usize = 20;
    const UPDATES: usize = 1000;
    let mut clients = Vec::new();
    for i in 0..DEVICES {
        app.register_device(&format!("burst-{i}")).await;
        let (client, mut events) = mqtt.client(&format!("burst-{i}"));
        tokio::spawn(async move { while events.poll().await.is_ok() {} });
        clients.push(client);
    }
    for (i, client) in clients.iter().enumerate() {
        let client = client.clone();
        let prefix = mqtt.prefix.clone();
        tokio::spawn(async move {
            for k in 0..UPDATES {
                client
                    .publish(
                        format!("{prefix}/things/burst-{i}/shadow/update"),
                        QoS::AtLeastOnce,
                        false,
                        json!({"state": {"reported": {"seq": k}}}).to_string(),
                    )
                    .await
                    .unwrap();
            }
        });
    }
    let mut total = 0;
    for _ in 0..600 {
        total = applied_updates(&app).await;
        if total == (DEVICES * UPDATES) as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(total, (DEVICES * UPDATES) as i64, "every update applied");
    for i in 0..DEVICES {
        let (status, shadow) = app
            .call(Method::GET, &format!("/v1/devices/burst-{i}/shadow"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{shadow}");
        assert_eq!(shadow["version"], UPDATES, "{shadow}");
        assert_eq!(
            shadow["state"]["reported"]["seq"],
            UPDATES - 1,
            "applied in the order sent: {shadow}"
        );
    }
}

/// Requests sent back to back land in one batch of the bridge, where runs of updates go
/// through set-based statements: each is still answered in order, as if handled alone.
#[tokio::test]
async fn requests_sent_back_to_back_are_answered_in_order() {
    let (app, mut device) = app_with_device("quick").await;
    let sent = [
        (
            "update",
            json!({"state": {"reported": {"seq": 1}}, "clientToken": "a"}),
        ),
        (
            "update",
            json!({"state": {"reported": {"seq": 9}}, "version": 7, "clientToken": "b"}),
        ),
        (
            "update",
            json!({"state": {"reported": {"seq": 2}}, "clientToken": "c"}),
        ),
        ("get", json!({"clientToken": "d"})),
        (
            "update",
            json!({"state": {"desired": {"led": "on"}}, "clientToken": "e"}),
        ),
        (
            "update",
            json!({"state": {"reported": {"led": "on"}}, "version": 3, "clientToken": "f"}),
        ),
        ("delete", json!({"clientToken": "g"})),
        (
            "update",
            json!({"state": {"reported": {"seq": 3}}, "clientToken": "h"}),
        ),
    ];
    for (op, payload) in &sent {
        device
            .0
            .send(&format!("shadow/{op}"), payload.clone())
            .await;
    }
    let mut answers = Vec::new();
    while answers.len() < sent.len() {
        let (topic, doc) = device.next().await;
        if topic.ends_with("/accepted") || topic.ends_with("/rejected") {
            answers.push((topic, doc));
        }
    }
    let got: Vec<(&str, &str)> = answers
        .iter()
        .map(|(t, d)| (t.as_str(), d["clientToken"].as_str().unwrap_or("?")))
        .collect();
    assert_eq!(
        got,
        [
            ("update/accepted", "a"),
            ("update/rejected", "b"),
            ("update/accepted", "c"),
            ("get/accepted", "d"),
            ("update/accepted", "e"),
            ("update/accepted", "f"),
            ("delete/accepted", "g"),
            ("update/accepted", "h"),
        ]
    );
    assert_eq!(answers[1].1["code"], 409, "{}", answers[1].1);
    assert_eq!(answers[2].1["version"], 2, "{}", answers[2].1);
    assert_eq!(
        answers[3].1["state"]["reported"]["seq"], 2,
        "{}",
        answers[3].1
    );
    assert_eq!(answers[5].1["version"], 4, "{}", answers[5].1);
    let (status, shadow) = app
        .call(Method::GET, "/v1/devices/quick/shadow", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{shadow}");
    assert_eq!(shadow["state"]["reported"], json!({"seq": 3}), "{shadow}");
}

/// Shadow updates applied so far: the sum of the shadows' versions.
async fn applied_updates(app: &TestApp) -> i64 {
    use sea_orm::{ConnectionTrait, Statement};
    app.db
        .query_one_raw(Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT coalesce(sum(version), 0)::bigint AS n FROM shadows",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap()
}

/// A device flooding its shadow at QoS 0 (nothing in MQTT bounds that) cannot grow the
/// service's backlog without end: past the bridge's limit QoS 0 messages are dropped, and the
/// device's QoS 1 updates afterwards are still applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos0_flood_is_shed_and_later_updates_still_apply() {
    use fleetwave_tests::harness::broker::PlainBroker;
    fleetwave_tests::harness::init();
    let broker = PlainBroker::start().await.unwrap();
    let app = TestApp::spawn_with(broker.service_options(Backend::Postgres))
        .await
        .unwrap();
    app.register_device("flood-1").await;
    let (client, mut events) = app.mqtt.client("flood-1");
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let topic = format!("{}/things/flood-1/shadow/update", app.mqtt.prefix);
    const FLOOD: i64 = 30_000;
    for k in 0..FLOOD {
        client
            .publish(
                topic.clone(),
                QoS::AtMostOnce,
                false,
                json!({"state": {"reported": {"seq": k}}}).to_string(),
            )
            .await
            .unwrap();
    }
    let mut settled = 0;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = applied_updates(&app).await;
        if now == settled && now > 0 {
            break;
        }
        settled = now;
    }
    assert!(
        (4096..FLOOD).contains(&settled),
        "{settled} of {FLOOD} applied: the backlog was bounded, not emptied"
    );
    client
        .publish(
            topic,
            QoS::AtLeastOnce,
            false,
            json!({"state": {"reported": {"seq": "after"}}}).to_string(),
        )
        .await
        .unwrap();
    let mut after = settled;
    for _ in 0..100 {
        after = applied_updates(&app).await;
        if after > settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        after,
        settled + 1,
        "the QoS 1 update after the flood is applied"
    );
}

/// Writers racing on the same shadows lose no update: runs of updates as the bridge applies
/// them (set-based, several replicas' batches at once, devices in opposite orders; each
/// report names the firmware, as the agent's do, so the registry's device row is written
/// too) and single updates as the HTTP API and a lone request apply them, all starting
/// before any of the devices has a shadow. Each update sets a key of its own, so an update
/// written over another one would leave a key missing and the version short. A deadlock
/// (possible while a device's first shadow is created) is run again by the test for a run,
/// as the bridge does, and by `shadow::apply` itself for a single update, which must not
/// fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_the_same_shadows_lose_no_update() {
    use fleetwave::db::Conflict;
    use fleetwave::shadow::{self, Channel};
    use fleetwave_artifacts::DeviceId;
    use fleetwave_artifacts::protocol::topics::{Reply, ShadowOp};
    use sea_orm::TransactionTrait;

    const DEVICES: [&str; 3] = ["race-a", "race-b", "race-c"];
    const ROUNDS: usize = 40;
    let app = app_with_devices(&DEVICES).await;
    let things: Vec<DeviceId> = DEVICES
        .iter()
        .map(|d| DeviceId::parse(d).unwrap())
        .collect();
    let mut writers = Vec::new();
    // Two "replicas" applying runs over every device, in opposite orders.
    for w in 0..2 {
        let db = app.db.clone();
        let mut order = things.clone();
        if w == 1 {
            order.reverse();
        }
        writers.push(tokio::spawn(async move {
            for k in 0..ROUNDS {
                let payload = json!({"state": {"reported": {
                    "firmware": {"version": format!("1.{w}.{k}"), "slot": "a"},
                    format!("run{w}-{k}"): k,
                }}})
                .to_string();
                let run: Vec<(&DeviceId, &[u8])> =
                    order.iter().map(|t| (t, payload.as_bytes())).collect();
                loop {
                    let txn = db.begin().await.unwrap();
                    match shadow::update_run(&txn, &run).await {
                        Ok(answers) => {
                            for answer in &answers {
                                let accepted = Channel::Reply(ShadowOp::Update, Reply::Accepted);
                                assert!(answer.iter().any(|m| m.channel == accepted), "{answer:?}");
                            }
                            txn.commit().await.unwrap();
                            break;
                        }
                        Err(e) if e.is_transient_conflict() => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }));
    }
    // Single updates of each device's desired state (the HTTP API's and a lone request's path).
    for (w, thing) in things.iter().enumerate() {
        let db = app.db.clone();
        let thing = thing.clone();
        writers.push(tokio::spawn(async move {
            for k in 0..ROUNDS {
                let request = json!({"state": {"desired": {format!("one{w}-{k}"): k}}});
                shadow::apply(&db, &thing, &request, None)
                    .await
                    .unwrap()
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    for (w, id) in DEVICES.iter().enumerate() {
        let (status, shadow) = app
            .call(Method::GET, &format!("/v1/devices/{id}/shadow"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{shadow}");
        assert_eq!(
            shadow["version"],
            3 * ROUNDS,
            "every update counted: {shadow}"
        );
        let reported = shadow["state"]["reported"].as_object().unwrap();
        let desired = shadow["state"]["desired"].as_object().unwrap();
        for k in 0..ROUNDS {
            for run in 0..2 {
                assert_eq!(reported[&format!("run{run}-{k}")], k, "{shadow}");
            }
            assert_eq!(desired[&format!("one{w}-{k}")], k, "{shadow}");
        }
    }
}

/// A run of reports holds its devices' shadow rows until it commits, and what follows from
/// a report (the firmware, recorded in the registry) locks the device rows after them. An
/// update through the HTTP API and a device's removal, started meanwhile, wait for the run
/// without holding a device row, so nobody is aborted as a deadlock: with the device row
/// locked first (as they did), PostgreSQL broke the cycle after a second and one side failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_holding_shadows_waits_for_no_api_update_or_removal_in_a_cycle() {
    use fleetwave::audit::Actor;
    use fleetwave::registry::devices;
    use fleetwave::shadow;
    use fleetwave_artifacts::DeviceId;
    use sea_orm::TransactionTrait;

    let app = app_with_devices(&["held-a", "held-b"]).await;
    let (a, b) = (
        DeviceId::parse("held-a").unwrap(),
        DeviceId::parse("held-b").unwrap(),
    );
    let plain = json!({"state": {"reported": {"uptime": 1}}}).to_string();
    let firmware =
        json!({"state": {"reported": {"firmware": {"version": "1.1.0", "slot": "b"}}}}).to_string();
    // Both shadows exist, without firmware yet.
    committed_run(&app, &[(&a, plain.as_bytes()), (&b, plain.as_bytes())]).await;

    // The run locks both shadow rows (no device row: nothing reported firmware yet).
    let run = app.db.begin().await.unwrap();
    shadow::update_run(&run, &[(&a, plain.as_bytes()), (&b, plain.as_bytes())])
        .await
        .unwrap();
    // The API's update and removal, each in a transaction of its own run once (the API
    // runs a transaction PostgreSQL aborted again, which would hide a deadlock here).
    let update = tokio::spawn({
        let (db, a) = (app.db.clone(), a.clone());
        async move {
            let txn = db.begin().await?;
            let request = json!({"state": {"desired": {"mode": "eco"}}});
            let applied = shadow::apply_in(&txn, &a, &request, Some(&Actor::system())).await?;
            assert!(applied.is_ok(), "the update is accepted");
            txn.commit().await
        }
    });
    let removal = tokio::spawn({
        let db = app.db.clone();
        async move {
            let txn = db.begin().await?;
            match devices::delete_in(&txn, &Actor::system(), "held-b").await {
                Err(fleetwave::registry::Error::Db(e)) => return Err(e),
                other => other.expect("the device is removed"),
            }
            txn.commit().await
        }
    });
    // Both wait in the database for the run's locks.
    assert_eq!(
        lock_waits(&app, 2).await,
        2,
        "both requests wait for the run's locks"
    );
    assert!(!update.is_finished() && !removal.is_finished());
    // Now the run's reports name firmware: the device rows are written, after the shadows.
    shadow::update_run(
        &run,
        &[(&a, firmware.as_bytes()), (&b, firmware.as_bytes())],
    )
    .await
    .expect("no deadlock for the run");
    run.commit().await.unwrap();
    update
        .await
        .unwrap()
        .expect("the update applies after the run, not aborted as a deadlock");
    removal.await.unwrap().expect("the removal too");
    let (status, shadow) = app
        .call(Method::GET, "/v1/devices/held-a/shadow", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{shadow}");
    assert_eq!(shadow["version"], 4, "{shadow}");
    assert_eq!(shadow["state"]["desired"]["mode"], "eco", "{shadow}");
    assert_eq!(
        shadow["state"]["reported"]["firmware"]["version"], "1.1.0",
        "{shadow}"
    );
    let (status, _) = app.call(Method::GET, "/v1/devices/held-b", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// An API change that PostgreSQL aborts as a deadlock runs again. A batch of reports whose
/// earlier run took the audit log's lock (an execution's transition) and whose later run
/// reports firmware waits for a device's row, while the API's change of that device holds
/// the row and waits for the audit log: one of them is aborted, normally the API's (it
/// waited first, so its deadlock check runs first). On a loaded machine the batch can reach
/// its wait only after that check found no cycle yet, and is then the one aborted; the
/// scenario runs again then, up to five times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_change_aborted_as_a_deadlock_runs_again() {
    use fleetwave::audit::{self, Actor, Event};
    use fleetwave::db::Conflict;
    use fleetwave::shadow;
    use fleetwave_artifacts::DeviceId;
    use sea_orm::TransactionTrait;

    let app = app_with_devices(&["cycle-a"]).await;
    let thing = DeviceId::parse("cycle-a").unwrap();
    let firmware =
        json!({"state": {"reported": {"firmware": {"version": "1.2.0", "slot": "a"}}}}).to_string();
    let token = Some(app.admin_token.as_str());
    for attempt in 1..=5 {
        // The batch's earlier run took the audit log's lock.
        let batch = app.db.begin().await.unwrap();
        let event = Event {
            action: "test.transition",
            subject: "device:cycle-b".into(),
            details: json!({}),
        };
        audit::append(&batch, &Actor::system(), event)
            .await
            .unwrap();
        // The API's change locks the device's row, then waits for the audit log.
        let serial = format!("SN-{attempt}");
        let change = tokio::spawn(
            app.request(Method::PATCH, "/v1/devices/cycle-a", token)
                .json(&json!({ "serial": serial }))
                .send(),
        );
        assert_eq!(
            lock_waits(&app, 1).await,
            1,
            "the change waits for the audit log"
        );
        // The batch's later run reports firmware: it waits for the device's row. PostgreSQL
        // aborts the change, which runs again once the batch commits.
        let run = shadow::update_run(
            &batch,
            &[(&thing, firmware.as_bytes()), (&thing, firmware.as_bytes())],
        )
        .await;
        if let Err(e) = &run {
            assert!(e.is_transient_conflict(), "the batch failed: {e}");
            // The batch was the victim: the change goes through without running again.
            batch.rollback().await.unwrap();
            let response = change.await.unwrap().unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            continue;
        }
        batch.commit().await.unwrap();
        let response = change.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK, "the change ran again");
        let (status, device) = app.call(Method::GET, "/v1/devices/cycle-a", None).await;
        assert_eq!(status, StatusCode::OK, "{device}");
        assert_eq!(device["serial"], serial.as_str(), "{device}");
        assert_eq!(device["firmware_version"], "1.2.0", "{device}");
        return;
    }
    panic!("the batch was the deadlock's victim in every attempt");
}

/// Device reports keep the registry's firmware and last-seen time, and write a device's
/// row only when one of them changes: the same firmware reported again within a minute
/// leaves the row as it was (its `xmin` unchanged), a new version is written at once, a
/// stale last-seen time is renewed, and a person's change of the shadow does not count as
/// the device being seen. Both paths: a run of updates and a lone one.
#[tokio::test]
async fn reports_write_a_device_row_only_when_its_firmware_or_last_seen_changes() {
    use fleetwave_artifacts::DeviceId;
    use sea_orm::{ConnectionTrait, Statement};

    let app = app_with_devices(&["seen-a", "seen-b"]).await;
    let (a, b) = (
        DeviceId::parse("seen-a").unwrap(),
        DeviceId::parse("seen-b").unwrap(),
    );
    let report = |version: &str, k: u32| {
        json!({"state": {"reported": {"firmware": {"version": version, "slot": "a"}, "uptime": k}}})
            .to_string()
    };
    let run = |things: Vec<(DeviceId, String)>| {
        let app = &app;
        async move {
            let run: Vec<(&DeviceId, &[u8])> =
                things.iter().map(|(t, p)| (t, p.as_bytes())).collect();
            committed_run(app, &run).await;
        }
    };
    // (firmware, last seen, row version) of a device.
    let row = |id: &'static str| {
        let db = app.db.clone();
        async move {
            let r = db
                .query_one_raw(Statement::from_sql_and_values(
                    sea_orm::DatabaseBackend::Postgres,
                    "SELECT firmware_version, last_seen_at::text AS seen, xmin::text AS xmin \
                     FROM devices WHERE id = $1",
                    vec![id.into()],
                ))
                .await
                .unwrap()
                .unwrap();
            (
                r.try_get::<Option<String>>("", "firmware_version").unwrap(),
                r.try_get::<Option<String>>("", "seen").unwrap(),
                r.try_get::<String>("", "xmin").unwrap(),
            )
        }
    };
    let (_, never, _) = row("seen-a").await;
    assert_eq!(never, None, "not seen before its first report");

    // A run: both devices' firmware and last-seen time recorded.
    run(vec![
        (a.clone(), report("1.0.0", 1)),
        (b.clone(), report("1.0.0", 1)),
    ])
    .await;
    let first = row("seen-a").await;
    assert_eq!(first.0.as_deref(), Some("1.0.0"));
    assert!(first.1.is_some(), "seen");
    // The same firmware again, within the minute: the row is not written.
    run(vec![
        (a.clone(), report("1.0.0", 2)),
        (b.clone(), report("1.0.0", 2)),
    ])
    .await;
    run(vec![(a.clone(), report("1.0.0", 3))]).await;
    assert_eq!(
        row("seen-a").await,
        first,
        "no write for a report that changes nothing"
    );
    // A new version is written at once, by a run and by a lone update.
    run(vec![
        (a.clone(), report("1.1.0", 4)),
        (b.clone(), report("1.0.0", 4)),
    ])
    .await;
    let second = row("seen-a").await;
    assert_eq!(second.0.as_deref(), Some("1.1.0"));
    assert_ne!(second.2, first.2);
    run(vec![(b.clone(), report("1.2.0", 5))]).await;
    assert_eq!(row("seen-b").await.0.as_deref(), Some("1.2.0"));

    // A last-seen time older than a minute is renewed by the next report.
    let age = |id: &'static str| {
        let db = app.db.clone();
        async move {
            db.execute_raw(Statement::from_sql_and_values(
                sea_orm::DatabaseBackend::Postgres,
                "UPDATE devices SET last_seen_at = now() - interval '2 minutes' WHERE id = $1",
                vec![id.into()],
            ))
            .await
            .unwrap();
            row(id).await
        }
    };
    let old = age("seen-a").await;
    run(vec![
        (a.clone(), report("1.1.0", 6)),
        (b.clone(), report("1.2.0", 6)),
    ])
    .await;
    let renewed = row("seen-a").await;
    assert!(renewed.1 > old.1, "{renewed:?} renews {old:?}");
    let old = age("seen-b").await;
    run(vec![(b.clone(), report("1.2.0", 7))]).await;
    assert!(row("seen-b").await.1 > old.1, "a lone report renews it too");

    // A person's change of the shadow is not the device being seen.
    let old = age("seen-a").await;
    let (status, body) = app
        .call(
            Method::PATCH,
            "/v1/devices/seen-a/shadow",
            Some(json!({"desired": {"mode": "eco"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(row("seen-a").await, old);
}

/// A run that waited for another writer of a device's shadow sees that writer's shadow but
/// an older copy of the device's registry row: its report of the firmware the registry held
/// before (a rollback to it) must still be recorded, not judged unchanged against the older
/// copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_waited_for_another_writer_records_the_firmware_it_reports() {
    use fleetwave::shadow;
    use fleetwave_artifacts::DeviceId;
    use sea_orm::TransactionTrait;

    let app = app_with_devices(&["race-a", "race-b", "race-c"]).await;
    let [a, b, c] = ["race-a", "race-b", "race-c"].map(|id| DeviceId::parse(id).unwrap());
    let firmware = |version: &str| {
        json!({"state": {"reported": {"firmware": {"version": version, "slot": "a"}}}}).to_string()
    };
    let (old, new) = (firmware("1.0.0"), firmware("1.1.0"));
    committed_run(&app, &[(&a, old.as_bytes()), (&b, old.as_bytes())]).await;
    // The first writer reports 1.1.0 and holds the shadow's lock.
    let first = app.db.begin().await.unwrap();
    shadow::update_run(&first, &[(&a, new.as_bytes()), (&b, new.as_bytes())])
        .await
        .unwrap();
    // The second reports 1.0.0 again and waits for the shadow.
    let db = app.db.clone();
    let (a2, c2, old2) = (a.clone(), c.clone(), old.clone());
    let second = tokio::spawn(async move {
        let txn = db.begin().await.unwrap();
        shadow::update_run(&txn, &[(&a2, old2.as_bytes()), (&c2, old2.as_bytes())])
            .await
            .unwrap();
        txn.commit().await.unwrap();
    });
    assert_eq!(
        lock_waits(&app, 1).await,
        1,
        "the second run waits for the shadow"
    );
    first.commit().await.unwrap();
    second.await.unwrap();
    let (_, shadow) = app
        .call(Method::GET, "/v1/devices/race-a/shadow", None)
        .await;
    assert_eq!(
        shadow["state"]["reported"]["firmware"]["version"], "1.0.0",
        "{shadow}"
    );
    let (_, device) = app.call(Method::GET, "/v1/devices/race-a", None).await;
    assert_eq!(
        device["firmware_version"], "1.0.0",
        "the registry follows the shadow: {device}"
    );
}

/// Applies a run of device updates in a transaction of its own, committed; its answers come
/// back.
async fn committed_run(
    app: &TestApp,
    run: &[(&fleetwave_artifacts::DeviceId, &[u8])],
) -> Vec<Vec<fleetwave::shadow::Outgoing>> {
    use sea_orm::TransactionTrait;
    let txn = app.db.begin().await.unwrap();
    let answers = fleetwave::shadow::update_run(&txn, run).await.unwrap();
    txn.commit().await.unwrap();
    answers
}

/// Sessions of the test's database waiting for a lock, once there are `expected` of them
/// (or after 10 s, however many there are then).
async fn lock_waits(app: &TestApp, expected: i64) -> i64 {
    use sea_orm::{ConnectionTrait, Statement};
    let mut waiting = 0;
    for _ in 0..200 {
        waiting = app
            .db
            .query_one_raw(Statement::from_string(
                sea_orm::DatabaseBackend::Postgres,
                "SELECT count(*)::bigint AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get::<i64>("", "n")
            .unwrap();
        if waiting >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    waiting
}

// Shadows are stored as their documents. A row written before that (the shadow's fields,
// as the service stored them until 2026-11-28) is read by every path (a device's run of
// updates, set-based on PostgreSQL and one by one on SQLite; a lone update through the
// API; a read), answered with its document, and rewritten as one by its next update; a
// row whose document names another version than the row is refused as corrupt.
on_both_backends!(
    shadows_stored_in_the_earlier_format_are_read_and_rewritten,
    |backend: Backend| async move {
        use fleetwave::registry::entities::shadows;
        use fleetwave_artifacts::DeviceId;
        use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};

        let app = TestApp::spawn(backend).await.unwrap();
        for id in ["old-a", "old-b", "old-c"] {
            app.register_device(id).await;
            let document = json!({"desired": {"mode": "eco"}, "reported": {"fw": "1.0.0"},
                "desired_meta": {"mode": {"timestamp": 5}}, "reported_meta": {"fw": {"timestamp": 6}},
                "version": 3});
            shadows::ActiveModel {
                device_id: Set(id.to_owned()),
                document: Set(document.to_string()),
                version: Set(3),
                updated_at: Set(fleetwave::db::now()),
            }
            .insert(&app.db)
            .await
            .unwrap();
        }
        let stored = |id: &'static str| {
            let db = app.db.clone();
            async move {
                let row = shadows::Entity::find_by_id(id.to_owned())
                    .one(&db)
                    .await
                    .unwrap()
                    .unwrap();
                serde_json::from_str::<Value>(&row.document).unwrap()
            }
        };
        let as_document = |version: u64| {
            json!({"state": {"desired": {"mode": "eco"}, "reported": {"fw": "1.0.0"}},
                "metadata": {"desired": {"mode": {"timestamp": 5}}, "reported": {"fw": {"timestamp": 6}}},
                "version": version})
        };

        // Read through the API.
        let (status, body) = app
            .call(Method::GET, "/v1/devices/old-a/shadow", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["state"]["desired"], json!({"mode": "eco"}));
        assert_eq!(
            body["metadata"]["reported"],
            json!({"fw": {"timestamp": 6}})
        );
        assert_eq!(body["version"], 3);

        // A run of device updates answers with the earlier rows as their previous
        // documents and writes documents back.
        let (a, b) = (
            DeviceId::parse("old-a").unwrap(),
            DeviceId::parse("old-b").unwrap(),
        );
        let update = json!({"state": {"reported": {"uptime": 1}}}).to_string();
        let answers =
            committed_run(&app, &[(&a, update.as_bytes()), (&b, update.as_bytes())]).await;
        for (id, answer) in ["old-a", "old-b"].into_iter().zip(&answers) {
            let documents = answer
                .iter()
                .find(|o| o.channel == fleetwave::shadow::Channel::Documents)
                .expect("a documents answer");
            let documents: Value = serde_json::from_slice(&documents.payload).unwrap();
            assert_eq!(documents["previous"], as_document(3), "{documents}");
            assert_eq!(documents["current"]["version"], 4);
            assert_eq!(
                stored(id).await,
                documents["current"],
                "{id} is stored as its document"
            );
        }

        // A lone update through the API.
        let (status, body) = app
            .call(
                Method::PATCH,
                "/v1/devices/old-c/shadow",
                Some(json!({"desired": {"led": "on"}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let document = stored("old-c").await;
        assert_eq!(document["version"], 4);
        assert_eq!(
            document["state"]["desired"],
            json!({"mode": "eco", "led": "on"})
        );
        assert_eq!(
            document["metadata"]["reported"],
            json!({"fw": {"timestamp": 6}})
        );

        // A row whose document names another version than the row is corrupt.
        shadows::ActiveModel {
            device_id: Set("old-a".to_owned()),
            version: Set(9),
            ..Default::default()
        }
        .update(&app.db)
        .await
        .unwrap();
        let (status, body) = app
            .call(Method::GET, "/v1/devices/old-a/shadow", None)
            .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    }
);
