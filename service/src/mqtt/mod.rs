//! Device messaging over MQTT: the bridge that answers device requests and publishes to
//! devices, and the embedded broker the service runs when no external broker is configured.

pub mod bridge;
pub mod broker;
