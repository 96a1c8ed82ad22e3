//! `idx_job_executions_job_state` goes (see BENCHMARKS.md, P1).
//!
//! Its columns, `(job_id, state)`, are the leading columns of `idx_job_executions_retry`
//! (`job_id, state, retry_at`), which answers every query it answered; yet every execution
//! written, and every change of an execution's state, wrote an entry into both. Inserting
//! 100k executions took about a fifth less time without it.

use sea_orm_migration::prelude::{Alias, DbErr, DeriveMigrationName, Index};
use sea_orm_migration::{MigrationTrait, SchemaManager, async_trait};

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "idx_job_executions_job_state";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(INDEX)
                    .table(Alias::new("job_executions"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(Alias::new("job_executions"))
                    .col(Alias::new("job_id"))
                    .col(Alias::new("state"))
                    .to_owned(),
            )
            .await
    }
}
