//! Jobs and their executions: a job installs one release on its targets; each target device
//! has one execution, whose every transition is appended to `execution_history` together
//! with the device's details at that moment.

use sea_orm_migration::prelude::{
    DbErr, DeriveIden, DeriveMigrationName, ForeignKey, ForeignKeyAction, Index, Table,
};
use sea_orm_migration::schema::{
    big_integer, big_pk_auto, integer_null, string_len, string_len_null, text_null,
    timestamp_with_time_zone, timestamp_with_time_zone_null,
};
use sea_orm_migration::sea_orm;
use sea_orm_migration::{MigrationTrait, SchemaManager, async_trait};

use crate::m20261127_000001_create_devices::Devices;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    ReleaseId,
    RolloutId,
    CreatedBy,
    CreatedAt,
}

#[derive(DeriveIden)]
enum JobExecutions {
    Table,
    JobId,
    DeviceId,
    ExecutionNumber,
    Version,
    State,
    Step,
    Progress,
    ErrorCode,
    ErrorMessage,
    QueuedAt,
    StartedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ExecutionHistory {
    Table,
    Id,
    JobId,
    DeviceId,
    ExecutionNumber,
    FromState,
    ToState,
    Step,
    Progress,
    ErrorCode,
    Hardware,
    FirmwareVersion,
    At,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Jobs::Table)
                    .col(string_len(Jobs::Id, 36).primary_key())
                    .col(string_len(Jobs::ReleaseId, 36))
                    .col(string_len_null(Jobs::RolloutId, 36))
                    .col(string_len(Jobs::CreatedBy, 64))
                    .col(timestamp_with_time_zone(Jobs::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(JobExecutions::Table)
                    .col(string_len(JobExecutions::JobId, 36))
                    .col(string_len(JobExecutions::DeviceId, 128))
                    .col(big_integer(JobExecutions::ExecutionNumber))
                    .col(big_integer(JobExecutions::Version))
                    .col(string_len(JobExecutions::State, 16))
                    .col(string_len_null(JobExecutions::Step, 16))
                    .col(integer_null(JobExecutions::Progress))
                    .col(string_len_null(JobExecutions::ErrorCode, 64))
                    .col(text_null(JobExecutions::ErrorMessage))
                    .col(timestamp_with_time_zone(JobExecutions::QueuedAt))
                    .col(timestamp_with_time_zone_null(JobExecutions::StartedAt))
                    .col(timestamp_with_time_zone(JobExecutions::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(JobExecutions::JobId)
                            .col(JobExecutions::DeviceId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_job_executions_job")
                            .from(JobExecutions::Table, JobExecutions::JobId)
                            .to(Jobs::Table, Jobs::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_job_executions_device")
                            .from(JobExecutions::Table, JobExecutions::DeviceId)
                            .to(Devices::Table, Devices::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_job_executions_device_state")
                    .table(JobExecutions::Table)
                    .col(JobExecutions::DeviceId)
                    .col(JobExecutions::State)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_job_executions_job_state")
                    .table(JobExecutions::Table)
                    .col(JobExecutions::JobId)
                    .col(JobExecutions::State)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ExecutionHistory::Table)
                    .col(big_pk_auto(ExecutionHistory::Id))
                    .col(string_len(ExecutionHistory::JobId, 36))
                    .col(string_len(ExecutionHistory::DeviceId, 128))
                    .col(big_integer(ExecutionHistory::ExecutionNumber))
                    .col(string_len_null(ExecutionHistory::FromState, 16))
                    .col(string_len(ExecutionHistory::ToState, 16))
                    .col(string_len_null(ExecutionHistory::Step, 16))
                    .col(integer_null(ExecutionHistory::Progress))
                    .col(string_len_null(ExecutionHistory::ErrorCode, 64))
                    .col(string_len(ExecutionHistory::Hardware, 64))
                    .col(string_len_null(ExecutionHistory::FirmwareVersion, 128))
                    .col(timestamp_with_time_zone(ExecutionHistory::At))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_execution_history_execution")
                    .table(ExecutionHistory::Table)
                    .col(ExecutionHistory::JobId)
                    .col(ExecutionHistory::DeviceId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ExecutionHistory::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(JobExecutions::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Jobs::Table).to_owned())
            .await
    }
}
