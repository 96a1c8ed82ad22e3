//! Job executions over the real broker and database: a targeted job reaches its device on
//! notify-next with a URL that downloads the release, start-next and jobs/{job}/get answer
//! with fresh URLs, and the device's reports through its shadow drive the execution through
//! legal transitions only, each recorded once.

use fleetwave::jobs::{self, Change, Refused};
use fleetwave::registry::entities::{devices, job_executions};
use fleetwave_artifacts::protocol::jobs::{ExecutionState, JobDocument, Step};
use fleetwave_artifacts::{DeviceId, SecretKey};
use fleetwave_tests::harness::app::{Backend, Options, TestApp};
use fleetwave_tests::harness::device::SimDevice;
use fleetwave_tests::harness::s3::TestBucket;
use reqwest::{Method, StatusCode};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait, TransactionTrait};
use serde_json::{Value, json};

use crate::on_both_backends;
use crate::releases::{image, manifest, sign, upload};

/// A device that hears its jobs and reports through its shadow.
struct Device(SimDevice);

impl Device {
    async fn connect(app: &TestApp, id: &str) -> Device {
        Device(SimDevice::connect(&app.mqtt, id, &["jobs/#", "shadow/update/accepted"]).await)
    }

    async fn expect(&mut self, suffix: &str) -> Vec<u8> {
        self.0.expect(suffix).await
    }

    async fn send(&self, topic: &str, payload: Value) {
        self.0.send(topic, payload).await;
    }

    /// Reports `ota` through the shadow and waits until the service accepted it.
    async fn report(&mut self, ota: Value) {
        self.send(
            "shadow/update",
            json!({"state": {"reported": {"ota": ota}}}),
        )
        .await;
        self.expect("shadow/update/accepted").await;
    }
}

