//! `fleetwave serve` with no configuration at all, as on a fresh machine: it starts on the
//! embedded defaults (SQLite, a local object directory, the in-process MQTT broker), prints
//! its URLs and a bootstrap token, answers /v1/health and relays MQTT messages.

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
        .env("FLEETWAVE__MQTT__LISTEN", "127.0.0.1:0")
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
    let mqtt_line = lines.next().unwrap().unwrap();
    let mqtt_url = mqtt_line
        .split_whitespace()
        .find(|w| w.starts_with("mqtt://"))
        .unwrap_or_else(|| panic!("an MQTT URL in {mqtt_line:?}"))
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
    mqtt_round_trip(&mqtt_url).await;
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Subscribes and publishes through the broker at `url` and sees the message come back.
async fn mqtt_round_trip(url: &str) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let addr: std::net::SocketAddr = url.trim_start_matches("mqtt://").parse().unwrap();
    let options = MqttOptions::new("serve-test", addr.ip().to_string(), addr.port());
    let (client, mut events) = AsyncClient::new(options, 10);
    client
        .subscribe("fleetwave/test/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match events
                .poll()
                .await
                .expect("the embedded broker accepts the connection")
            {
                Event::Incoming(Packet::SubAck(_)) => {
                    client
                        .publish("fleetwave/test/hello", QoS::AtLeastOnce, false, "hi")
                        .await
                        .unwrap();
                }
                Event::Incoming(Packet::Publish(p)) => return p,
                _ => {}
            }
        }
    })
    .await
    .expect("the message comes back within 10 s");
    assert_eq!(&got.payload[..], b"hi");
}
