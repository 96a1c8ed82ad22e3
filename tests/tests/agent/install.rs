//! Installs that go the whole way: trial boot, health check, commit, SUCCEEDED; a crash at
//! every persisted step; a failing health check that rolls back.

use fleetwave_agent::download::CHUNK;
use fleetwave_tests::harness::agent::{AgentOptions, TestAgent};

use super::{World, device_id};

/// The device committed the new slot and the service knows it.
async fn assert_updated(world: &World, agent: &TestAgent, job: &str, device: &str) {
    let e = world.finished(job, device, || agent.log()).await;
    assert_eq!(e["state"], "SUCCEEDED", "{e}\n{}", agent.log());
    assert_eq!(world.registry(device).await["firmware_version"], "2.0.0");
    let boot = agent.bootloader();
    assert_eq!(
        (boot["default"].as_str(), boot["booted"].as_str()),
        (Some("b"), Some("b")),
        "{boot}"
    );
    assert_eq!(agent.slot("b"), world.image, "slot B holds the release");
    assert_eq!(agent.slot("a"), agent.original, "slot A is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_update_trial_boots_commits_and_reports_success() {
    let world = World::new(3 * 1024 * 1024 + 12_345).await;
    let id = device_id("pi");
    world.app.register_device(&id).await;
    let mut agent =
        TestAgent::new(&world.app.mqtt, &AgentOptions::new(&id, world.key.public())).unwrap();
    agent.start();
    let job = world.job(&id).await;
    assert_updated(&world, &agent, &job, &id).await;
    let e = world.execution(&job, &id).await;
    let steps: Vec<&str> = e["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["step"].as_str())
        .collect();
    for step in [
        "downloading",
        "verifying",
        "installing",
        "rebooting",
        "health-check",
    ] {
        assert!(steps.contains(&step), "{step} reported: {steps:?}");
    }
    assert!(
        agent.starts.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "it rebooted into the trial"
    );
    assert_eq!(
        agent.settled("Idle").await["phase"],
        "Idle",
        "{}",
        agent.log()
    );
}

/// Every point where the agent persists (and one in the middle of the slot write): the
/// process dies there, starts again, and the device still ends updated with a true report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_persisted_step_ends_updated_and_truly_reported() {
    let world = World::new(2 * CHUNK as usize + 777).await;
    let mid_write = format!("write:{CHUNK}");
    let cuts = [
        "persist:Downloading",
        &mid_write,
        "persist:Verifying",
        "persist:Switching",
        "persist:Rebooting",
        "persist:HealthCheck",
        "persist:Committing",
        "persist:Reporting",
        "persist:Idle",
    ];
    for cut in cuts {
        let id = device_id("cut");
        world.app.register_device(&id).await;
        let mut agent =
            TestAgent::new(&world.app.mqtt, &AgentOptions::new(&id, world.key.public())).unwrap();
        let job = world.job(&id).await;
        let status = agent
            .run_with_fault(cut, std::time::Duration::from_secs(60))
            .await
            .unwrap();
        assert!(!status.success(), "{cut}: the process died at the fault");
        assert!(
            agent.log().contains("fault injected"),
            "{cut}: {}",
            agent.log()
        );
        agent.start();
        assert_updated(&world, &agent, &job, &id).await;
        agent.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_health_check_rolls_back_and_reports_failed() {
    let world = World::new(100_000).await;
    let id = device_id("sick");
    world.app.register_device(&id).await;
    let mut options = AgentOptions::new(&id, world.key.public());
    options.health = vec![
        "sh".into(),
        "-c".into(),
        "echo disk on fire >&2; exit 3".into(),
    ];
    let mut agent = TestAgent::new(&world.app.mqtt, &options).unwrap();
    agent.start();
    let job = world.job(&id).await;
    let e = world.finished(&job, &id, || agent.log()).await;
    assert_eq!(e["state"], "FAILED", "{e}");
    assert_eq!(e["error_code"], "health_check_failed");
    let boot = agent.bootloader();
    assert_eq!(
        (boot["default"].as_str(), boot["booted"].as_str()),
        (Some("a"), Some("a")),
        "back on the old slot: {boot}"
    );
    assert_eq!(world.registry(&id).await["firmware_version"], "1.0.0");
    assert_eq!(agent.slot("a"), agent.original);
}

/// A rollout to a static group of real agents: the first wave hears the group's retained
/// notice, checks its bucket and installs; the second follows; every device ends on 2.0.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_reaches_real_agents_through_the_group_notice() {
    let world = World::new(200_000).await;
    world
        .app
        .call(
            reqwest::Method::POST,
            "/v1/groups",
            Some(serde_json::json!({"name": "lab"})),
        )
        .await;
    let mut agents = Vec::new();
    let mut ids = Vec::new();
    for i in 0..6 {
        let id = device_id(&format!("lab{i}"));
        world.app.register_device(&id).await;
        let mut options = AgentOptions::new(&id, world.key.public());
        options.groups = vec!["lab".into()];
        let mut agent = TestAgent::new(&world.app.mqtt, &options).unwrap();
        agent.start();
        agents.push(agent);
        ids.push(id);
    }
    let (status, body) = world
        .app
        .call(
            reqwest::Method::POST,
            "/v1/groups/lab/members",
            Some(serde_json::json!({"devices": ids})),
        )
        .await;
    assert!(status.is_success(), "{body}");
    let (status, rollout) = world
        .app
        .call(
            reqwest::Method::POST,
            "/v1/rollouts",
            Some(serde_json::json!({
                "release": world.release,
                "target": {"group": "lab"},
                "waves": [{"size": {"count": 2}}, {"size": {"percent": 100}}],
            })),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{rollout}");
    let id = rollout["id"].as_str().unwrap();
    let mut last = serde_json::Value::Null;
    for _ in 0..300 {
        world.app.engine.tick(chrono::Utc::now()).await.unwrap();
        last = world
            .app
            .call(reqwest::Method::GET, &format!("/v1/rollouts/{id}"), None)
            .await
            .1;
        if last["state"] == "COMPLETED" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let logs: Vec<String> = agents.iter().map(TestAgent::log).collect();
    assert_eq!(
        last["state"],
        "COMPLETED",
        "{last}\n{}",
        logs.join("\n---\n")
    );
    for (agent, id) in agents.iter().zip(&ids) {
        assert_eq!(world.registry(id).await["firmware_version"], "2.0.0");
        assert_eq!(agent.bootloader()["default"], "b");
    }
}

/// Under systemd (`Type=notify`, `WatchdogSec`), the agent says READY=1 and keeps feeding
/// the watchdog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_notifies_systemd_and_feeds_its_watchdog() {
    let world = World::new(1000).await;
    let id = device_id("systemd");
    world.app.register_device(&id).await;
    let tmp = tempfile::tempdir().unwrap();
    let socket_path = tmp.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut options = AgentOptions::new(&id, world.key.public());
    options.env = vec![
        ("NOTIFY_SOCKET".into(), socket_path.display().to_string()),
        ("WATCHDOG_USEC".into(), "1000000".into()),
    ];
    let mut agent = TestAgent::new(&world.app.mqtt, &options).unwrap();
    agent.start();
    let got = tokio::task::spawn_blocking(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while got
            .iter()
            .filter(|m: &&String| m.as_str() == "WATCHDOG=1")
            .count()
            < 3
        {
            let n = socket.recv(&mut buf).expect("a notification within 20 s");
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        got
    })
    .await
    .unwrap();
    assert_eq!(got[0], "READY=1", "{got:?}");
    agent.stop();
}
