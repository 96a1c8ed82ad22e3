//! The fleetwave device agent. Today it holds its configuration ([`config`]) and the
//! device-side verification of a release ([`verify`]); the install state machine, slot
//! backends, download and MQTT reporting join it as they land (see ARCHITECTURE.md).

pub mod config;
pub mod verify;
