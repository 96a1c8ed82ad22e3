//! `events`

use sea_orm::ActiveModelBehavior;
use sea_orm::entity::prelude::{
    DateTimeUtc, DeriveEntityModel, DerivePrimaryKey, DeriveRelation, EntityTrait, EnumIter,
    PrimaryKeyTrait,
};

/// One event for webhooks, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "events")]
pub struct Model {
    /// Position in the log.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// `rollout.halted`, `rollout.completed`, `execution.failed`, `execution.timed_out`.
    pub kind: String,
    /// The rollout it concerns.
    pub rollout_id: Option<String>,
    /// The JSON body, exactly as signed and sent.
    pub payload: String,
    /// When it happened.
    pub created_at: DateTimeUtc,
}

/// No relations are navigated through sea-orm.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
