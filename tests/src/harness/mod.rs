//! Per-test slices of the real parts (PostgreSQL, S3, MQTT), reusable by every test binary.

pub mod agent;
pub mod app;
pub mod bin;
pub mod broker;
pub mod device;
pub mod env;
pub mod fleet;
pub mod mqtt;
pub mod own_postgres;
pub mod postgres;
pub mod proc;
pub mod release;
pub mod s3;
pub mod service;

use std::sync::Once;

/// Process-wide set-up every harness constructor runs first: one rustls crypto provider
/// (sea-orm's and object_store's TLS stacks would otherwise disagree and panic).
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// A short unique id for names: 16 lowercase hex digits of a v4 UUID.
pub fn unique_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
}

/// The value parser of a benchmark binary's count option (`--rounds`, `--clients`, …): a
/// `usize` of at least 1.
pub fn count_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}
