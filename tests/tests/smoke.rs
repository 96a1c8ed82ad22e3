//! One smoke test per real part: the harness reaches PostgreSQL, the MQTT broker and the S3
//! server, and each slice is really private (its own database, topics, bucket).

use std::time::Duration;

use fleetwave_tests::harness::mqtt::TestMqtt;
use fleetwave_tests::harness::postgres::TestDb;
use fleetwave_tests::harness::s3::TestBucket;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use rumqttc::{Event, Packet, QoS};
use sea_orm::{ConnectionTrait, Database, Statement};
use tokio::time::timeout;

#[tokio::test]
async fn postgres_gives_each_test_a_migrated_database_and_drops_it() {
    let db = TestDb::new().await.unwrap();
    let backend = db.conn.get_database_backend();
    let row = db
        .conn
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT current_database() AS name, to_regclass('seaql_migrations') IS NOT NULL AS migrated",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get::<String>("", "name").unwrap(), db.name);
    assert!(
        row.try_get::<bool>("", "migrated").unwrap(),
        "migrations ran"
    );

    let name = db.name.clone();
    drop(db);
    let admin = Database::connect(fleetwave_tests::harness::env::database_url())
        .await
        .unwrap();
    let left = admin
        .query_one_raw(Statement::from_string(
            backend,
            format!("SELECT count(*) AS n FROM pg_database WHERE datname = '{name}'"),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        left.try_get::<i64>("", "n").unwrap(),
        0,
        "database {name} was dropped"
    );
}

#[tokio::test]
async fn mqtt_delivers_within_a_private_prefix() {
    let mqtt = TestMqtt::new();
    let (sub, mut sub_loop) = mqtt.client("sub");
    let (publisher, mut pub_loop) = mqtt.client("pub");
    let topic = format!("{}/smoke/hello", mqtt.prefix);
    sub.subscribe(format!("{}/smoke/#", mqtt.prefix), QoS::AtLeastOnce)
        .await
        .unwrap();

    let received = timeout(Duration::from_secs(15), async {
        let mut published = false;
        loop {
            tokio::select! {
                event = sub_loop.poll() => match event.expect("subscriber connection") {
                    Event::Incoming(Packet::SubAck(_)) if !published => {
                        publisher
                            .publish(&topic, QoS::AtLeastOnce, false, b"ping".to_vec())
                            .await
                            .unwrap();
                        published = true;
                    }
                    Event::Incoming(Packet::Publish(p)) => return p,
                    _ => {}
                },
                event = pub_loop.poll() => { event.expect("publisher connection"); }
            }
        }
    })
    .await
    .expect("the message arrives within 15 s");
    assert_eq!(received.topic, topic);
    assert_eq!(&received.payload[..], b"ping");
    assert!(mqtt.client_id("sub") != TestMqtt::new().client_id("sub"));
}

#[tokio::test]
async fn s3_stores_objects_and_enforces_presigned_urls() {
    let bucket = TestBucket::new().await.unwrap();
    let other = TestBucket::new().await.unwrap();
    assert_ne!(bucket.name, other.name);

    let path = Path::from("smoke/object.bin");
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    bucket.store.put(&path, body.clone().into()).await.unwrap();
    let back = bucket
        .store
        .get(&path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&back[..], &body[..]);
    assert!(
        other.store.head(&path).await.is_err(),
        "buckets are private to their test"
    );

    let http = reqwest::Client::new();
    let url = bucket
        .store
        .signed_url(Method::GET, &path, Duration::from_secs(60))
        .await
        .unwrap();
    let got = http.get(url.clone()).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(&got.bytes().await.unwrap()[..], &body[..]);

    // The server itself checks the signature: one changed character is refused.
    let mut tampered = url.clone();
    let query: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "X-Amz-Signature" {
                let mut s = v.into_owned();
                let last = if s.ends_with('0') { "1" } else { "0" };
                s.replace_range(s.len() - 1.., last);
                s
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    tampered.query_pairs_mut().clear().extend_pairs(query);
    assert_eq!(http.get(tampered).send().await.unwrap().status(), 403);

    // And the expiry: a 1 s URL fetched after 3 s is refused.
    let short = bucket
        .store
        .signed_url(Method::GET, &path, Duration::from_secs(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let expired = http.get(short).send().await.unwrap();
    assert_eq!(expired.status(), 403);
    let text = expired.text().await.unwrap();
    assert!(text.contains("expired"), "{text}");
}
