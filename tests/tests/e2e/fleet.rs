//! The whole chain as real processes: two `fleetwave serve` replicas on PostgreSQL, the S3
//! server and Mosquitto, `fleetwave-agent` processes on file-backed slots, the release signed
//! and uploaded and the rollout created with the `fleetwave` CLI.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetwave::registry::entities::{execution_history, job_executions};
use fleetwave_artifacts::PublicKey;
use fleetwave_tests::harness::agent::{AgentOptions, TestAgent};
use fleetwave_tests::harness::bin;
use fleetwave_tests::harness::mqtt::TestMqtt;
use fleetwave_tests::harness::postgres::TestDb;
use fleetwave_tests::harness::s3::TestBucket;
use fleetwave_tests::harness::service::ServiceProcess;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

/// Two replicas, a release key, a signed and uploaded 2.0.0.
struct Stack {
    db: TestDb,
    mqtt: TestMqtt,
    replicas: Vec<ServiceProcess>,
    token: String,
    key: PublicKey,
    release: String,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

fn cli(server: &str, token: &str, dir: &Path, args: &[&str]) -> Value {
    let out = bin::command("fleetwave")
        .args(["--json", "--server", server, "--token", token])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fleetwave {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap()
}

impl Stack {
    async fn new(image_mib: u64) -> Stack {
        fleetwave_tests::harness::init();
        let db = TestDb::new().await.unwrap();
        let bucket = TestBucket::new().await.unwrap();
        let mqtt = TestMqtt::new();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let secret = fleetwave_artifacts::SecretKey::generate().unwrap();
        secret.write_new(&d.join("release.key")).unwrap();
        let public = secret.public();
        std::fs::write(d.join("release.pub"), public.to_line()).unwrap();
        let replicas: Vec<ServiceProcess> = ["r1", "r2"]
            .iter()
            .map(|name| {
                ServiceProcess::start(name, &db.url, &bucket, &mqtt, &d.join("release.pub"), d)
                    .unwrap()
            })
            .collect();
        for r in &replicas {
            r.ready().await.unwrap();
        }
        let token = wait_token(&replicas).await;
        fleetwave::cli::demo::write_image(&d.join("os-2.0.0.img"), image_mib << 20).unwrap();
        cli(
            &replicas[0].url,
            &token,
            d,
            &[
                "release",
                "sign",
                "os-2.0.0.img",
                "--product",
                "gateway-os",
                "--version",
                "2.0.0",
                "--hardware",
                "rpi4",
                "--key",
                "release.key",
                "--out",
                "os-2.0.0.manifest.json",
            ],
        );
        let release = cli(
            &replicas[0].url,
            &token,
            d,
            &[
                "release",
                "upload",
                "os-2.0.0.img",
                "--manifest",
                "os-2.0.0.manifest.json",
            ],
        );
        Stack {
            release: release["id"].as_str().unwrap().to_owned(),
            db,
            mqtt,
            replicas,
            token,
            key: public,
            dir,
            http: reqwest::Client::new(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    async fn call(
        &self,
        replica: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.replicas[replica].url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {value}");
        value
    }

    async fn devices(&self, ids: &[String], site: &str) {
        for id in ids {
            self.call(
                1,
                reqwest::Method::POST,
                "/v1/devices",
                Some(json!({"id": id, "hardware": "rpi4", "attributes": {"site": site}})),
            )
            .await;
        }
    }

    fn agent(&self, id: &str, groups: &[&str], health: &[&str]) -> TestAgent {
        let mut options = AgentOptions::new(id, self.key);
        options.groups = groups.iter().map(|g| (*g).to_owned()).collect();
        options.health = health.iter().map(|h| (*h).to_owned()).collect();
        TestAgent::in_dir(&self.dir().join("agents").join(id), &self.mqtt, &options).unwrap()
    }

    /// Polls the rollout (through replica `via`) until `done`; returns its status.
    async fn until(&self, via: usize, id: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..secs * 5 {
            last = self
                .call(
                    via,
                    reqwest::Method::GET,
                    &format!("/v1/rollouts/{id}"),
                    None,
                )
                .await;
            if done(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "not reached within {secs} s: {last}\nr1:\n{}\nr2:\n{}",
            tail(&self.replicas[0].log()),
            tail(&self.replicas[1].log())
        );
    }

    async fn executions(&self, job: &str) -> Vec<job_executions::Model> {
        job_executions::Entity::find()
            .filter(job_executions::Column::JobId.eq(job))
            .all(&self.db.conn)
            .await
            .unwrap()
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

async fn wait_token(replicas: &[ServiceProcess]) -> String {
    for _ in 0..100 {
        if let Some(t) = replicas.iter().find_map(ServiceProcess::admin_token) {
            if !t.is_empty() {
                return t;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no replica wrote a bootstrap token");
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    let run = fleetwave_tests::harness::unique_id();
    (0..n).map(|i| format!("{prefix}{i:02}-{run}")).collect()
}

// The CLI and the agents run as child processes while this runtime polls the replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_agents_update_through_a_replica_kill_and_an_agent_crash() {
    let stack = Stack::new(4).await;
    let devices = ids("pi", 20);
    stack.devices(&devices, "lab").await;
    stack
        .call(
            1,
            reqwest::Method::POST,
            "/v1/groups",
            Some(json!({"name": "fleet"})),
        )
        .await;
    stack
        .call(
            1,
            reqwest::Method::POST,
            "/v1/groups/fleet/members",
            Some(json!({"devices": devices})),
        )
        .await;
    let mut agents: Vec<TestAgent> = devices
        .iter()
        .map(|d| stack.agent(d, &["fleet"], &[]))
        .collect();
    // The first device's agent dies (SIGABRT) after 1 MiB of its download, then comes back.
    let crashing = agents.remove(0);
    let crashed = tokio::spawn(async move {
        let status = crashing
            .run_with_fault("write:1048576", Duration::from_secs(120))
            .await
            .unwrap();
        assert!(!status.success());
        let mut agent = crashing;
        agent.start();
        agent
    });
    for a in &mut agents {
        a.start();
    }
    let dir = stack.dir();
    let created = cli(
        &stack.replicas[1].url,
        &stack.token,
        &dir,
        &[
            "rollout",
            "create",
            "--release",
            &stack.release,
            "--group",
            "fleet",
            "--name",
            "e2e",
            "--wave",
            "10%,soak=2s,halt=ANY:1",
            "--wave",
            "50%,soak=2s",
            "--wave",
            "100%",
        ],
    );
    let id = created["id"].as_str().unwrap().to_owned();
    // SIGKILL one replica once the second wave runs, and start it again.
    stack
        .until(1, &id, 120, |s| s["wave"].as_u64() >= Some(2))
        .await;
    let mut replicas = stack.replicas;
    replicas[0].restart().unwrap();
    replicas[0].ready().await.unwrap();
    let stack = Stack { replicas, ..stack };
    let end = stack
        .until(0, &id, 180, |s| s["state"] == "COMPLETED")
        .await;

    let job = end["job"].as_str().unwrap();
    let executions = stack.executions(job).await;
    assert_eq!(executions.len(), 20, "one execution per device");
    assert!(
        executions
            .iter()
            .all(|e| e.state == "SUCCEEDED" && e.execution_number == 1)
    );
    let queued = execution_history::Entity::find()
        .filter(execution_history::Column::JobId.eq(job))
        .filter(execution_history::Column::ToState.eq("QUEUED"))
        .all(&stack.db.conn)
        .await
        .unwrap();
    assert_eq!(queued.len(), 20, "each device queued once, across the kill");
    for d in &devices {
        let shadow = stack
            .call(
                0,
                reqwest::Method::GET,
                &format!("/v1/devices/{d}/shadow"),
                None,
            )
            .await;
        assert_eq!(
            shadow["state"]["reported"]["firmware"]["version"], "2.0.0",
            "{d}: {shadow}"
        );
    }
    let report = stack
        .call(
            1,
            reqwest::Method::GET,
            "/v1/audit/devices?limit=1000",
            None,
        )
        .await;
    let report = report.as_array().unwrap();
    assert_eq!(report.len(), 20);
    assert!(
        report
            .iter()
            .all(|l| l["version"] == "2.0.0" && l["rollout"] == id.as_str()),
        "{report:?}"
    );
    let audit = stack
        .call(0, reqwest::Method::GET, "/v1/audit/verify", None)
        .await;
    assert!(audit["broken"].is_null(), "{audit}");
    let crashed = crashed.await.unwrap();
    assert!(
        crashed.log().contains("fault injected after"),
        "{}",
        crashed.log()
    );
    assert_eq!(crashed.bootloader()["default"], "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_canary_halts_and_no_later_device_changes() {
    let stack = Stack::new(1).await;
    let devices = ids("sick", 10);
    stack.devices(&devices, "lab").await;
    stack
        .call(
            1,
            reqwest::Method::POST,
            "/v1/groups",
            Some(json!({"name": "fleet"})),
        )
        .await;
    stack
        .call(
            1,
            reqwest::Method::POST,
            "/v1/groups/fleet/members",
            Some(json!({"devices": devices})),
        )
        .await;
    // Every device would fail its health check on the new image; the canary finds out.
    let mut agents: Vec<TestAgent> = devices
        .iter()
        .map(|d| stack.agent(d, &["fleet"], &["sh", "-c", "exit 1"]))
        .collect();
    for a in &mut agents {
        a.start();
    }
    let created = cli(
        &stack.replicas[1].url,
        &stack.token,
        &stack.dir(),
        &[
            "rollout",
            "create",
            "--release",
            &stack.release,
            "--group",
            "fleet",
            "--wave",
            "2,halt=FAILED:1",
            "--wave",
            "100%",
        ],
    );
    let id = created["id"].as_str().unwrap().to_owned();
    let end = stack.until(0, &id, 120, |s| s["state"] == "HALTED").await;
    let canary = end["wave_status"][0]["planned"].as_u64().unwrap() as usize;
    let job = end["job"].as_str().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let executions = stack.executions(job).await;
    assert_eq!(executions.len(), canary, "nothing queued beyond the canary");
    let touched: Vec<&String> = devices
        .iter()
        .zip(&agents)
        .filter(|(_, a)| !a.slot("b").is_empty())
        .map(|(d, _)| d)
        .collect();
    assert!(
        touched.len() <= canary,
        "only canary devices wrote a slot: {touched:?}"
    );
    for (d, a) in devices.iter().zip(&agents) {
        assert_eq!(a.bootloader()["default"], "a", "{d} runs its old slot");
        assert_eq!(a.slot("a"), a.original);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_joining_the_dynamic_group_mid_rollout_is_updated() {
    let stack = Stack::new(1).await;
    let devices = ids("berlin", 6);
    stack.devices(&devices, "berlin").await;
    stack
        .call(
            1,
            reqwest::Method::POST,
            "/v1/groups",
            Some(json!({"name": "berlin", "query": "attributes.site = \"berlin\""})),
        )
        .await;
    let mut agents: Vec<TestAgent> = devices.iter().map(|d| stack.agent(d, &[], &[])).collect();
    for a in &mut agents {
        a.start();
    }
    let created = cli(
        &stack.replicas[1].url,
        &stack.token,
        &stack.dir(),
        &[
            "rollout",
            "create",
            "--release",
            &stack.release,
            "--group",
            "berlin",
            "--wave",
            "50%,soak=8s",
            "--wave",
            "100%",
        ],
    );
    let id = created["id"].as_str().unwrap().to_owned();
    stack
        .until(0, &id, 60, |s| {
            !s["wave_status"][0]["threshold_met_at"].is_null()
        })
        .await;
    let late = ids("late", 1);
    stack.devices(&late, "berlin").await;
    let mut joiner = stack.agent(&late[0], &[], &[]);
    joiner.start();
    let end = stack
        .until(1, &id, 120, |s| s["state"] == "COMPLETED")
        .await;
    assert_eq!(
        end["wave_status"][0]["planned"], 4,
        "3 of 6 plus the joiner: {end}"
    );
    assert_eq!(joiner.bootloader()["default"], "b");
    let line = stack
        .call(
            0,
            reqwest::Method::GET,
            &format!("/v1/devices/{}", late[0]),
            None,
        )
        .await;
    assert_eq!(line["firmware_version"], "2.0.0");
}
