//! `jobs`

use sea_orm::ActiveModelBehavior;
use sea_orm::entity::prelude::{
    DateTimeUtc, DeriveEntityModel, DerivePrimaryKey, DeriveRelation, EntityTrait, EnumIter,
    PrimaryKeyTrait,
};

/// A job: one release to install on its targets.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    /// Job id (UUIDv7).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// The release to install.
    pub release_id: String,
    /// The rollout it belongs to, if any.
    pub rollout_id: Option<String>,
    /// Token id that created it.
    pub created_by: String,
    /// When.
    pub created_at: DateTimeUtc,
}

/// No relations are navigated through sea-orm.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
