//! `shadows`

use sea_orm::ActiveModelBehavior;
use sea_orm::entity::prelude::{
    DateTimeUtc, DeriveEntityModel, DerivePrimaryKey, DeriveRelation, EntityTrait, EnumIter,
    PrimaryKeyTrait,
};

/// A device's shadow document.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "shadows")]
pub struct Model {
    /// The device.
    #[sea_orm(primary_key, auto_increment = false)]
    pub device_id: String,
    /// The shadow's document as JSON, `{"metadata", "state", "version"}`
    /// (`shadow::document::Stored`).
    pub document: String,
    /// The shadow's version.
    pub version: i64,
    /// When it last changed.
    pub updated_at: DateTimeUtc,
}

/// No relations are navigated through sea-orm.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
