//! Events for webhooks: an append-only log written in the transaction of the change it
//! reports (rollout halted or completed, execution failed or timed out), and its delivery:
//! each configured webhook receives every event in order, POSTed as JSON with an
//! `X-Fleetwave-Signature: sha256=<hex HMAC-SHA256 of the body>` header, retried with
//! backoff until it answers 2xx. Each webhook's position is a row that one replica at a
//! time holds (`FOR UPDATE SKIP LOCKED`), so several replicas deliver each event once
//! (at least once across a crash: receivers dedupe by `X-Fleetwave-Event`).

use std::time::Duration;

use anyhow::{Context, Result};
use hmac::{KeyInit, Mac};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseBackend,
    DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
    sea_query::OnConflict,
};

use crate::config::Webhook;
use crate::registry::entities::{events, webhook_deliveries};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Fleetwave-Signature";
/// The header carrying the event's position in the log (its id).
pub const EVENT_HEADER: &str = "X-Fleetwave-Event";
/// The longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Appends an event of `kind` inside the caller's transaction.
pub async fn record(
    txn: &impl ConnectionTrait,
    kind: &str,
    rollout: Option<&str>,
    details: serde_json::Value,
) -> Result<(), DbErr> {
    let now = crate::db::now();
    let payload = serde_json::json!({"kind": kind, "at": now, "details": details});
    events::Entity::insert(events::ActiveModel {
        id: sea_orm::ActiveValue::NotSet,
        kind: Set(kind.to_owned()),
        rollout_id: Set(rollout.map(str::to_owned)),
        payload: Set(payload.to_string()),
        created_at: Set(now),
    })
    .exec_without_returning(txn)
    .await?;
    Ok(())
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delivers events to `webhooks` until the process ends, looking for new ones every `every`.
pub async fn deliver_forever(db: DatabaseConnection, webhooks: Vec<Webhook>, every: Duration) {
    if webhooks.is_empty() {
        return;
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client with a timeout builds");
    loop {
        for hook in &webhooks {
            match deliver_once(&db, &http, hook).await {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(webhook = %hook.url, error.cause_chain = ?e, "delivering events")
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Delivers the events `hook` has not accepted yet, in order, stopping at the first
/// refusal; returns how many it accepted. Does nothing while another replica holds the
/// webhook or its backoff has not passed.
pub async fn deliver_once(
    db: &DatabaseConnection,
    http: &reqwest::Client,
    hook: &Webhook,
) -> Result<usize> {
    let now = crate::db::now();
    webhook_deliveries::Entity::insert(webhook_deliveries::ActiveModel {
        webhook: Set(hook.url.clone()),
        last_event_id: Set(0),
        attempts: Set(0),
        next_attempt_at: Set(now),
        last_error: Set(None),
    })
    .on_conflict(
        OnConflict::column(webhook_deliveries::Column::Webhook)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await
    .context("registering the webhook")?;
    let txn = db.begin().await?;
    let mut query = webhook_deliveries::Entity::find_by_id(hook.url.clone())
        .filter(webhook_deliveries::Column::NextAttemptAt.lte(now));
    if txn.get_database_backend() == DatabaseBackend::Postgres {
        query = query.lock_with_behavior(
            sea_orm::sea_query::LockType::Update,
            sea_orm::sea_query::LockBehavior::SkipLocked,
        );
    }
    let Some(mut position) = query.one(&txn).await? else {
        return Ok(0);
    };
    let pending = events::Entity::find()
        .filter(events::Column::Id.gt(position.last_event_id))
        .order_by_asc(events::Column::Id)
        .limit(100)
        .all(&txn)
        .await?;
    let mut accepted = 0;
    for event in pending {
        let sent = http
            .post(&hook.url)
            .header("content-type", "application/json")
            .header(EVENT_HEADER, event.id.to_string())
            .header(
                SIGNATURE_HEADER,
                signature(hook.secret_str(), event.payload.as_bytes()),
            )
            .body(event.payload.clone())
            .send()
            .await
            .map_err(|e| format!("{e}"))
            .and_then(|r| {
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("answered {}", r.status()))
                }
            });
        match sent {
            Ok(()) => {
                position.last_event_id = event.id;
                position.attempts = 0;
                position.last_error = None;
                accepted += 1;
            }
            Err(e) => {
                position.attempts += 1;
                let wait = Duration::from_secs(1 << position.attempts.clamp(0, 9)).min(MAX_BACKOFF);
                position.next_attempt_at =
                    crate::db::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                tracing::warn!(webhook = %hook.url, event.id = event.id, attempts = position.attempts, error.message = %e, "webhook refused an event; retrying later");
                position.last_error = Some(e);
                break;
            }
        }
    }
    webhook_deliveries::Entity::update(webhook_deliveries::ActiveModel::from(position).reset_all())
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(accepted)
}
