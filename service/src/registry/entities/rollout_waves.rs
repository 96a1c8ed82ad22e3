//! `rollout_waves`

use sea_orm::ActiveModelBehavior;
use sea_orm::entity::prelude::{
    DateTimeUtc, DeriveEntityModel, DerivePrimaryKey, DeriveRelation, EntityTrait, EnumIter,
    PrimaryKeyTrait,
};

/// One wave of a rollout: its plan and its counters, one per execution state.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "rollout_waves")]
pub struct Model {
    /// The rollout.
    #[sea_orm(primary_key, auto_increment = false)]
    pub rollout_id: String,
    /// Index, from 0.
    #[sea_orm(primary_key, auto_increment = false)]
    pub wave: i32,
    /// Devices assigned to this wave (late joiners included).
    pub planned: i64,
    /// Cumulative bucket threshold: devices with a bucket below it belong to this wave or
    /// an earlier one.
    pub threshold: i32,
    /// Executions now QUEUED.
    pub queued: i64,
    /// Executions now IN_PROGRESS.
    pub in_progress: i64,
    /// Executions SUCCEEDED.
    pub succeeded: i64,
    /// Executions FAILED for good.
    pub failed: i64,
    /// Executions REJECTED for good.
    pub rejected: i64,
    /// Executions TIMED_OUT for good.
    pub timed_out: i64,
    /// Executions CANCELED.
    pub canceled: i64,
    /// Executions REMOVED.
    pub removed: i64,
    /// Failed executions waiting for their retry.
    pub retrying: i64,
    /// Devices not queued because they cannot take the release.
    pub incompatible: i64,
    /// When the wave started.
    pub started_at: Option<DateTimeUtc>,
    /// When its success threshold was first met (its soak starts then).
    pub threshold_met_at: Option<DateTimeUtc>,
    /// Who approved its start, when it has a gate.
    pub approved_by: Option<String>,
    /// When.
    pub approved_at: Option<DateTimeUtc>,
}

/// No relations are navigated through sea-orm.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
