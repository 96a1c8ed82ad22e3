//! The MQTT client the service's bridge is built on (the vendored rumqttc) against the real
//! broker: its read pause, the service's flow control when requests arrive faster than the
//! handler commits them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleetwave_tests::harness::mqtt::TestMqtt;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tokio::time::timeout;

/// Polls `events` until it yields `n` publishes (their payloads), for at most `within`.
async fn publishes(events: &mut EventLoop, n: usize, within: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let _ = timeout(within, async {
        while got.len() < n {
            if let Event::Incoming(Packet::Publish(p)) = events.poll().await.expect("connection") {
                got.push(p.payload.to_vec());
            }
        }
    })
    .await;
    got
}

#[tokio::test]
async fn a_paused_reader_leaves_messages_with_the_broker_until_its_backlog_shrinks() {
    let mqtt = TestMqtt::new();
    let topic = format!("{}/flow/requests", mqtt.prefix);
    let backlog = Arc::new(AtomicUsize::new(0));
    let mut options = mqtt.options("reader");
    options.set_read_pause(backlog.clone(), 8);
    let (reader, mut reader_events) = AsyncClient::new(options, 64);
    reader.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
    timeout(Duration::from_secs(10), async {
        while !matches!(
            reader_events.poll().await.expect("reader connection"),
            Event::Incoming(Packet::SubAck(_))
        ) {}
    })
    .await
    .expect("subscribed");

    // The handler's backlog is at the limit: the reader stops reading.
    backlog.store(8, Ordering::Relaxed);
    let (publisher, mut publisher_events) = mqtt.client("device");
    for i in 0..5u8 {
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, vec![i])
            .await
            .unwrap();
    }
    let mut acked = 0;
    timeout(Duration::from_secs(10), async {
        while acked < 5 {
            if let Event::Incoming(Packet::PubAck(_)) =
                publisher_events.poll().await.expect("publisher connection")
            {
                acked += 1;
            }
        }
    })
    .await
    .expect("the broker took the five messages");
    assert!(
        publishes(&mut reader_events, 1, Duration::from_secs(1))
            .await
            .is_empty(),
        "a paused reader took a message"
    );

    // The backlog shrinks; a request of the reader's (the handler's acknowledgements, in
    // the service) wakes its event loop, which reads again: every message, in order.
    backlog.store(7, Ordering::Relaxed);
    reader
        .publish(
            format!("{}/flow/other", mqtt.prefix),
            QoS::AtMostOnce,
            false,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        publishes(&mut reader_events, 5, Duration::from_secs(10)).await,
        (0..5u8).map(|i| vec![i]).collect::<Vec<_>>()
    );
}
