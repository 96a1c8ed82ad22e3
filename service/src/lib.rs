//! The fleetwave service crate: the release engineer's command line today; the HTTP API,
//! registry, rollout engine and MQTT bridge join it as they land (see ARCHITECTURE.md).

pub mod cli;
pub mod progress;
pub mod telemetry;
