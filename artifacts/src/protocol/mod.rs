//! The MQTT wire contract between the service and devices: topic names ([`topics`]), job
//! execution states ([`jobs`]), what a device reports in its shadow ([`report`]) and the
//! stable bucket that decides whether a wave covers a device ([`bucket`]). PROTOCOL.md at
//! the project root describes the whole protocol.

pub mod bucket;
pub mod jobs;
pub mod report;
pub mod topics;
