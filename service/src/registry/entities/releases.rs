//! `releases`

use sea_orm::ActiveModelBehavior;
use sea_orm::entity::prelude::{
    DateTimeUtc, DeriveEntityModel, DerivePrimaryKey, DeriveRelation, EntityTrait, EnumIter,
    PrimaryKeyTrait,
};

/// An uploaded, verified release.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "releases")]
pub struct Model {
    /// Release id (UUID).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// Product.
    pub product: String,
    /// Version as written.
    pub version: String,
    /// Sortable form of `version`.
    pub version_key: String,
    /// The canonical manifest bytes, exactly as signed.
    pub manifest: String,
    /// The signatures, as the envelope carried them (JSON array).
    pub signatures: String,
    /// SHA-256 of the image.
    pub sha256: String,
    /// Image size in bytes.
    pub size: i64,
    /// Content-addressed object key.
    pub object_key: String,
    /// Token id of the uploader.
    pub uploaded_by: String,
    /// Upload time.
    pub uploaded_at: DateTimeUtc,
}

/// No relations are navigated through sea-orm.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
