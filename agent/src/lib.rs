//! The fleetwave device agent: its configuration ([`config`]), the pure install state machine
//! ([`state::machine`]) and the IO loop that drives it ([`run`]), with the persisted state
//! ([`store`]), the boot slots ([`slots`]), the streaming download ([`download`]), the
//! health check ([`health`]) and the device-side verification ([`verify`]).

pub mod config;
pub mod download;
pub mod fault;
pub mod health;
pub mod run;
pub mod slots;
pub mod state;
pub mod store;
pub mod tunnel;
pub mod verify;
pub mod watchdog;
