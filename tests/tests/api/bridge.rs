//! The MQTT client the service's bridge is built on (the vendored rumqttc) against the real
//! broker: its read pause, the service's flow control when requests arrive faster than the
//! handler commits them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleetwave_tests::harness::mqtt::TestMqtt;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// What arrives on `received` within `within`, up to `n` payloads.
async fn arrivals(
    received: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    n: usize,
    within: Duration,
) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let _ = timeout(within, async {
        while got.len() < n {
            match received.recv().await {
                Some(payload) => got.push(payload),
                None => return,
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
    // No keep-alive ping (which reads, to take its answer) during the test.
    options.set_keep_alive(Duration::from_secs(120));
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

    // The handler's backlog is at the limit: the reader, polled all along as the bridge
    // polls it, stops reading.
    backlog.store(8, Ordering::Relaxed);
    let (tx, mut received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = reader_events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event
                && tx.send(p.payload.to_vec()).is_err()
            {
                return;
            }
        }
    });
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
        arrivals(&mut received, 1, Duration::from_secs(1))
            .await
            .is_empty(),
        "a paused reader took a message"
    );

    // The backlog shrinks. The event loop, parked while paused, looks again when a request
    // of the reader's wakes it (in the service, the handler's acknowledgements): then it
    // reads every message, in order.
    backlog.store(7, Ordering::Relaxed);
    assert!(
        arrivals(&mut received, 1, Duration::from_millis(500))
            .await
            .is_empty(),
        "the parked event loop read without being woken"
    );
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
        arrivals(&mut received, 5, Duration::from_secs(10)).await,
        (0..5u8).map(|i| vec![i]).collect::<Vec<_>>()
    );
}
