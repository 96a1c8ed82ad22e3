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

impl Model {
    /// A first execution of `job_id` on `device_id`, QUEUED at `now`, in a rollout's wave
    /// when `placed` names them (`(rollout id, wave)`).
    pub fn queued(
        job_id: String,
        device_id: String,
        now: DateTimeUtc,
        placed: Option<(String, i32)>,
    ) -> Self {
        let (rollout_id, wave) = placed.unzip();
        Model {
            job_id,
            device_id,
            execution_number: 1,
            version: 1,
            state: fleetwave_artifacts::protocol::jobs::ExecutionState::Queued
                .as_str()
                .to_owned(),
            step: None,
            progress: None,
            error_code: None,
            error_message: None,
            queued_at: now,
            started_at: None,
            updated_at: now,
            rollout_id,
            wave,
            retry_at: None,
        }
    }
}
