//! `rollouts`

use sea_orm::ActiveModelBehavior;
use sea_orm::entity::prelude::{
    DateTimeUtc, DeriveEntityModel, DerivePrimaryKey, DeriveRelation, EntityTrait, EnumIter,
    PrimaryKeyTrait,
};

/// A rollout: one release installed on a target in waves.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "rollouts")]
pub struct Model {
    /// Rollout id (UUIDv7).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// A name people recognise it by.
    pub name: String,
    /// The release installed.
    pub release_id: String,
    /// The job its executions belong to.
    pub job_id: String,
    /// `group` or `devices`.
    pub target_kind: String,
    /// The group name, or the device ids as a JSON array.
    pub target: String,
    /// The rollout's specification (waves and policies) as JSON.
    pub spec: String,
    /// `SCHEDULED`, `RUNNING`, `PAUSED`, `HALTED`, `COMPLETED`, `CANCELED`.
    pub state: String,
    /// Why it is in that state (the tripped threshold, who paused it).
    pub state_reason: Option<String>,
    /// The wave running (or last run), from 0.
    pub current_wave: i32,
    /// The wave whose retained notice is published, if any.
    pub notice_wave: Option<i32>,
    /// Rate limit: devices that may still be queued now.
    pub rate_tokens: f64,
    /// Rate limit: when the tokens were last topped up.
    pub rate_at: Option<DateTimeUtc>,
    /// When the engine next looks at it.
    pub next_tick_at: DateTimeUtc,
    /// Token id that created it.
    pub created_by: String,
    /// When.
    pub created_at: DateTimeUtc,
    /// When its first wave started.
    pub started_at: Option<DateTimeUtc>,
    /// When it ended (completed, halted, canceled).
    pub finished_at: Option<DateTimeUtc>,
}

/// No relations are navigated through sea-orm.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
