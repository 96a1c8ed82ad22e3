//! `group_members`

use sea_orm::ActiveModelBehavior;
use sea_orm::entity::prelude::{
    DateTimeUtc, DeriveEntityModel, DerivePrimaryKey, DeriveRelation, EntityTrait, EnumIter,
    PrimaryKeyTrait,
};

/// A device's membership of a static group.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "group_members")]
pub struct Model {
    /// The group.
    #[sea_orm(primary_key, auto_increment = false)]
    pub group_name: String,
    /// The device.
    #[sea_orm(primary_key, auto_increment = false)]
    pub device_id: String,
    /// When it was added.
    pub added_at: DateTimeUtc,
}

/// No relations are navigated through sea-orm.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
