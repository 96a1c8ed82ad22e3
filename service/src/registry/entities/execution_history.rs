//! `execution_history`

use sea_orm::ActiveModelBehavior;
use sea_orm::entity::prelude::{
    DateTimeUtc, DeriveEntityModel, DerivePrimaryKey, DeriveRelation, EntityTrait, EnumIter,
    PrimaryKeyTrait,
};

/// One transition of one execution, with the device's details at that moment.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "execution_history")]
pub struct Model {
    /// Row id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The job.
    pub job_id: String,
    /// The device.
    pub device_id: String,
    /// The execution number.
    pub execution_number: i64,
    /// State before (none when queued).
    pub from_state: Option<String>,
    /// State after.
    pub to_state: String,
    /// Step after.
    pub step: Option<String>,
    /// Progress after.
    pub progress: Option<i32>,
    /// Error code, if it failed.
    pub error_code: Option<String>,
    /// The device's hardware then.
    pub hardware: String,
    /// The firmware it reported then.
    pub firmware_version: Option<String>,
    /// When.
    pub at: DateTimeUtc,
}

/// No relations are navigated through sea-orm.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
