//! Device groups. A static group lists its members; a dynamic group is a stored query over
//! device fields and attributes (see [`super::query`]), evaluated in SQL each time it is read,
//! so a device that starts to match belongs to it at once. Group names appear in MQTT topics,
//! so they follow the same rules as product names.

use fleetwave_artifacts::Product;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query as SqlQuery, SimpleExpr};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use serde::{Deserialize, Serialize};

use super::devices::{Device, Page};
use super::entities::{devices, group_members, groups};
use super::query::Query;
use super::{Error, is_unique_violation};
use crate::audit::{self, Actor, Event};

/// Most devices added in one request.
pub const MAX_MEMBERS_PER_REQUEST: usize = 1000;

/// A group as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// `static` or `dynamic`.
    pub kind: String,
    /// The query of a dynamic group.
    pub query: Option<String>,
    /// When it was created.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<groups::Model> for Group {
    fn from(m: groups::Model) -> Self {
        Group {
            name: m.name,
            kind: m.kind,
            query: m.query,
            created_at: m.created_at,
        }
    }
}

/// A group to create: with a `query` it is dynamic, without one static.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    /// Name (1 to 64 of a-z 0-9 . _ -).
    pub name: String,
    /// The device query of a dynamic group.
    #[serde(default)]
    pub query: Option<String>,
}

/// Devices to add to a static group.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Members {
    /// Device ids (at most 1000 per request).
    pub devices: Vec<String>,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        reason: reason.into(),
    }
}

fn not_found(name: &str) -> Error {
    Error::NotFound {
        kind: "group",
        id: name.to_owned(),
    }
}

/// Parses a query for the API, naming the column of the first bad token.
pub fn parse_query(text: &str) -> Result<Query, Error> {
    Query::parse(text).map_err(|e| invalid("query", e.to_string()))
}

/// Creates a group.
pub async fn create(db: &DatabaseConnection, actor: &Actor, new: NewGroup) -> Result<Group, Error> {
    let name = Product::parse(&new.name).map_err(|e| invalid("name", e.to_string()))?;
    if let Some(q) = &new.query {
        parse_query(q)?;
    }
    let row = groups::Model {
        name: name.to_string(),
        kind: if new.query.is_some() {
            "dynamic"
        } else {
            "static"
        }
        .to_owned(),
        query: new.query,
        created_at: crate::db::now(),
    };
    let txn = db.begin().await?;
    match groups::Entity::insert(groups::ActiveModel::from(row.clone()))
        .exec_without_returning(&txn)
        .await
    {
        Err(e) if is_unique_violation(&e) => {
            return Err(Error::AlreadyExists {
                kind: "group",
                id: row.name,
            });
        }
        other => other?,
    };
    audit::append(
        &txn,
        actor,
        Event {
            action: "group.create",
            subject: format!("group:{}", row.name),
            details: serde_json::json!({"kind": row.kind, "query": row.query}),
        },
    )
    .await?;
    txn.commit().await?;
    Ok(row.into())
}

/// Reads one group.
pub async fn get(db: &impl ConnectionTrait, name: &str) -> Result<Group, Error> {
    groups::Entity::find_by_id(name.to_owned())
        .one(db)
        .await?
        .map(Group::from)
        .ok_or_else(|| not_found(name))
}

/// Every group, by name.
pub async fn list(db: &impl ConnectionTrait) -> Result<Vec<Group>, Error> {
    Ok(groups::Entity::find()
        .order_by_asc(groups::Column::Name)
        .all(db)
        .await?
        .into_iter()
        .map(Group::from)
        .collect())
}

/// Deletes a group (not its devices).
pub async fn delete(db: &DatabaseConnection, actor: &Actor, name: &str) -> Result<(), Error> {
    let txn = db.begin().await?;
    group_members::Entity::delete_many()
        .filter(group_members::Column::GroupName.eq(name))
        .exec(&txn)
        .await?;
    if groups::Entity::delete_by_id(name.to_owned())
        .exec(&txn)
        .await?
        .rows_affected
        == 0
    {
        return Err(not_found(name));
    }
    audit::append(
        &txn,
        actor,
        Event {
            action: "group.delete",
            subject: format!("group:{name}"),
            details: serde_json::json!({}),
        },
    )
    .await?;
    txn.commit().await?;
    Ok(())
}

