//! The agent over mutual TLS: on a Mosquitto configured by `fleetwave broker config`, with its
//! bundle from `fleetwave device provision`, it installs an update end to end; once revoked,
//! it can no longer reach the broker, and says why.

use std::time::Duration;

use fleetwave_tests::harness::agent::{AgentOptions, TestAgent};
use fleetwave_tests::harness::app::{Backend, Options};
use fleetwave_tests::harness::broker::TlsBroker;
use fleetwave_tests::harness::mqtt::TestMqtt;

use super::{World, device_id};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_updates_over_mutual_tls_and_a_revoked_one_cannot_connect() {
    fleetwave_tests::harness::init();
    let mqtt = TestMqtt::new();
    let mut broker = TlsBroker::start(&mqtt.prefix).await.unwrap();
    let mut options = Options::new(Backend::Postgres);
    options.broker = Some((mqtt.clone(), broker.url(), Some(broker.service_tls())));
    let world = World::with(1024 * 1024 + 99, options).await;
    let id = device_id("pi-tls");
    world.app.register_device(&id).await;
    let mut agent_options = AgentOptions::new(&id, world.key.public());
    agent_options.tls = Some((broker.url(), broker.provision(&id).unwrap()));
    let mut agent = TestAgent::new(&world.app.mqtt, &agent_options).unwrap();
    agent.start();
    let job = world.job(&id).await;
    let e = world.finished(&job, &id, || agent.log()).await;
    assert_eq!(e["state"], "SUCCEEDED", "{e}\n{}", agent.log());
    assert_eq!(world.registry(&id).await["firmware_version"], "2.0.0");
    assert!(
        agent.log().contains("over mutual TLS"),
        "the agent said how it connects:\n{}",
        agent.log()
    );
    agent.stop();

    // Revoked: the broker refuses the handshake; the agent keeps trying and logs the reason.
    broker.revoke(&id).await.unwrap();
    let before = agent.log().len();
    agent.start();
    let mut refused = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = agent.log();
        if log[before.min(log.len())..].contains("CertificateRevoked") {
            refused = true;
            break;
        }
    }
    agent.stop();
    assert!(refused, "a revoked agent is refused:\n{}", agent.log());
}