#[tokio::test]
async fn a_targeted_job_runs_through_its_states_on_reports() {
    let key = SecretKey::generate().unwrap();
    let mut options = Options::new(Backend::Postgres);
    options.trusted_keys = vec![key.public()];
    options.s3 = Some(TestBucket::new().await.unwrap());
    let app = TestApp::spawn_with(options).await.unwrap();
    app.register_device("pi-1").await;
    let bytes = image(200_000, 9);
    let (status, release) = upload(
        &app,
        sign(manifest(&bytes, "3.0.0", -60, 3600), &key),
        bytes.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{release}");
    let mut d = Device::connect(&app, "pi-1").await;

    let (status, job) = app
        .call(
            Method::POST,
            "/v1/jobs",
            Some(json!({"release": release["id"], "device": "pi-1"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let job_id = job["id"].as_str().unwrap().to_owned();

    // notify-next carries the signed manifest and a URL that downloads the release.
    let doc: JobDocument = serde_json::from_slice(&d.expect("jobs/notify-next").await).unwrap();
    assert_eq!(doc.job, job_id);
    assert_eq!(doc.state, ExecutionState::Queued);
    assert_eq!(doc.manifest.manifest().version.to_string(), "3.0.0");
    let got = app.http.get(&doc.url).send().await.unwrap();
    assert!(
        got.bytes().await.unwrap() == bytes,
        "the job's URL downloads the release"
    );

    // start-next and jobs/{job}/get answer with the same job and a fresh URL.
    d.send("jobs/start-next", json!({})).await;
    let next: JobDocument =
        serde_json::from_slice(&d.expect("jobs/start-next/accepted").await).unwrap();
    assert_eq!(next.job, job_id);
    assert!(
        app.http
            .get(&next.url)
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    d.send(&format!("jobs/{job_id}/get"), json!({})).await;
    let one: JobDocument =
        serde_json::from_slice(&d.expect(&format!("jobs/{job_id}/get/accepted")).await).unwrap();
    assert_eq!(one.release, release["id"].as_str().unwrap());
    d.send("jobs/no-such-job/get", json!({})).await;
    let missing: Value =
        serde_json::from_slice(&d.expect("jobs/no-such-job/get/rejected").await).unwrap();
    assert_eq!(missing["code"], 404);

    // Reports drive the execution; a duplicate, a stale step and anything after the end
    // change nothing.
    let ota = |state: &str, step: Option<&str>, progress: u8| {
        let mut o = json!({"job": job_id, "state": state, "progress": progress});
        if let Some(s) = step {
            o["step"] = s.into();
        }
        o
    };
    d.report(ota("IN_PROGRESS", Some("downloading"), 10)).await;
    d.report(ota("IN_PROGRESS", Some("downloading"), 10)).await;
    d.report(ota("IN_PROGRESS", Some("verifying"), 0)).await;
    d.report(ota("IN_PROGRESS", Some("downloading"), 90)).await;
    // SUCCEEDED counts only with the release's version running (booted and committed).
    d.report(ota("SUCCEEDED", None, 100)).await;
    d.send(
        "shadow/update",
        json!({"state": {"reported": {
            "firmware": {"version": "3.0.0", "slot": "b"},
            "ota": ota("SUCCEEDED", None, 100),
        }}}),
    )
    .await;
    d.expect("shadow/update/accepted").await;
    d.report(json!({"job": job_id, "state": "FAILED", "error": {"code": "x", "message": "late"}}))
        .await;

    let (status, execution) = app
        .call(
            Method::GET,
            &format!("/v1/jobs/{job_id}/executions/pi-1"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{execution}");
    assert_eq!(execution["state"], "SUCCEEDED");
    let transitions: Vec<(Value, Value)> = execution["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["to"].clone(), h["step"].clone()))
        .collect();
    assert_eq!(
        transitions,
        vec![
            (json!("QUEUED"), Value::Null),
            (json!("IN_PROGRESS"), json!("downloading")),
            (json!("IN_PROGRESS"), json!("verifying")),
            (json!("SUCCEEDED"), Value::Null),
        ],
        "each transition once: {execution}"
    );
    assert_eq!(execution["version"], 4);
    assert_eq!(
        execution["history"][1]["hardware"], "rpi4",
        "the device's details are recorded"
    );

    // With nothing left to do, start-next says so.
    d.send("jobs/start-next", json!({})).await;
    let none: Value = serde_json::from_slice(&d.expect("jobs/start-next/rejected").await).unwrap();
    assert_eq!(none["code"], 404);
}

/// Every (from, to) pair of execution states: legal ones apply, illegal ones are refused
/// with the reason, on the real database.
#[tokio::test]
async fn every_transition_follows_the_table() {
    let key = SecretKey::generate().unwrap();
    let mut options = Options::new(Backend::Postgres);
    options.trusted_keys = vec![key.public()];
    let app = TestApp::spawn_with(options).await.unwrap();
    app.register_device("pi-9").await;
    let bytes = image(1000, 1);
    let (_, release) = upload(
        &app,
        sign(manifest(&bytes, "1.0.0", -60, 3600), &key),
        bytes,
    )
    .await;
    let (_, job) = app
        .call(
            Method::POST,
            "/v1/jobs",
            Some(json!({"release": release["id"], "device": "pi-9"})),
        )
        .await;
    let job = job["id"].as_str().unwrap();
    let device = DeviceId::parse("pi-9").unwrap();
    // The device runs the release, so SUCCEEDED is judged by the table alone.
    let mut running: devices::ActiveModel = devices::Entity::find_by_id("pi-9".to_owned())
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
        .into();
    running.firmware_version = Set(Some("1.0.0".to_owned()));
    running.update(&app.db).await.unwrap();
    for from in ExecutionState::ALL {
        for to in ExecutionState::ALL {
            let row = job_executions::Entity::find_by_id((job.to_owned(), "pi-9".to_owned()))
                .one(&app.db)
                .await
                .unwrap()
                .unwrap();
            let mut reset: job_executions::ActiveModel = row.into();
            reset.state = Set(from.as_str().to_owned());
            reset.step = Set(Some("downloading".to_owned()));
            reset.progress = Set(Some(10));
            reset.update(&app.db).await.unwrap();
            let change = Change {
                to,
                step: (to == ExecutionState::InProgress).then_some(Step::Verifying),
                progress: Some(0),
                error: None,
            };
            let txn = app.db.begin().await.unwrap();
            let outcome = jobs::transition(&txn, job, &device, &change).await.unwrap();
            txn.rollback().await.unwrap();
            match outcome {
                Ok(e) => {
                    assert!(from.can_become(to), "{from} → {to} applied but is illegal");
                    assert_eq!(e.state, to.as_str());
                }
                Err(Refused::Illegal { from: f, to: t }) => {
                    assert!(!from.can_become(to), "{from} → {to} refused but is legal");
                    assert_eq!((f, t), (from, to));
                    assert_eq!(
                        Refused::Illegal { from, to }.to_string(),
                        format!("{from} cannot become {to}")
                    );
                }
                Err(other) => panic!("{from} → {to}: {other}"),
            }
        }
    }
}

on_both_backends!(
    a_deleted_device_takes_its_executions_but_not_its_history,
    |backend: Backend| async move {
        use fleetwave::registry::entities::execution_history;
        use sea_orm::{ColumnTrait, QueryFilter};

        let key = SecretKey::generate().unwrap();
        let mut options = Options::new(backend);
        options.trusted_keys = vec![key.public()];
        let app = TestApp::spawn_with(options).await.unwrap();
        for id in ["pi-7", "pi-8"] {
            app.register_device(id).await;
        }
        let bytes = image(1000, 2);
        let (_, release) = upload(
            &app,
            sign(manifest(&bytes, "1.0.0", -60, 3600), &key),
            bytes,
        )
        .await;
        for id in ["pi-7", "pi-8"] {
            let (status, job) = app
                .call(
                    Method::POST,
                    "/v1/jobs",
                    Some(json!({"release": release["id"], "device": id})),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{job}");
        }
        let (status, _) = app.call(Method::DELETE, "/v1/devices/pi-7", None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let left: Vec<String> = job_executions::Entity::find()
            .all(&app.db)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.device_id)
            .collect();
        assert_eq!(
            left,
            ["pi-8"],
            "the deleted device's execution went with it"
        );
        let history = execution_history::Entity::find()
            .filter(execution_history::Column::DeviceId.eq("pi-7"))
            .all(&app.db)
            .await
            .unwrap();
        assert_eq!(history.len(), 1, "what the device was asked to run stays");
    }
);

/// On PostgreSQL executions have no foreign keys: a device's deletion waits for every
/// transaction writing executions to end, then takes the executions written there too.
#[tokio::test]
async fn a_device_deletion_waits_for_the_executions_being_written() {
    let app = TestApp::spawn(Backend::Postgres).await.unwrap();
    app.register_device("pi-5").await;
    let now = chrono::Utc::now();
    let txn = app.db.begin().await.unwrap();
    fleetwave::registry::devices::hold_devices(&txn)
        .await
        .unwrap();
    write_queued_execution(&txn, "job-5", "pi-5", now).await;
    let deletion = tokio::spawn(
        app.request(Method::DELETE, "/v1/devices/pi-5", Some(&app.admin_token))
            .send(),
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !deletion.is_finished(),
        "the deletion waits for the transaction writing an execution"
    );
    txn.commit().await.unwrap();
    assert_eq!(
        deletion.await.unwrap().unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert!(
        job_executions::Entity::find()
            .all(&app.db)
            .await
            .unwrap()
            .is_empty(),
        "the execution written meanwhile went with its device"
    );
}

/// A transaction that holds a device's row and then takes its execution (as a report
/// that records new firmware and then transitions its execution does); a deletion of the
/// same device must take them in the same order, or the two deadlock.
#[tokio::test]
async fn a_device_deletion_and_a_report_of_the_same_device_do_not_deadlock() {
    use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};

    let app = TestApp::spawn(Backend::Postgres).await.unwrap();
    app.register_device("pi-6").await;
    let now = chrono::Utc::now();
    write_queued_execution(&app.db, "job-6", "pi-6", now).await;
    // The report: the device's firmware recorded (its row locked)...
    let report = app.db.begin().await.unwrap();
    fleetwave_tests::harness::app::record_firmware(&report, "pi-6", &semver::Version::new(1, 0, 0))
        .await;
    let deletion = tokio::spawn(
        app.request(Method::DELETE, "/v1/devices/pi-6", Some(&app.admin_token))
            .send(),
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // ...then its execution, while the deletion waits.
    report
        .query_all_raw(Statement::from_string(
            DatabaseBackend::Postgres,
            "SELECT state FROM job_executions WHERE job_id = 'job-6' AND device_id = 'pi-6' \
             FOR UPDATE",
        ))
        .await
        .expect("the report is not chosen as a deadlock victim");
    report.commit().await.unwrap();
    assert_eq!(
        deletion.await.unwrap().unwrap().status(),
        StatusCode::NO_CONTENT
    );
}

/// A run of reports in which a device's firmware changes (its reports straddle a reboot)
/// records each report's firmware before that report's transition: the execution's history
/// keeps the firmware the device ran when it reported, and the registry the last.
#[tokio::test]
async fn each_report_of_a_run_transitions_with_its_own_firmware() {
    use fleetwave::registry::entities::execution_history;
    use fleetwave::shadow;
    use sea_orm::{ColumnTrait, QueryFilter};

    let app = TestApp::spawn(Backend::Postgres).await.unwrap();
    app.register_device("pi-7").await;
    app.register_device("pi-8").await;
    write_queued_execution(&app.db, "job-7", "pi-7", chrono::Utc::now()).await;
    let (pi7, pi8) = (
        DeviceId::parse("pi-7").unwrap(),
        DeviceId::parse("pi-8").unwrap(),
    );
    let downloading = json!({"state": {"reported": {
        "firmware": {"version": "1.0.0", "slot": "a"},
        "ota": {"job": "job-7", "state": "IN_PROGRESS", "step": "downloading", "progress": 0},
    }}})
    .to_string();
    let rebooted =
        json!({"state": {"reported": {"firmware": {"version": "2.0.0", "slot": "b"}}}}).to_string();
    let other = json!({"state": {"reported": {"uptime": 1}}}).to_string();
    let txn = app.db.begin().await.unwrap();
    shadow::update_run(
        &txn,
        &[
            (&pi7, downloading.as_bytes()),
            (&pi8, other.as_bytes()),
            (&pi7, rebooted.as_bytes()),
        ],
    )
    .await
    .unwrap();
    txn.commit().await.unwrap();
    let history = execution_history::Entity::find()
        .filter(execution_history::Column::JobId.eq("job-7"))
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].to_state, "IN_PROGRESS");
    assert_eq!(
        history[0].firmware_version.as_deref(),
        Some("1.0.0"),
        "the firmware at the report, not the run's last"
    );
    let (_, device) = app.call(Method::GET, "/v1/devices/pi-7", None).await;
    assert_eq!(device["firmware_version"], "2.0.0", "{device}");
}

/// Writes job `job` (of no release the service knows) and its QUEUED execution on `device`.
async fn write_queued_execution(
    db: &impl sea_orm::ConnectionTrait,
    job: &str,
    device: &str,
    now: chrono::DateTime<chrono::Utc>,
) {
    use fleetwave::registry::entities::jobs as job_rows;

    job_rows::Entity::insert(job_rows::ActiveModel {
        id: Set(job.to_owned()),
        release_id: Set(format!("release-of-{job}")),
        rollout_id: Set(None),
        created_by: Set("test".to_owned()),
        created_at: Set(now),
    })
    .exec_without_returning(db)
    .await
    .unwrap();
    job_executions::Entity::insert(job_executions::ActiveModel::from(
        job_executions::Model::queued(job.to_owned(), device.to_owned(), now, None),
    ))
    .exec_without_returning(db)
    .await
    .unwrap();
}
