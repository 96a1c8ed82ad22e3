//! API tokens and roles. A token is `fwt_` + 64 hex digits of randomness; only its SHA-256 is
//! stored, so a database leak yields no usable token. Roles: `admin` (everything, including
//! tokens), `release` (devices, groups, releases, rollouts), `auditor` (read-only).

use fleetwave_artifacts::Sha256;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr,
    EntityTrait, PaginatorTrait, QueryFilter, Statement, TransactionTrait,
};
use serde::{Deserialize, Serialize};

use crate::audit::{self, Actor, Event};
use crate::registry::entities::api_tokens;

/// What a token may do.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only access to everything.
    Auditor,
    /// Manage devices, groups, releases and rollouts.
    Release,
    /// Everything, including tokens.
    Admin,
}

impl Role {
    /// The role's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Auditor => "auditor",
            Role::Release => "release",
            Role::Admin => "admin",
        }
    }

    /// Parses a stored or typed role name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auditor" => Some(Role::Auditor),
            "release" => Some(Role::Release),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Whether this role includes `needed` (admin ⊇ release ⊇ auditor).
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The token's id: the actor in audit events.
    pub token_id: String,
    /// The token's role.
    pub role: Role,
}

/// A freshly created token: the secret is shown once and never again.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct NewToken {
    /// Token id.
    pub id: String,
    /// Name given at creation.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The bearer secret.
    pub secret: String,
}

fn hash(secret: &str) -> String {
    Sha256::of(secret.as_bytes()).to_string()
}

/// Creates a token with `role`, recording who created it in the audit log.
pub async fn create(
    db: &DatabaseConnection,
    actor: &Actor,
    name: &str,
    role: Role,
) -> Result<NewToken, DbErr> {
    let txn = db.begin().await?;
    let token = create_in(&txn, actor, name, role).await?;
    txn.commit().await?;
    Ok(token)
}

/// [`create`] inside the caller's transaction.
async fn create_in(
    txn: &impl ConnectionTrait,
    actor: &Actor,
    name: &str,
    role: Role,
) -> Result<NewToken, DbErr> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| DbErr::Custom(format!("no randomness: {e}")))?;
    let secret = format!("fwt_{}", hex::encode(bytes));
    let id = uuid::Uuid::new_v4().to_string();
    api_tokens::Entity::insert(api_tokens::ActiveModel {
        id: Set(id.clone()),
        name: Set(name.to_owned()),
        role: Set(role.as_str().to_owned()),
        secret_hash: Set(hash(&secret)),
        created_by: Set((actor.id != "system").then(|| actor.id.clone())),
        created_at: Set(crate::db::now()),
        revoked_at: Set(None),
    })
    .exec_without_returning(txn)
    .await?;
    audit::append(
        txn,
        actor,
        Event {
            action: "token.create",
            subject: format!("token:{id}"),
            details: serde_json::json!({"name": name, "role": role}),
        },
    )
    .await?;
    Ok(NewToken {
        id,
        name: name.to_owned(),
        role,
        secret,
    })
}

/// The principal a bearer secret belongs to, if it is a live token.
pub async fn authenticate(
    db: &impl ConnectionTrait,
    secret: &str,
) -> Result<Option<Principal>, DbErr> {
    if !secret.starts_with("fwt_") || secret.len() != 68 {
        return Ok(None);
    }
    let row = api_tokens::Entity::find()
        .filter(api_tokens::Column::SecretHash.eq(hash(secret)))
        .filter(api_tokens::Column::RevokedAt.is_null())
        .one(db)
        .await?;
    Ok(row.and_then(|r| {
        Role::parse(&r.role).map(|role| Principal {
            token_id: r.id,
            role,
        })
    }))
}

/// On a database with no tokens at all, creates the first admin token and returns it. When
/// replicas start together on PostgreSQL, an advisory lock lets exactly one of them do it.
pub async fn bootstrap_admin(db: &DatabaseConnection) -> Result<Option<NewToken>, DbErr> {
    let txn = db.begin().await?;
    if txn.get_database_backend() == DatabaseBackend::Postgres {
        txn.execute_raw(Statement::from_string(
            DatabaseBackend::Postgres,
            format!("SELECT pg_advisory_xact_lock({BOOTSTRAP_LOCK})"),
        ))
        .await?;
    }
    if api_tokens::Entity::find().count(&txn).await? > 0 {
        return Ok(None);
    }
    let token = create_in(&txn, &Actor::system(), "bootstrap admin", Role::Admin).await?;
    txn.commit().await?;
    Ok(Some(token))
}

/// Serialises bootstrap across replicas.
const BOOTSTRAP_LOCK: i64 = 0x6677_626f_6f74_7374;
