//! Device shadows: one document per registered device (removed with it), with the version
//! that rises on every accepted update.

use sea_orm_migration::prelude::{
    DbErr, DeriveIden, DeriveMigrationName, ForeignKey, ForeignKeyAction, Table,
};
use sea_orm_migration::schema::{big_integer, string_len, text, timestamp_with_time_zone};
use sea_orm_migration::sea_orm;
use sea_orm_migration::{MigrationTrait, SchemaManager, async_trait};

use crate::m20261127_000001_create_devices::Devices;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Shadows {
    Table,
    DeviceId,
    Document,
    Version,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Shadows::Table)
                    .col(string_len(Shadows::DeviceId, 128).primary_key())
                    .col(text(Shadows::Document))
                    .col(big_integer(Shadows::Version))
                    .col(timestamp_with_time_zone(Shadows::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_shadows_device")
                            .from(Shadows::Table, Shadows::DeviceId)
                            .to(Devices::Table, Devices::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Shadows::Table).to_owned())
            .await
    }
}
