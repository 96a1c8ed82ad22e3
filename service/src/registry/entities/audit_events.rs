//! `audit_events`

use sea_orm::ActiveModelBehavior;
use sea_orm::entity::prelude::{
    DateTimeUtc, DeriveEntityModel, DerivePrimaryKey, DeriveRelation, EntityTrait, EnumIter,
    PrimaryKeyTrait,
};

/// One link of the audit chain.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_events")]
pub struct Model {
    /// Position in the chain, from 1, without gaps.
    #[sea_orm(primary_key, auto_increment = false)]
    pub seq: i64,
    /// When it happened (millisecond precision).
    pub at: DateTimeUtc,
    /// Token id, or `system`.
    pub actor: String,
    /// What was done, e.g. `device.create`.
    pub action: String,
    /// What it was done to, e.g. `device:pi-0001`.
    pub subject: String,
    /// Hex SHA-256 of the request body, when there was one.
    pub request_digest: Option<String>,
    /// Canonical JSON with the action's details.
    pub details: String,
    /// The previous link's hash (64 zeros for the first).
    pub prev_hash: String,
    /// This link's hash.
    pub hash: String,
}

/// No relations are navigated through sea-orm.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
