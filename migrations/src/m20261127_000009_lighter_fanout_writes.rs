//! Fewer writes per device queued by a rollout (see BENCHMARKS.md, P1).
//!
//! - `job_executions` loses its two foreign keys on PostgreSQL: each ran a lookup and a row
//!   lock per inserted execution, and a 100k-device wave spent about as long checking them
//!   as writing the rows. What they guaranteed is kept another way: jobs are never
//!   deleted, and a device's deletion removes its executions itself, serialised against
//!   every transaction that writes executions by `registry::devices::hold_devices` (an
//!   advisory lock), so no execution outlives its device. SQLite keeps the keys: it cannot
//!   drop a constraint in place, and its single writer makes them cheap.
//! - The index that finds a rollout's pending targets holds only the pending ones (a
//!   partial index, in picking order), and the incompatible ones, which the status lists,
//!   get their own: a target written or marked queued or outside adds no index entry but
//!   its key's.

use sea_orm_migration::prelude::{
    Alias, DbErr, DeriveMigrationName, ForeignKey, ForeignKeyAction, Index,
};
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};
use sea_orm_migration::{MigrationTrait, SchemaManager, async_trait};

#[derive(DeriveMigrationName)]
pub struct Migration;

const KEYS: [(&str, &str, &str); 2] = [
    ("fk_job_executions_job", "job_id", "jobs"),
    ("fk_job_executions_device", "device_id", "devices"),
];

const PARTIAL: [(&str, &str); 2] = [
    (
        "idx_rollout_targets_pending_only",
        "CREATE INDEX idx_rollout_targets_pending_only \
         ON rollout_targets (rollout_id, wave, bucket, device_id) WHERE status = 'pending'",
    ),
    (
        "idx_rollout_targets_incompatible",
        "CREATE INDEX idx_rollout_targets_incompatible \
         ON rollout_targets (rollout_id, device_id) WHERE status = 'incompatible'",
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (_, create) in PARTIAL {
            manager.get_connection().execute_unprepared(create).await?;
        }
        manager
            .drop_index(
                Index::drop()
                    .name("idx_rollout_targets_pending")
                    .table(Alias::new("rollout_targets"))
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        for (name, _, _) in KEYS {
            manager
                .drop_foreign_key(
                    ForeignKey::drop()
                        .name(name)
                        .table(Alias::new("job_executions"))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            for (name, column, table) in KEYS {
                manager
                    .create_foreign_key(
                        ForeignKey::create()
                            .name(name)
                            .from(Alias::new("job_executions"), Alias::new(column))
                            .to(Alias::new(table), Alias::new("id"))
                            .on_delete(ForeignKeyAction::Cascade)
                            .to_owned(),
                    )
                    .await?;
            }
        }
        manager
            .create_index(
                Index::create()
                    .name("idx_rollout_targets_pending")
                    .table(Alias::new("rollout_targets"))
                    .col(Alias::new("rollout_id"))
                    .col(Alias::new("status"))
                    .col(Alias::new("wave"))
                    .col(Alias::new("bucket"))
                    .to_owned(),
            )
            .await?;
        for (name, _) in PARTIAL {
            manager
                .drop_index(
                    Index::drop()
                        .name(name)
                        .table(Alias::new("rollout_targets"))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
