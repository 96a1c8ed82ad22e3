//! The fleetwave service: the HTTP API over the device registry and audit log, and the
//! release engineer's command line. See ARCHITECTURE.md for the module map.

pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod events;
pub mod jobs;
pub mod mqtt;
pub mod pki;
pub mod progress;
pub mod registry;
pub mod releases;
pub mod rollouts;
pub mod shadow;
pub mod startup;
pub mod storage;
pub mod telemetry;
