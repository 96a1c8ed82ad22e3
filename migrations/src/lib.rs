//! The fleetwave database schema as sea-orm migrations, valid on PostgreSQL and SQLite.
//!
//! One migration per file, named `mYYYYMMDD_HHMMSS_what.rs` (the recorded name comes from the
//! file name), listed in order in [`Migrator::migrations`]. A migration that has landed on
//! main is never edited: change the schema with a new one.
//!
//! The service applies pending migrations at start-up and the test harness applies them to
//! every fresh test database, both through [`Migrator`].

// async_trait's expanded signatures need `&SchemaManager` without its lifetime, as in
// sea-orm's migration template.
#![allow(elided_lifetimes_in_paths)]

use sea_orm_migration::{MigrationTrait, MigratorTrait};

mod m20261127_000001_create_devices;
mod m20261127_000002_create_groups;
mod m20261127_000003_create_releases;
mod m20261127_000004_create_api_tokens;
mod m20261127_000005_create_audit_events;
mod m20261127_000006_create_shadows;
mod m20261127_000007_create_jobs;
mod m20261127_000008_create_rollouts;
mod m20261127_000009_lighter_fanout_writes;
mod m20261128_000010_queued_targets_leave;
mod m20261205_000011_drop_redundant_execution_index;

/// Every migration of the schema, oldest first.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261127_000001_create_devices::Migration),
            Box::new(m20261127_000002_create_groups::Migration),
            Box::new(m20261127_000003_create_releases::Migration),
            Box::new(m20261127_000004_create_api_tokens::Migration),
            Box::new(m20261127_000005_create_audit_events::Migration),
            Box::new(m20261127_000006_create_shadows::Migration),
            Box::new(m20261127_000007_create_jobs::Migration),
            Box::new(m20261127_000008_create_rollouts::Migration),
            Box::new(m20261127_000009_lighter_fanout_writes::Migration),
            Box::new(m20261128_000010_queued_targets_leave::Migration),
            Box::new(m20261205_000011_drop_redundant_execution_index::Migration),
        ]
    }
}
