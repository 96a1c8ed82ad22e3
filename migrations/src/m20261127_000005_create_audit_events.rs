//! The audit log: append-only, one row per human or system action, each row's `hash`
//! chaining to the previous row's. `seq` is assigned by the writer as previous + 1 (not an
//! auto-increment), so a deleted row shows as a gap. `details` is text, not JSON, so the
//! hashed bytes are exactly the stored bytes.

use sea_orm_migration::prelude::{DbErr, DeriveIden, DeriveMigrationName, Index, Table};
use sea_orm_migration::schema::{
    big_integer, char_len, char_len_null, string_len, text, timestamp_with_time_zone,
};
use sea_orm_migration::sea_orm;
use sea_orm_migration::{MigrationTrait, SchemaManager, async_trait};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Seq,
    At,
    Actor,
    Action,
    Subject,
    RequestDigest,
    Details,
    PrevHash,
    Hash,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .col(big_integer(AuditEvents::Seq).primary_key())
                    .col(timestamp_with_time_zone(AuditEvents::At))
                    .col(string_len(AuditEvents::Actor, 64))
                    .col(string_len(AuditEvents::Action, 64))
                    .col(string_len(AuditEvents::Subject, 255))
                    .col(char_len_null(AuditEvents::RequestDigest, 64))
                    .col(text(AuditEvents::Details))
                    .col(char_len(AuditEvents::PrevHash, 64))
                    .col(char_len(AuditEvents::Hash, 64))
                    .to_owned(),
            )
            .await?;
        for (name, col) in [
            ("idx_audit_events_subject", AuditEvents::Subject),
            ("idx_audit_events_at", AuditEvents::At),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(AuditEvents::Table)
                        .col(col)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AuditEvents::Table).to_owned())
            .await
    }
}
