//! Device shadows: the pure document rules ([`document`]); storage and the MQTT and HTTP
//! edges build on them.

pub mod document;
