//! The audit log: an append-only chain of events, each hashing its content together with the
//! previous event's hash. Events are written in the same transaction as the change they
//! record, so a change and its audit event commit or vanish together. `verify` walks the
//! chain and names the first link whose content, predecessor or position does not hold.
//! [`devices`] is the auditor's per-device report (version, since when, which rollout, who
//! approved).

use chrono::{DateTime, SubsecRound, Utc};
use fleetwave_artifacts::Sha256;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseBackend, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Statement,
};
use serde::Serialize;

use crate::registry::entities::audit_events;

pub mod devices;

/// The `prev_hash` of the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Serialises audit appends across replicas (a PostgreSQL transaction-level advisory lock).
const AUDIT_LOCK: i64 = 0x6677_6175_6469_7401;

/// Who did something, and with which request.
#[derive(Clone, Debug)]
pub struct Actor {
    /// Token id, or `system` for the service's own actions.
    pub id: String,
    /// Hex SHA-256 of the request body, when the action came with one.
    pub request_digest: Option<String>,
}

impl Actor {
    /// The service itself (start-up, engine decisions).
    pub fn system() -> Self {
        Actor {
            id: "system".to_owned(),
            request_digest: None,
        }
    }
}

/// One thing that happened.
#[derive(Clone, Debug)]
pub struct Event {
    /// Dotted verb, e.g. `device.create`.
    pub action: &'static str,
    /// `kind:id` of what it happened to.
    pub subject: String,
    /// What changed, as JSON.
    pub details: serde_json::Value,
}

/// Appends `event` by `actor` to the chain, inside the caller's transaction.
pub async fn append(txn: &impl ConnectionTrait, actor: &Actor, event: Event) -> Result<i64, DbErr> {
    if txn.get_database_backend() == DatabaseBackend::Postgres {
        txn.execute_raw(Statement::from_string(
            DatabaseBackend::Postgres,
            format!("SELECT pg_advisory_xact_lock({AUDIT_LOCK})"),
        ))
        .await?;
    }
    let last = audit_events::Entity::find()
        .order_by_desc(audit_events::Column::Seq)
        .limit(1)
        .one(txn)
        .await?;
    let (seq, prev_hash) = match last {
        Some(l) => (l.seq + 1, l.hash),
        None => (1, GENESIS.to_owned()),
    };
    let at = Utc::now().trunc_subsecs(3);
    let details = event.details.to_string();
    let mut row = audit_events::Model {
        seq,
        at,
        actor: actor.id.clone(),
        action: event.action.to_owned(),
        subject: event.subject,
        request_digest: actor.request_digest.clone(),
        details,
        prev_hash,
        hash: String::new(),
    };
    row.hash = link_hash(&row);
    audit_events::Entity::insert(audit_events::ActiveModel {
        seq: Set(row.seq),
        at: Set(row.at),
        actor: Set(row.actor),
        action: Set(row.action),
        subject: Set(row.subject),
        request_digest: Set(row.request_digest),
        details: Set(row.details),
        prev_hash: Set(row.prev_hash),
        hash: Set(row.hash),
    })
    .exec_without_returning(txn)
    .await?;
    Ok(seq)
}

/// The hash of one link: SHA-256 over a JSON array of its fields, in a fixed order.
pub fn link_hash(row: &audit_events::Model) -> String {
    #[derive(Serialize)]
    struct Link<'a>(
        i64,
        String,
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
        &'a str,
        &'a str,
    );
    let link = Link(
        row.seq,
        timestamp(&row.at),
        &row.actor,
        &row.action,
        &row.subject,
        row.request_digest.as_deref(),
        &row.details,
        &row.prev_hash,
    );
    let bytes = serde_json::to_vec(&link).expect("a link always serialises");
    Sha256::of(&bytes).to_string()
}

fn timestamp(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The outcome of walking the chain.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Report {
    /// Links checked before the first break (all of them when intact).
    pub links: u64,
    /// Hash of the last intact link: record it to detect a truncated tail later.
    pub head: Option<String>,
    /// The first broken link, if any.
    pub broken: Option<Break>,
}

/// Where and why the chain breaks.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Break {
    /// Sequence number of the first link that does not hold.
    pub seq: i64,
    /// What is wrong with it.
    pub reason: String,
}

/// Walks the whole chain in order, a page at a time, and reports the first break.
pub async fn verify(db: &impl ConnectionTrait) -> Result<Report, DbErr> {
    const PAGE: u64 = 1000;
    let mut expected_seq = 1i64;
    let mut prev_hash = GENESIS.to_owned();
    let mut links = 0u64;
    loop {
        let page = audit_events::Entity::find()
            .filter(audit_events::Column::Seq.gte(expected_seq))
            .order_by_asc(audit_events::Column::Seq)
            .limit(PAGE)
            .all(db)
            .await?;
        let done = (page.len() as u64) < PAGE;
        for row in page {
            let reason = if row.seq != expected_seq {
                Some(format!(
                    "expected link {expected_seq}, found {}: links are missing",
                    row.seq
                ))
            } else if row.prev_hash != prev_hash {
                Some("its prev_hash does not match the previous link's hash".to_owned())
            } else if link_hash(&row) != row.hash {
                Some("its content does not match its hash: the row was edited".to_owned())
            } else {
                None
            };
            if let Some(reason) = reason {
                return Ok(Report {
                    links,
                    head: (links > 0).then_some(prev_hash),
                    broken: Some(Break {
                        seq: expected_seq,
                        reason,
                    }),
                });
            }
            links += 1;
            expected_seq += 1;
            prev_hash = row.hash;
        }
        if done {
            return Ok(Report {
                links,
                head: (links > 0).then_some(prev_hash),
                broken: None,
            });
        }
    }
}
