//! Group wave notices on the real broker: one retained publish reaches every member
//! subscribed with a wildcard (including one that connects afterwards), each device decides
//! from its bucket whether the wave covers it, and the devices that do are exactly those the
//! service counts; clearing the notice leaves nothing retained.

use std::collections::BTreeSet;
use std::time::Duration;

use fleetwave_artifacts::protocol::bucket;
use fleetwave_artifacts::protocol::jobs::WaveNotice;
use fleetwave_artifacts::{
    DeviceId, HardwareId, MANIFEST_FORMAT, Manifest, Product, SecretKey, Sha256, SignedManifest,
    Timestamp,
};
use fleetwave_tests::harness::app::{Backend, TestApp};
use rumqttc::{Event, Packet, QoS};
use tokio::time::timeout;

fn notice(rollout: &str, threshold: u16) -> WaveNotice {
    let now = Timestamp::now();
    let m = Manifest {
        format: MANIFEST_FORMAT,
        product: Product::parse("gateway-os").unwrap(),
        version: "2.0.0".parse().unwrap(),
        hardware: vec![HardwareId::parse("rpi4").unwrap()],
        size: 10,
        sha256: Sha256::of(b"0123456789"),
        min_version: None,
        security_floor: None,
        created_at: now,
        expires_at: now.plus(Duration::from_secs(3600)),
        delta_base: None,
    };
    WaveNotice {
        rollout: rollout.to_owned(),
        job: "job-1".to_owned(),
        wave: 1,
        threshold,
        release: "rel-1".to_owned(),
        manifest: SignedManifest::sign(m, &[&SecretKey::from_seed(&[3; 32])]).unwrap(),
        url: "http://example.invalid/image".to_owned(),
        url_expires_at: now.unix() + 3600,
    }
}

/// Connects `id`, subscribes to every group notice, and returns the first non-empty one.
async fn member_receives(app: &TestApp, id: &str) -> Option<WaveNotice> {
    let (client, mut events) = app.mqtt.client(id);
    client
        .subscribe(
            format!("{}/groups/+/jobs/notify", app.mqtt.prefix),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    timeout(Duration::from_secs(3), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = events.poll().await.unwrap() {
                if p.payload.is_empty() {
                    continue;
                }
                return serde_json::from_slice(&p.payload).unwrap();
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn one_retained_notice_reaches_every_member_and_buckets_agree() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let rollout = "0193-rollout";
    let sent = notice(rollout, 3000);
    app.bridge.publish_notice("fleet", &sent).await.unwrap();

    let ids: Vec<String> = (0..24).map(|i| format!("pi-{i:03}")).collect();
    let mut covered = BTreeSet::new();
    for id in &ids {
        // Every member connects after the publish: the retained notice reaches it.
        let got = member_receives(&app, id)
            .await
            .expect("the retained notice");
        assert_eq!(
            got, sent,
            "the notice arrives intact, signed manifest included"
        );
        if got.covers(&DeviceId::parse(id).unwrap()) {
            covered.insert(id.clone());
        }
    }
    let expected: BTreeSet<String> = ids
        .iter()
        .filter(|id| bucket::bucket(&DeviceId::parse(id).unwrap(), rollout) < 3000)
        .cloned()
        .collect();
    assert_eq!(
        covered, expected,
        "the devices and the service select the same devices"
    );
    assert!(
        !covered.is_empty() && covered.len() < ids.len(),
        "a 30 % wave covers some, not all"
    );

    app.bridge.clear_notice("fleet").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        member_receives(&app, "late").await,
        None,
        "nothing retained after clearing"
    );
}
