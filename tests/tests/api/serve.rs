//! `fleetwave serve` with no configuration at all, as on a fresh machine: it starts on the
//! embedded defaults, prints its URL and a bootstrap token, and answers /v1/health.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use fleetwave_tests::harness::bin;

#[tokio::test]
async fn serve_with_no_configuration_answers_health() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = bin::command("fleetwave")
        .arg("serve")
        .current_dir(dir.path())
        // Port 0: the embedded default port may be taken on a shared machine.
        .env("FLEETWAVE__SERVER__LISTEN", "127.0.0.1:0")
        .env_remove("FLEETWAVE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("a URL in {first:?}"))
        .to_owned();
    let token_line = lines.next().unwrap().unwrap();
    assert!(token_line.contains("fwt_"), "{token_line}");
    let health: serde_json::Value = reqwest::get(format!("{url}/v1/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready = reqwest::get(format!("{url}/v1/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(
        dir.path().join("fleetwave-data/fleetwave.db").is_file(),
        "the SQLite file is in the data dir"
    );
    assert!(dir.path().join("fleetwave-data/admin.token").is_file());
    child.kill().unwrap();
    child.wait().unwrap();
}
