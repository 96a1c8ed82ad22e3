//! A queued target leaves `rollout_targets` (see BENCHMARKS.md, P1).
//!
//! A target row is a device's place in a rollout until the device is queued; from then on
//! its execution holds that place (it names the rollout and the wave), so the engine no
//! longer writes a target for a device queued by the statement that writes the targets,
//! and deletes the target of a device queued later. The targets already marked `queued`
//! go the same way here; nothing read them but the queueing itself.
//!
//! An older service takes a queued device, which has no target row any more, for a late
//! joiner and fails to queue it twice: stop every older replica before starting this
//! version (the service applies migrations at start-up), and migrate down before going
//! back to one (this migration's `down` writes the rows back).

use sea_orm_migration::prelude::{DbErr, DeriveMigrationName};
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};
use sea_orm_migration::{MigrationTrait, SchemaManager, async_trait};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DELETE FROM rollout_targets WHERE status = 'queued'")
            .await?;
        Ok(())
    }

    /// Writes a `queued` target back for every execution a rollout queued. On PostgreSQL
    /// its bucket is computed as the devices compute it (`protocol::bucket`: the first 8
    /// bytes of SHA-256 of `fleetwave/bucket/v1\n{rollout}\n{device}`, big-endian, modulo
    /// 10 000; 2^64 modulo 10 000 is 1 616); SQLite has no SHA-256, so there it is 0
    /// (nothing reads a queued target's bucket).
    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let bucket = if manager.get_database_backend() == DatabaseBackend::Postgres {
            "(SELECT (CASE WHEN s >= 0 THEN s % 10000 ELSE (s % 10000 + 1616 + 10000) % 10000 END)::integer \
             FROM (SELECT ('x' || encode(substring(sha256(convert_to( \
                 'fleetwave/bucket/v1' || chr(10) || e.rollout_id || chr(10) || e.device_id, \
                 'UTF8')) from 1 for 8), 'hex'))::bit(64)::bigint AS s) AS h)"
        } else {
            "0"
        };
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "INSERT INTO rollout_targets (rollout_id, device_id, bucket, wave, status) \
                 SELECT e.rollout_id, e.device_id, {bucket}, e.wave, 'queued' \
                 FROM job_executions e \
                 WHERE e.rollout_id IS NOT NULL AND e.wave IS NOT NULL \
                 ON CONFLICT DO NOTHING"
            ))
            .await?;
        Ok(())
    }
}
