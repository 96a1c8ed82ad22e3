//! A simulated device: a plain MQTT client (rumqttc, not the agent) in the test's namespace,
//! subscribed to some of its own topics, sending and awaiting messages as a device would.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use serde_json::Value;
use tokio::time::timeout;

use super::mqtt::TestMqtt;

/// How long [`SimDevice::next`] waits for a message.
pub const WAIT: Duration = Duration::from_secs(10);

/// One simulated device.
pub struct SimDevice {
    /// Its client, for publishing directly.
    pub client: AsyncClient,
    events: EventLoop,
    /// `{prefix}/things/{id}`: every topic of this device starts with it.
    pub base: String,
}

impl SimDevice {
    /// Connects device `id` and subscribes to `filters`, given relative to its base (e.g.
    /// `shadow/#`, `jobs/#`); returns once every subscription is acknowledged.
    pub async fn connect(mqtt: &TestMqtt, id: &str, filters: &[&str]) -> SimDevice {
        let (client, mut events) = mqtt.client(id);
        let base = format!("{}/things/{id}", mqtt.prefix);
        for filter in filters {
            client
                .subscribe(format!("{base}/{filter}"), QoS::AtLeastOnce)
                .await
                .unwrap();
        }
        let mut acks = 0;
        timeout(WAIT, async {
            while acks < filters.len() {
                if let Event::Incoming(Packet::SubAck(_)) = events.poll().await.unwrap() {
                    acks += 1;
                }
            }
        })
        .await
        .expect("subscribed within 10 s");
        SimDevice {
            client,
            events,
            base,
        }
    }

    /// Publishes `payload` on `{base}/{topic}` (QoS 1).
    pub async fn send(&self, topic: &str, payload: Value) {
        self.client
            .publish(
                format!("{}/{topic}", self.base),
                QoS::AtLeastOnce,
                false,
                payload.to_string(),
            )
            .await
            .unwrap();
    }

    /// The next message on this device's topics: the topic after `{base}/`, and the payload.
    pub async fn next(&mut self) -> (String, Vec<u8>) {
        let (topic, _, payload) = self.next_with_qos().await;
        (topic, payload)
    }

    /// [`next`](Self::next), with the QoS the broker delivered it at.
    pub async fn next_with_qos(&mut self) -> (String, QoS, Vec<u8>) {
        timeout(WAIT, async {
            loop {
                if let Event::Incoming(Packet::Publish(p)) = self.events.poll().await.unwrap() {
                    let rest = p
                        .topic
                        .strip_prefix(&format!("{}/", self.base))
                        .unwrap_or(&p.topic)
                        .to_owned();
                    return (rest, p.qos, p.payload.to_vec());
                }
            }
        })
        .await
        .expect("a message within 10 s")
    }

    /// The payload of the next message whose topic ends with `suffix` (others are skipped).
    pub async fn expect(&mut self, suffix: &str) -> Vec<u8> {
        loop {
            let (topic, payload) = self.next().await;
            if topic.ends_with(suffix) {
                return payload;
            }
        }
    }
}
