//! The fleetwave device agent. Today it holds its configuration ([`config`]), the pure
//! install state machine ([`state::machine`]) and the device-side verification of a release
//! ([`verify`]); the executor, slot backends, download and MQTT reporting join it as they
//! land (see ARCHITECTURE.md).

pub mod config;
pub mod state;
pub mod verify;
