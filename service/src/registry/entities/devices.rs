//! `devices`

use sea_orm::ActiveModelBehavior;
use sea_orm::entity::prelude::{
    DateTimeUtc, DeriveEntityModel, DerivePrimaryKey, DeriveRelation, EntityTrait, EnumIter, Json,
    PrimaryKeyTrait,
};

/// A registered device.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "devices")]
pub struct Model {
    /// Device id (the thing name, the certificate CN).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// Serial number.
    pub serial: Option<String>,
    /// Hardware id.
    pub hardware: String,
    /// Free-form attributes (a JSON object).
    pub attributes: Json,
    /// The firmware version it last reported.
    pub firmware_version: Option<String>,
    /// Sortable form of `firmware_version`.
    pub firmware_key: Option<String>,
    /// When it was last heard from.
    pub last_seen_at: Option<DateTimeUtc>,
    /// When it was registered.
    pub created_at: DateTimeUtc,
    /// When it was last changed.
    pub updated_at: DateTimeUtc,
}

/// No relations are navigated through sea-orm.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
