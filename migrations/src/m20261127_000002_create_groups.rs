//! Device groups: static groups with explicit members, and dynamic groups defined by an
//! attribute query that is evaluated in SQL when the group is read.

use sea_orm_migration::prelude::{
    DbErr, DeriveIden, DeriveMigrationName, ForeignKey, ForeignKeyAction, Index, Table,
};
use sea_orm_migration::schema::{string_len, text_null, timestamp_with_time_zone};
use sea_orm_migration::sea_orm;
use sea_orm_migration::{MigrationTrait, SchemaManager, async_trait};

use crate::m20261127_000001_create_devices::Devices;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Groups {
    Table,
    Name,
    Kind,
    Query,
    CreatedAt,
}

#[derive(DeriveIden)]
enum GroupMembers {
    Table,
    GroupName,
    DeviceId,
    AddedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Groups::Table)
                    .col(string_len(Groups::Name, 64).primary_key())
                    .col(string_len(Groups::Kind, 16))
                    .col(text_null(Groups::Query))
                    .col(timestamp_with_time_zone(Groups::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(GroupMembers::Table)
                    .col(string_len(GroupMembers::GroupName, 64))
                    .col(string_len(GroupMembers::DeviceId, 128))
                    .col(timestamp_with_time_zone(GroupMembers::AddedAt))
                    .primary_key(
                        Index::create()
                            .col(GroupMembers::GroupName)
                            .col(GroupMembers::DeviceId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_group_members_group")
                            .from(GroupMembers::Table, GroupMembers::GroupName)
                            .to(Groups::Table, Groups::Name)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_group_members_device")
                            .from(GroupMembers::Table, GroupMembers::DeviceId)
                            .to(Devices::Table, Devices::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_group_members_device")
                    .table(GroupMembers::Table)
                    .col(GroupMembers::DeviceId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(GroupMembers::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Groups::Table).to_owned())
            .await
    }
}
