//! Device shadows: the pure document rules ([`document`]) applied to the stored shadow of a
//! registered device, in one transaction per request. What to publish comes back as
//! [`Outgoing`] messages; the MQTT bridge and the HTTP API send them.

pub mod document;

use chrono::Utc;
use fleetwave_artifacts::DeviceId;
use fleetwave_artifacts::protocol::report::{FirmwareReport, OtaReport};
use fleetwave_artifacts::protocol::topics::{Reply, ShadowOp};
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QuerySelect,
    TransactionTrait,
};
use serde_json::Value;

use crate::audit::{self, Actor};
use crate::jobs;
use crate::registry::entities::{devices, shadows};
use document::{Rejection, Shadow};

/// Largest request payload a device may send.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Where an outgoing shadow message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// `shadow/{op}/accepted|rejected`
    Reply(ShadowOp, Reply),
    /// `shadow/update/delta`
    Delta,
    /// `shadow/update/documents`
    Documents,
}

/// One message to publish for a device.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    /// Its channel.
    pub channel: Channel,
    /// Its JSON document.
    pub payload: Value,
}

fn unix_now() -> u64 {
    u64::try_from(Utc::now().timestamp()).unwrap_or(0)
}

fn rejected(op: ShadowOp, rejection: &Rejection, token: Option<&str>) -> Vec<Outgoing> {
    vec![Outgoing {
        channel: Channel::Reply(op, Reply::Rejected),
        payload: rejection.document(unix_now(), token),
    }]
}

/// Handles one shadow request a device sent, inside the caller's transaction (the bridge
/// handles a batch of messages per transaction); the answers to publish come back. Database
/// failures are errors (the batch is retried, its messages unacknowledged meanwhile);
/// everything wrong with the request itself is a rejection to publish.
pub async fn handle(
    db: &impl ConnectionTrait,
    thing: &DeviceId,
    op: ShadowOp,
    payload: &[u8],
) -> Result<Vec<Outgoing>, DbErr> {
    if payload.len() > MAX_REQUEST_BYTES {
        let r = Rejection {
            code: 413,
            message: format!("the request is larger than {MAX_REQUEST_BYTES} bytes"),
        };
        return Ok(rejected(op, &r, None));
    }
    let request: Value = if payload.is_empty() && op != ShadowOp::Update {
        Value::Object(Default::default())
    } else {
        match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                let r = Rejection {
                    code: 400,
                    message: format!("invalid JSON: {e}"),
                };
                return Ok(rejected(op, &r, None));
            }
        }
    };
    let token = match document::client_token(&request) {
        Ok(t) => t.map(str::to_owned),
        Err(r) => return Ok(rejected(op, &r, None)),
    };
    let token = token.as_deref();
    match op {
        ShadowOp::Update => Ok(match apply_in(db, thing, &request, None).await? {
            Ok(updated) => {
                let mut out = vec![
                    Outgoing {
                        channel: Channel::Reply(op, Reply::Accepted),
                        payload: updated.accepted,
                    },
                    Outgoing {
                        channel: Channel::Documents,
                        payload: updated.documents,
                    },
                ];
                if let Some(delta) = updated.delta {
                    out.push(Outgoing {
                        channel: Channel::Delta,
                        payload: delta,
                    });
                }
                out
            }
            Err(r) => rejected(op, &r, token),
        }),
        ShadowOp::Get => Ok(match load(db, thing).await? {
            Some(shadow) => vec![Outgoing {
                channel: Channel::Reply(op, Reply::Accepted),
                payload: shadow.get_document(unix_now(), token),
            }],
            None => rejected(op, &no_shadow(thing), token),
        }),
        ShadowOp::Delete => {
            let row = shadows::Entity::find_by_id(thing.as_str().to_owned())
                .one(db)
                .await?;
            let deleted = shadows::Entity::delete_by_id(thing.as_str().to_owned())
                .exec(db)
                .await?;
            Ok(match row {
                Some(row) if deleted.rows_affected > 0 => vec![Outgoing {
                    channel: Channel::Reply(op, Reply::Accepted),
                    payload: document::deleted_document(
                        u64::try_from(row.version).unwrap_or(0),
                        unix_now(),
                        token,
                    ),
                }],
                _ => rejected(op, &no_shadow(thing), token),
            })
        }
    }
}

