//! The fleetwave database schema as sea-orm migrations, valid on PostgreSQL and SQLite.
//!
//! One migration per file, named `mYYYYMMDD_HHMMSS_what.rs` (the recorded name comes from the
//! file name), listed in order in [`Migrator::migrations`]. A migration that has landed on
//! main is never edited: change the schema with a new one.
//!
//! The service applies pending migrations at start-up and the test harness applies them to
//! every fresh test database, both through [`Migrator`].

use sea_orm_migration::{MigrationTrait, MigratorTrait};

/// Every migration of the schema, oldest first.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        // The first tables (devices, groups, releases, tokens, audit) arrive with the service
        // core; until then the schema is only sea-orm's own migration ledger.
        Vec::new()
    }
}
