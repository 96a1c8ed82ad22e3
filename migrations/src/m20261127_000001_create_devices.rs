//! Devices: the registry's core table. `firmware_key` is a sortable form of
//! `firmware_version`, so version comparisons in group queries run in SQL on an index.

use sea_orm_migration::prelude::{DbErr, DeriveIden, DeriveMigrationName, Expr, Index, Table};
use sea_orm_migration::schema::{
    json_binary, string_len, string_null, timestamp_with_time_zone, timestamp_with_time_zone_null,
};
use sea_orm_migration::sea_orm;
use sea_orm_migration::{MigrationTrait, SchemaManager, async_trait};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
pub(crate) enum Devices {
    Table,
    Id,
    Serial,
    Hardware,
    Attributes,
    FirmwareVersion,
    FirmwareKey,
    LastSeenAt,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Devices::Table)
                    .col(string_len(Devices::Id, 128).primary_key())
                    .col(string_null(Devices::Serial))
                    .col(string_len(Devices::Hardware, 64))
                    .col(json_binary(Devices::Attributes).default(Expr::val("{}")))
                    .col(string_null(Devices::FirmwareVersion))
                    .col(string_null(Devices::FirmwareKey))
                    .col(timestamp_with_time_zone_null(Devices::LastSeenAt))
                    .col(timestamp_with_time_zone(Devices::CreatedAt))
                    .col(timestamp_with_time_zone(Devices::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        for (name, col) in [
            ("idx_devices_hardware", Devices::Hardware),
            ("idx_devices_firmware_key", Devices::FirmwareKey),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(Devices::Table)
                        .col(col)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Devices::Table).to_owned())
            .await
    }
}
