//! Device messaging over MQTT. Today: the embedded broker the service runs when no external
//! broker is configured. The protocol (shadows, jobs, wave notices) joins this module.

pub mod broker;
