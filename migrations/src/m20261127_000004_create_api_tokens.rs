//! API tokens: only a SHA-256 of each secret is stored, with the token's role.

use sea_orm_migration::prelude::{DbErr, DeriveIden, DeriveMigrationName, Index, Table};
use sea_orm_migration::schema::{
    char_len, string_len, string_len_null, timestamp_with_time_zone, timestamp_with_time_zone_null,
};
use sea_orm_migration::sea_orm;
use sea_orm_migration::{MigrationTrait, SchemaManager, async_trait};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    Id,
    Name,
    Role,
    SecretHash,
    CreatedBy,
    CreatedAt,
    RevokedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ApiTokens::Table)
                    .col(string_len(ApiTokens::Id, 36).primary_key())
                    .col(string_len(ApiTokens::Name, 128))
                    .col(string_len(ApiTokens::Role, 16))
                    .col(char_len(ApiTokens::SecretHash, 64))
                    .col(string_len_null(ApiTokens::CreatedBy, 36))
                    .col(timestamp_with_time_zone(ApiTokens::CreatedAt))
                    .col(timestamp_with_time_zone_null(ApiTokens::RevokedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_api_tokens_secret_hash")
                    .table(ApiTokens::Table)
                    .col(ApiTokens::SecretHash)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ApiTokens::Table).to_owned())
            .await
    }
}
