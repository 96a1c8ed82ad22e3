//! Rollouts: a rollout installs one release on a target in waves. `rollout_waves` holds each
//! wave's plan and its maintained counters (one per execution state, moved in the same
//! transaction as every execution transition, so status never scans executions);
//! `rollout_targets` holds every device the rollout covers, its bucket, its wave and whether
//! it was queued or found incompatible; `events` is the append-only log of what webhooks
//! are told, written in the transaction of the change it reports, and `webhook_deliveries`
//! each webhook's position in it. Executions learn their rollout, wave and retry time.

use sea_orm_migration::prelude::{
    Alias, ColumnDef, DbErr, DeriveIden, DeriveMigrationName, Index, Table,
};
use sea_orm_migration::schema::{
    big_integer, big_pk_auto, double, integer, string_len, string_len_null, text, text_null,
    timestamp_with_time_zone, timestamp_with_time_zone_null,
};
use sea_orm_migration::sea_orm;
use sea_orm_migration::{MigrationTrait, SchemaManager, async_trait};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Rollouts {
    Table,
    Id,
    Name,
    ReleaseId,
    JobId,
    TargetKind,
    Target,
    Spec,
    State,
    StateReason,
    CurrentWave,
    NoticeWave,
    RateTokens,
    RateAt,
    NextTickAt,
    CreatedBy,
    CreatedAt,
    StartedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
enum RolloutWaves {
    Table,
    RolloutId,
    Wave,
    Planned,
    Threshold,
    Queued,
    InProgress,
    Succeeded,
    Failed,
    Rejected,
    TimedOut,
    Canceled,
    Removed,
    Retrying,
    Incompatible,
    StartedAt,
    ThresholdMetAt,
    ApprovedBy,
    ApprovedAt,
}

#[derive(DeriveIden)]
enum RolloutTargets {
    Table,
    RolloutId,
    DeviceId,
    Bucket,
    Wave,
    Status,
    Reason,
    Detail,
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Id,
    Kind,
    RolloutId,
    Payload,
    CreatedAt,
}

#[derive(DeriveIden)]
enum WebhookDeliveries {
    Table,
    Webhook,
    LastEventId,
    Attempts,
    NextAttemptAt,
    LastError,
}

#[derive(DeriveIden)]
enum JobExecutions {
    Table,
    JobId,
    State,
    RetryAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Rollouts::Table)
                    .col(string_len(Rollouts::Id, 36).primary_key())
                    .col(string_len(Rollouts::Name, 128))
                    .col(string_len(Rollouts::ReleaseId, 36))
                    .col(string_len(Rollouts::JobId, 36))
                    .col(string_len(Rollouts::TargetKind, 16))
                    .col(text(Rollouts::Target))
                    .col(text(Rollouts::Spec))
                    .col(string_len(Rollouts::State, 16))
                    .col(text_null(Rollouts::StateReason))
                    .col(integer(Rollouts::CurrentWave))
                    .col(ColumnDef::new(Rollouts::NoticeWave).integer().null())
                    .col(double(Rollouts::RateTokens))
                    .col(timestamp_with_time_zone_null(Rollouts::RateAt))
                    .col(timestamp_with_time_zone(Rollouts::NextTickAt))
                    .col(string_len(Rollouts::CreatedBy, 64))
                    .col(timestamp_with_time_zone(Rollouts::CreatedAt))
                    .col(timestamp_with_time_zone_null(Rollouts::StartedAt))
                    .col(timestamp_with_time_zone_null(Rollouts::FinishedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_rollouts_state_tick")
                    .table(Rollouts::Table)
                    .col(Rollouts::State)
                    .col(Rollouts::NextTickAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RolloutWaves::Table)
                    .col(string_len(RolloutWaves::RolloutId, 36))
                    .col(integer(RolloutWaves::Wave))
                    .col(big_integer(RolloutWaves::Planned))
                    .col(integer(RolloutWaves::Threshold))
                    .col(big_integer(RolloutWaves::Queued))
                    .col(big_integer(RolloutWaves::InProgress))
                    .col(big_integer(RolloutWaves::Succeeded))
                    .col(big_integer(RolloutWaves::Failed))
                    .col(big_integer(RolloutWaves::Rejected))
                    .col(big_integer(RolloutWaves::TimedOut))
                    .col(big_integer(RolloutWaves::Canceled))
                    .col(big_integer(RolloutWaves::Removed))
                    .col(big_integer(RolloutWaves::Retrying))
                    .col(big_integer(RolloutWaves::Incompatible))
                    .col(timestamp_with_time_zone_null(RolloutWaves::StartedAt))
                    .col(timestamp_with_time_zone_null(RolloutWaves::ThresholdMetAt))
                    .col(string_len_null(RolloutWaves::ApprovedBy, 64))
                    .col(timestamp_with_time_zone_null(RolloutWaves::ApprovedAt))
                    .primary_key(
                        Index::create()
                            .col(RolloutWaves::RolloutId)
                            .col(RolloutWaves::Wave),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RolloutTargets::Table)
                    .col(string_len(RolloutTargets::RolloutId, 36))
                    .col(string_len(RolloutTargets::DeviceId, 128))
                    .col(integer(RolloutTargets::Bucket))
                    .col(integer(RolloutTargets::Wave))
                    .col(string_len(RolloutTargets::Status, 16))
                    .col(string_len_null(RolloutTargets::Reason, 64))
                    .col(text_null(RolloutTargets::Detail))
                    .primary_key(
                        Index::create()
                            .col(RolloutTargets::RolloutId)
                            .col(RolloutTargets::DeviceId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_rollout_targets_pending")
                    .table(RolloutTargets::Table)
                    .col(RolloutTargets::RolloutId)
                    .col(RolloutTargets::Status)
                    .col(RolloutTargets::Wave)
                    .col(RolloutTargets::Bucket)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Events::Table)
                    .col(big_pk_auto(Events::Id))
                    .col(string_len(Events::Kind, 64))
                    .col(string_len_null(Events::RolloutId, 36))
                    .col(text(Events::Payload))
                    .col(timestamp_with_time_zone(Events::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebhookDeliveries::Table)
                    .col(string_len(WebhookDeliveries::Webhook, 512).primary_key())
                    .col(big_integer(WebhookDeliveries::LastEventId))
                    .col(integer(WebhookDeliveries::Attempts))
                    .col(timestamp_with_time_zone(WebhookDeliveries::NextAttemptAt))
                    .col(text_null(WebhookDeliveries::LastError))
                    .to_owned(),
            )
            .await?;
        // SQLite takes one column per ALTER TABLE.
        for column in [
            ColumnDef::new(Alias::new("rollout_id"))
                .string_len(36)
                .null()
                .to_owned(),
            ColumnDef::new(Alias::new("wave"))
                .integer()
                .null()
                .to_owned(),
            ColumnDef::new(JobExecutions::RetryAt)
                .timestamp_with_time_zone()
                .null()
                .to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(JobExecutions::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("idx_job_executions_retry")
                    .table(JobExecutions::Table)
                    .col(JobExecutions::JobId)
                    .col(JobExecutions::State)
                    .col(JobExecutions::RetryAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_job_executions_retry")
                    .table(JobExecutions::Table)
                    .to_owned(),
            )
            .await?;
        for column in ["retry_at", "wave", "rollout_id"] {
            manager
                .alter_table(
                    Table::alter()
                        .table(JobExecutions::Table)
                        .drop_column(Alias::new(column))
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_table(Table::drop().table(WebhookDeliveries::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Events::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(RolloutTargets::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(RolloutWaves::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Rollouts::Table).to_owned())
            .await
    }
}
