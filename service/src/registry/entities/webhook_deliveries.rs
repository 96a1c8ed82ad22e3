//! `webhook_deliveries`

use sea_orm::ActiveModelBehavior;
use sea_orm::entity::prelude::{
    DateTimeUtc, DeriveEntityModel, DerivePrimaryKey, DeriveRelation, EntityTrait, EnumIter,
    PrimaryKeyTrait,
};

/// One webhook's position in the event log.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_deliveries")]
pub struct Model {
    /// The webhook URL.
    #[sea_orm(primary_key, auto_increment = false)]
    pub webhook: String,
    /// The last event it accepted (0: none).
    pub last_event_id: i64,
    /// Failed attempts at the next event.
    pub attempts: i32,
    /// When to try next.
    pub next_attempt_at: DateTimeUtc,
    /// What went wrong last.
    pub last_error: Option<String>,
}

/// No relations are navigated through sea-orm.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
