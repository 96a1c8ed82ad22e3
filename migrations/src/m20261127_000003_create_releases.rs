//! Releases: one row per uploaded, verified image. The canonical manifest and its signatures
//! are kept exactly as signed, so anyone can re-verify a release from the database alone.

use sea_orm_migration::prelude::{DbErr, DeriveIden, DeriveMigrationName, Index, Table};
use sea_orm_migration::schema::{
    big_integer, char_len, string_len, text, timestamp_with_time_zone,
};
use sea_orm_migration::sea_orm;
use sea_orm_migration::{MigrationTrait, SchemaManager, async_trait};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Releases {
    Table,
    Id,
    Product,
    Version,
    VersionKey,
    Manifest,
    Signatures,
    Sha256,
    Size,
    ObjectKey,
    UploadedBy,
    UploadedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Releases::Table)
                    .col(string_len(Releases::Id, 36).primary_key())
                    .col(string_len(Releases::Product, 64))
                    .col(string_len(Releases::Version, 128))
                    .col(string_len(Releases::VersionKey, 200))
                    .col(text(Releases::Manifest))
                    .col(text(Releases::Signatures))
                    .col(char_len(Releases::Sha256, 64))
                    .col(big_integer(Releases::Size))
                    .col(string_len(Releases::ObjectKey, 255))
                    .col(string_len(Releases::UploadedBy, 64))
                    .col(timestamp_with_time_zone(Releases::UploadedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_releases_product_version")
                    .table(Releases::Table)
                    .col(Releases::Product)
                    .col(Releases::Version)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_releases_product_version_key")
                    .table(Releases::Table)
                    .col(Releases::Product)
                    .col(Releases::VersionKey)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Releases::Table).to_owned())
            .await
    }
}