/// Adds devices to a static group; devices already in it stay. Every device must exist.
pub async fn add_members(
    db: &DatabaseConnection,
    actor: &Actor,
    name: &str,
    members: Members,
) -> Result<u64, Error> {
    if members.devices.is_empty() || members.devices.len() > MAX_MEMBERS_PER_REQUEST {
        return Err(invalid(
            "devices",
            format!("1 to {MAX_MEMBERS_PER_REQUEST} device ids"),
        ));
    }
    let txn = db.begin().await?;
    let group = groups::Entity::find_by_id(name.to_owned())
        .one(&txn)
        .await?
        .ok_or_else(|| not_found(name))?;
    if group.kind != "static" {
        return Err(invalid(
            "group",
            format!("{name} is dynamic: its query decides its members"),
        ));
    }
    let known: Vec<String> = devices::Entity::find()
        .select_only()
        .column(devices::Column::Id)
        .filter(devices::Column::Id.is_in(members.devices.iter().map(String::as_str)))
        .into_tuple()
        .all(&txn)
        .await?;
    let unknown: Vec<&String> = members
        .devices
        .iter()
        .filter(|d| !known.contains(d))
        .collect();
    if !unknown.is_empty() {
        return Err(invalid(
            "devices",
            format!(
                "not registered: {}",
                unknown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let now = crate::db::now();
    let rows = known.iter().map(|d| group_members::ActiveModel {
        group_name: Set(name.to_owned()),
        device_id: Set(d.clone()),
        added_at: Set(now),
    });
    let added = group_members::Entity::insert_many(rows)
        .on_conflict(
            OnConflict::columns([
                group_members::Column::GroupName,
                group_members::Column::DeviceId,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
    audit::append(
        &txn,
        actor,
        Event {
            action: "group.add_members",
            subject: format!("group:{name}"),
            details: serde_json::json!({"devices": known}),
        },
    )
    .await?;
    txn.commit().await?;
    Ok(added)
}

/// Removes a device from a static group.
pub async fn remove_member(
    db: &DatabaseConnection,
    actor: &Actor,
    name: &str,
    device: &str,
) -> Result<(), Error> {
    let txn = db.begin().await?;
    let removed = group_members::Entity::delete_many()
        .filter(group_members::Column::GroupName.eq(name))
        .filter(group_members::Column::DeviceId.eq(device))
        .exec(&txn)
        .await?;
    if removed.rows_affected == 0 {
        return Err(Error::NotFound {
            kind: "member",
            id: format!("{name}/{device}"),
        });
    }
    audit::append(
        &txn,
        actor,
        Event {
            action: "group.remove_member",
            subject: format!("group:{name}"),
            details: serde_json::json!({"device": device}),
        },
    )
    .await?;
    txn.commit().await?;
    Ok(())
}

/// Which of a group's devices to list.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MembersQuery {
    /// Continue after this cursor.
    pub cursor: Option<String>,
    /// Page size (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
}

/// A page of the group's devices in id order: its members, or the devices its query
/// matches, selected in SQL.
pub async fn devices(
    db: &impl ConnectionTrait,
    name: &str,
    page: &MembersQuery,
) -> Result<Page<Device>, Error> {
    let condition = membership(db, name).await?;
    super::devices::page(db, condition, page.cursor.as_deref(), page.limit).await
}

/// The SQL condition on `devices` that selects the group's devices now: its members, or the
/// devices its query matches.
pub async fn membership(db: &impl ConnectionTrait, name: &str) -> Result<SimpleExpr, Error> {
    let group = get(db, name).await?;
    Ok(match &group.query {
        Some(q) => parse_query(q)?.to_sql(db.get_database_backend()),
        None => Expr::col((devices::Entity, devices::Column::Id)).in_subquery(
            SqlQuery::select()
                .column(group_members::Column::DeviceId)
                .from(group_members::Entity)
                .and_where(Expr::col(group_members::Column::GroupName).eq(name))
                .to_owned(),
        ),
    })
}

/// How many devices a group holds now.
pub async fn count(db: &impl ConnectionTrait, name: &str) -> Result<u64, Error> {
    let group = get(db, name).await?;
    Ok(match &group.query {
        Some(q) => {
            devices::Entity::find()
                .filter(parse_query(q)?.to_sql(db.get_database_backend()))
                .count(db)
                .await?
        }
        None => {
            group_members::Entity::find()
                .filter(group_members::Column::GroupName.eq(name))
                .count(db)
                .await?
        }
    })
}
