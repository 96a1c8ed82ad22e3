//! Device identity on a real Mosquitto with the configuration `fleetwave broker config`
//! writes: mutual TLS with certificates from `fleetwave ca init` / `device provision`,
//! identity = CN, the CRL honoured, each device confined to its own topics.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleetwave_tests::harness::broker::{TlsBroker, fleetwave};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS client with the certificate and key in `cert`/`key`, trusting `ca`.
fn client(name: &str, port: u16, ca: &Path, cert: &Path, key: &Path) -> (AsyncClient, EventLoop) {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let mut options = MqttOptions::new(
        format!("{name}-{}", fleetwave_tests::harness::unique_id()),
        "127.0.0.1",
        port,
    );
    options.set_keep_alive(Duration::from_secs(10));
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(config),
    )));
    AsyncClient::new(options, 32)
}

/// Polls until connected (true) or a connection error (false).
async fn connects(events: &mut EventLoop) -> bool {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false)
}

/// Messages (topic, payload) received within `wait`.
async fn received(events: &mut EventLoop, wait: Duration) -> Vec<(String, String)> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = events.poll().await {
                got.push((
                    p.topic.clone(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                ));
            }
        }
    })
    .await;
    got
}

/// Keeps an event loop polled in the background (for a client that only publishes).
fn pump(mut events: EventLoop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while events.poll().await.is_ok() {} })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_confines_each_device_to_its_own_topics() {
    fleetwave_tests::harness::init();
    let mut broker = TlsBroker::start("fw").await.unwrap();
    for id in ["dev-a", "dev-b", "dev-c"] {
        broker.provision(id).unwrap();
    }
    broker.revoke("dev-c").await.unwrap();
    let port = broker.port;
    let d = broker.dir().to_owned();
    let ca = d.join("broker/ca.pem");

    let (service, mut service_events) = client(
        "service",
        port,
        &ca,
        &d.join("broker/service.pem"),
        &d.join("broker/service.key"),
    );
    assert!(
        connects(&mut service_events).await,
        "the service connects with its certificate"
    );
    service.subscribe("fw/#", QoS::AtLeastOnce).await.unwrap();
    let (a, mut a_events) = client(
        "a",
        port,
        &ca,
        &d.join("dev-a/device.pem"),
        &d.join("dev-a/device.key"),
    );
    assert!(connects(&mut a_events).await, "device A connects");
    let (b, mut b_events) = client(
        "b",
        port,
        &ca,
        &d.join("dev-b/device.pem"),
        &d.join("dev-b/device.key"),
    );
    assert!(connects(&mut b_events).await, "device B connects");
    b.subscribe("fw/things/dev-b/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    a.subscribe("fw/things/dev-b/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    a.subscribe("fw/groups/lab/jobs/notify", QoS::AtLeastOnce)
        .await
        .unwrap();
    let _ = received(&mut service_events, Duration::from_millis(300)).await;
    let _ = received(&mut a_events, Duration::from_millis(300)).await;
    let _ = received(&mut b_events, Duration::from_millis(300)).await;

    // A publishes as B and as itself, and on a group notice: only its own topic gets through.
    a.publish(
        "fw/things/dev-b/shadow/update",
        QoS::AtLeastOnce,
        false,
        "forged",
    )
    .await
    .unwrap();
    a.publish(
        "fw/things/dev-a/shadow/update",
        QoS::AtLeastOnce,
        false,
        "own",
    )
    .await
    .unwrap();
    a.publish(
        "fw/groups/lab/jobs/notify",
        QoS::AtLeastOnce,
        false,
        "fake notice",
    )
    .await
    .unwrap();
    let a_pump = pump(a_events);
    let seen = received(&mut service_events, Duration::from_millis(1500)).await;
    assert!(
        seen.contains(&("fw/things/dev-a/shadow/update".into(), "own".into())),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|(_, p)| p == "forged" || p == "fake notice"),
        "{seen:?}"
    );
    a_pump.abort();

    // The service writes to B and to the group: B hears its job, A hears only the notice.
    let (a2, mut a2_events) = client(
        "a2",
        port,
        &ca,
        &d.join("dev-a/device.pem"),
        &d.join("dev-a/device.key"),
    );
    assert!(connects(&mut a2_events).await);
    a2.subscribe("fw/things/dev-b/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    a2.subscribe("fw/groups/lab/jobs/notify", QoS::AtLeastOnce)
        .await
        .unwrap();
    let _ = received(&mut a2_events, Duration::from_millis(300)).await;
    let service_pump = pump(service_events);
    service
        .publish(
            "fw/things/dev-b/jobs/notify-next",
            QoS::AtLeastOnce,
            false,
            "for b",
        )
        .await
        .unwrap();
    service
        .publish(
            "fw/groups/lab/jobs/notify",
            QoS::AtLeastOnce,
            false,
            "notice",
        )
        .await
        .unwrap();
    let b_got = received(&mut b_events, Duration::from_millis(1500)).await;
    let a_got = received(&mut a2_events, Duration::from_millis(500)).await;
    assert!(b_got.iter().any(|(_, p)| p == "for b"), "{b_got:?}");
    assert!(
        !a_got.iter().any(|(_, p)| p == "for b"),
        "A read B's job: {a_got:?}"
    );
    assert!(
        a_got.iter().any(|(_, p)| p == "notice"),
        "A reads its group's notice: {a_got:?}"
    );
    service_pump.abort();

    // A revoked certificate and one from another CA cannot connect.
    let (_c, mut c_events) = client(
        "c",
        port,
        &ca,
        &d.join("dev-c/device.pem"),
        &d.join("dev-c/device.key"),
    );
    assert!(
        !connects(&mut c_events).await,
        "a revoked certificate is refused"
    );
    let other = d.join("other");
    fleetwave(&d, &["ca", "init", "--dir", "other-pki"]).unwrap();
    fleetwave(
        &d,
        &[
            "device",
            "provision",
            "dev-a",
            "--pki",
            "other-pki",
            "--out",
            other.to_str().unwrap(),
        ],
    )
    .unwrap();
    let (_x, mut x_events) = client(
        "x",
        port,
        &ca,
        &other.join("device.pem"),
        &other.join("device.key"),
    );
    assert!(
        !connects(&mut x_events).await,
        "a certificate from another CA is refused"
    );
    let _ = b;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_speaks_mutual_tls_to_the_broker() {
    use fleetwave_tests::harness::app::{Backend, Options, TestApp};
    use fleetwave_tests::harness::mqtt::TestMqtt;
    fleetwave_tests::harness::init();
    let mqtt = TestMqtt::new();
    let broker = TlsBroker::start(&mqtt.prefix).await.unwrap();
    let bundle = broker.provision("pi-tls").unwrap();
    let tls = broker.service_tls();
    let mut options = Options::new(Backend::Postgres);
    options.broker = Some((mqtt.clone(), broker.url(), Some(tls)));
    let app = TestApp::spawn_with(options).await.unwrap();
    app.call(
        reqwest::Method::POST,
        "/v1/devices",
        Some(serde_json::json!({"id": "pi-tls", "hardware": "rpi4"})),
    )
    .await;
    // The device, over mutual TLS, updates its shadow; the service answers through the broker.
    let (device, mut events) = client(
        "pi-tls",
        broker.port,
        &broker.ca(),
        &bundle.join("device.pem"),
        &bundle.join("device.key"),
    );
    assert!(connects(&mut events).await);
    let base = format!("{}/things/pi-tls", mqtt.prefix);
    device
        .subscribe(format!("{base}/shadow/update/accepted"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let _ = received(&mut events, Duration::from_millis(300)).await;
    device
        .publish(
            format!("{base}/shadow/update"),
            QoS::AtLeastOnce,
            false,
            r#"{"state":{"reported":{"firmware":{"version":"1.0.0","slot":"a"}}}}"#,
        )
        .await
        .unwrap();
    let got = received(&mut events, Duration::from_secs(5)).await;
    assert!(
        got.iter()
            .any(|(t, _)| t.ends_with("/shadow/update/accepted")),
        "{got:?}"
    );
    let (_, registered) = app
        .call(reqwest::Method::GET, "/v1/devices/pi-tls", None)
        .await;
    assert_eq!(registered["firmware_version"], "1.0.0");
}
