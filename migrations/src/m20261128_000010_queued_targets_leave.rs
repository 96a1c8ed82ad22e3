//! A queued target leaves `rollout_targets` (see BENCHMARKS.md, P1).
//!
//! A target row is a device's place in a rollout until the device is queued; from then on
//! its execution holds that place (it names the rollout and the wave), so the engine no
//! longer writes a target for a device queued by the statement that writes the targets,
//! and deletes the target of a device queued later. The targets already marked `queued`
//! go the same way here; nothing read them but the queueing itself.

use sea_orm_migration::prelude::{DbErr, DeriveMigrationName};
use sea_orm_migration::sea_orm::ConnectionTrait;
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

    /// The deleted rows are not restored: their executions hold what they said (rollout,
    /// wave), but not their bucket.
    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Ok(())
    }
}
