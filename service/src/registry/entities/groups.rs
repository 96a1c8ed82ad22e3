//! `groups`

use sea_orm::ActiveModelBehavior;
use sea_orm::entity::prelude::{
    DateTimeUtc, DeriveEntityModel, DerivePrimaryKey, DeriveRelation, EntityTrait, EnumIter,
    PrimaryKeyTrait,
};

/// A device group.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "groups")]
pub struct Model {
    /// Group name.
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    /// `static` or `dynamic`.
    pub kind: String,
    /// The attribute query of a dynamic group.
    pub query: Option<String>,
    /// When it was created.
    pub created_at: DateTimeUtc,
}

/// No relations are navigated through sea-orm.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
