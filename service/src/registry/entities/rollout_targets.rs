//! `rollout_targets`

use sea_orm::ActiveModelBehavior;
use sea_orm::entity::prelude::{
    DeriveEntityModel, DerivePrimaryKey, DeriveRelation, EntityTrait, EnumIter, PrimaryKeyTrait,
};

/// One device a rollout covers, until it is queued: from then on its execution (which
/// names the rollout and the wave) holds its place, and this row is gone.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "rollout_targets")]
pub struct Model {
    /// The rollout.
    #[sea_orm(primary_key, auto_increment = false)]
    pub rollout_id: String,
    /// The device.
    #[sea_orm(primary_key, auto_increment = false)]
    pub device_id: String,
    /// Its bucket for this rollout, 0 to 9999.
    pub bucket: i32,
    /// The wave it belongs to.
    pub wave: i32,
    /// `pending`, `incompatible` or `outside` (beyond the last wave).
    pub status: String,
    /// Why it is incompatible (a stable code).
    pub reason: Option<String>,
    /// The detail of that reason.
    pub detail: Option<String>,
}

/// No relations are navigated through sea-orm.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
