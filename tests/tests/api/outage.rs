//! Ingestion rides out a database outage: a device sends a burst of shadow updates while
//! the service's PostgreSQL is stopped for a few seconds; once it is back, every update is
//! recorded, in order, none twice.

use std::time::Duration;

use fleetwave::shadow;
use fleetwave_artifacts::DeviceId;
use fleetwave_tests::harness::app::{Backend, Options, TestApp};
use fleetwave_tests::harness::own_postgres::OwnPostgres;
use rumqttc::QoS;
use serde_json::json;

const BURST: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_update_is_recorded_across_a_database_outage() {
    let pg = OwnPostgres::start().unwrap();
    let mut options = Options::new(Backend::Postgres);
    options.database_url = Some(pg.url());
    let app = TestApp::spawn_with(options).await.unwrap();
    app.register_device("pi-1").await;

    let (client, mut events) = app.mqtt.client("pi-1");
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let topic = format!("{}/things/pi-1/shadow/update", app.mqtt.prefix);
    for seq in 0..BURST {
        if seq == BURST / 3 {
            // The rest of the burst, and 3 s more, happen while the database is down.
            pg.pause().unwrap();
        }
        let update = json!({"state": {"reported": {"seq": seq}}, "clientToken": format!("u{seq}")});
        client
            .publish(&topic, QoS::AtLeastOnce, false, update.to_string())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.resume().unwrap();

    let device = DeviceId::parse("pi-1").unwrap();
    let recorded = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(Some(s)) = shadow::load(&app.db, &device).await {
                if s.version >= BURST {
                    return s;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("every update recorded within 60 s of the database's return");
    assert_eq!(recorded.version, BURST, "each update exactly once");
    assert_eq!(
        recorded.reported.unwrap()["seq"],
        BURST - 1,
        "in order: the last one wins"
    );
}
