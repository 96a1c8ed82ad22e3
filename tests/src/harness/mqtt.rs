//! A private namespace on the real MQTT broker per test: a topic prefix and client ids that
//! no other test uses.

use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, MqttOptions};

use super::{env, unique_id};

/// One test's MQTT namespace.
#[derive(Clone, Debug)]
pub struct TestMqtt {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Topic prefix for this test, `fw-test-<16 hex>/fleetwave`; use it where the service
    /// would use `fleetwave`.
    pub prefix: String,
    id: String,
}

impl TestMqtt {
    /// A fresh namespace on the broker of this run.
    pub fn new() -> Self {
        let (host, port) = env::mqtt_broker();
        let id = unique_id();
        TestMqtt {
            host,
            port,
            prefix: format!("fw-test-{id}/fleetwave"),
            id,
        }
    }

    /// A client id unique to this test: `fw-<16 hex>-<name>`.
    pub fn client_id(&self, name: &str) -> String {
        format!("fw-{}-{name}", self.id)
    }

    /// Connection options for a client named `name` (clean session, 10 s keep-alive).
    pub fn options(&self, name: &str) -> MqttOptions {
        let mut options = MqttOptions::new(self.client_id(name), &self.host, self.port);
        options.set_keep_alive(Duration::from_secs(10));
        options
    }

    /// A connected-on-poll client and its event loop.
    pub fn client(&self, name: &str) -> (AsyncClient, EventLoop) {
        AsyncClient::new(self.options(name), 64)
    }
}

impl Default for TestMqtt {
    fn default() -> Self {
        Self::new()
    }
}