fn no_shadow(thing: &DeviceId) -> Rejection {
    Rejection {
        code: 404,
        message: format!("no shadow exists for {thing}"),
    }
}

/// The stored shadow of a device, if any.
pub async fn load(db: &impl ConnectionTrait, thing: &DeviceId) -> Result<Option<Shadow>, DbErr> {
    let Some(row) = shadows::Entity::find_by_id(thing.as_str().to_owned())
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    decode(&row).map(Some)
}

fn decode(row: &shadows::Model) -> Result<Shadow, DbErr> {
    let mut shadow: Shadow = serde_json::from_str(&row.document).map_err(|e| {
        DbErr::Custom(format!(
            "stored shadow of {} is corrupt: {e}",
            row.device_id
        ))
    })?;
    shadow.version = u64::try_from(row.version).unwrap_or(0);
    Ok(shadow)
}

/// Applies an update request to a registered device's shadow in one transaction, and keeps
/// the registry's firmware version in step with `reported.firmware`.
/// A person's change (through the API) is audited in the same transaction as `actor`;
/// device reports (`actor` None) are not.
pub async fn apply(
    db: &DatabaseConnection,
    thing: &DeviceId,
    request: &Value,
    actor: Option<&Actor>,
) -> Result<Result<document::Updated, Rejection>, DbErr> {
    let txn = db.begin().await?;
    let outcome = apply_in(&txn, thing, request, actor).await?;
    if outcome.is_ok() {
        txn.commit().await?;
    }
    Ok(outcome)
}

/// [`apply`] inside the caller's transaction.
pub async fn apply_in(
    txn: &impl ConnectionTrait,
    thing: &DeviceId,
    request: &Value,
    actor: Option<&Actor>,
) -> Result<Result<document::Updated, Rejection>, DbErr> {
    let device = devices::Entity::find_by_id(thing.as_str().to_owned())
        .lock_exclusive()
        .one(txn)
        .await?;
    if device.is_none() {
        return Ok(Err(Rejection {
            code: 404,
            message: format!("{thing} is not a registered device"),
        }));
    }
    let row = shadows::Entity::find_by_id(thing.as_str().to_owned())
        .one(txn)
        .await?;
    let current = row.as_ref().map(decode).transpose()?;
    let updated = match document::update(current.as_ref(), request, unix_now()) {
        Ok(u) => u,
        Err(r) => return Ok(Err(r)),
    };
    let model = shadows::ActiveModel {
        device_id: Set(thing.as_str().to_owned()),
        document: Set(serde_json::to_string(&updated.shadow).expect("a shadow serialises")),
        version: Set(i64::try_from(updated.shadow.version).unwrap_or(i64::MAX)),
        updated_at: Set(crate::db::now()),
    };
    if row.is_some() {
        shadows::Entity::update(model).exec(txn).await?;
    } else {
        shadows::Entity::insert(model)
            .exec_without_returning(txn)
            .await?;
    }
    let firmware = updated
        .shadow
        .reported
        .as_ref()
        .and_then(|r| r.get("firmware"))
        .and_then(|f| serde_json::from_value::<FirmwareReport>(f.clone()).ok());
    if let Some(firmware) = firmware {
        if let Err(e) =
            crate::registry::devices::record_firmware(txn, thing.as_str(), &firmware.version).await
        {
            return Err(match e {
                crate::registry::Error::Db(db) => db,
                other => DbErr::Custom(other.to_string()),
            });
        }
    }
    if let Some(ota) = request
        .pointer("/state/reported/ota")
        .filter(|v| !v.is_null())
    {
        match serde_json::from_value::<OtaReport>(ota.clone()) {
            Ok(report) => {
                if let Err(refused) =
                    jobs::transition(txn, &report.job, thing, &jobs::Change::from(&report)).await?
                {
                    tracing::info!(device.id = %thing, job.id = %report.job, reason = %refused, "execution report not applied");
                }
            }
            Err(e) => {
                tracing::warn!(device.id = %thing, error.message = %e, "malformed reported.ota")
            }
        }
    }
    if let Some(actor) = actor {
        audit::append(
            txn,
            actor,
            audit::Event {
                action: "shadow.update",
                subject: format!("device:{thing}"),
                details: request.get("state").cloned().unwrap_or_default(),
            },
        )
        .await?;
    }
    Ok(Ok(updated))
}
