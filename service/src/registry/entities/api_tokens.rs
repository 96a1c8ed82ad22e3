//! `api_tokens`

use sea_orm::ActiveModelBehavior;
use sea_orm::entity::prelude::{
    DateTimeUtc, DeriveEntityModel, DerivePrimaryKey, DeriveRelation, EntityTrait, EnumIter,
    PrimaryKeyTrait,
};

/// An API token; the secret itself is never stored.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_tokens")]
pub struct Model {
    /// Token id (UUID), the actor named in audit events.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// A human name.
    pub name: String,
    /// `admin`, `release` or `auditor`.
    pub role: String,
    /// Hex SHA-256 of the secret.
    pub secret_hash: String,
    /// Token id that created it (none for the bootstrap token).
    pub created_by: Option<String>,
    /// Creation time.
    pub created_at: DateTimeUtc,
    /// Revocation time.
    pub revoked_at: Option<DateTimeUtc>,
}

/// No relations are navigated through sea-orm.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
