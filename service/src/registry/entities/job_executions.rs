//! `job_executions`

use sea_orm::ActiveModelBehavior;
use sea_orm::entity::prelude::{
    DateTimeUtc, DeriveEntityModel, DerivePrimaryKey, DeriveRelation, EntityTrait, EnumIter,
    PrimaryKeyTrait,
};

/// One device's execution of one job.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "job_executions")]
pub struct Model {
    /// The job.
    #[sea_orm(primary_key, auto_increment = false)]
    pub job_id: String,
    /// The device.
    #[sea_orm(primary_key, auto_increment = false)]
    pub device_id: String,
    /// Rises on each retry of the same job on the same device.
    pub execution_number: i64,
    /// Rises on every transition.
    pub version: i64,
    /// Execution state (`QUEUED`, `IN_PROGRESS`, ...).
    pub state: String,
    /// Current step while in progress.
    pub step: Option<String>,
    /// Percent of the step.
    pub progress: Option<i32>,
    /// Why it failed.
    pub error_code: Option<String>,
    /// Detail of the failure.
    pub error_message: Option<String>,
    /// When it was queued.
    pub queued_at: DateTimeUtc,
    /// When the device started it.
    pub started_at: Option<DateTimeUtc>,
    /// Last change.
    pub updated_at: DateTimeUtc,
    /// The rollout it belongs to, if any.
    pub rollout_id: Option<String>,
    /// Its wave in that rollout.
    pub wave: Option<i32>,
    /// When a failed execution is queued again (while it waits for its retry).
    pub retry_at: Option<DateTimeUtc>,
}

/// No relations are navigated through sea-orm.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
