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
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;

use crate::audit::{self, Actor};
use crate::jobs;
use crate::registry::devices::{Recorded, Report, record_reports};
use crate::registry::entities::{devices, shadows};
use document::{Rejection, Shadow, Stored};

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
    /// Its JSON document, serialised.
    pub payload: Vec<u8>,
}

fn unix_now() -> u64 {
    u64::try_from(Utc::now().timestamp()).unwrap_or(0)
}

fn rejected(op: ShadowOp, rejection: &Rejection, token: Option<&str>) -> Vec<Outgoing> {
    vec![Outgoing {
        channel: Channel::Reply(op, Reply::Rejected),
        payload: document::to_json(&rejection.document(unix_now(), token)),
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
    let (request, token) = match parse_request(op, payload) {
        Ok(parsed) => parsed,
        Err(out) => return Ok(out),
    };
    let token = token.as_deref();
    match op {
        ShadowOp::Update => Ok(match apply_in(db, thing, &request, None).await? {
            Ok(updated) => update_answers(updated),
            Err(r) => rejected(ShadowOp::Update, &r, token),
        }),
        ShadowOp::Get => Ok(match load(db, thing).await? {
            Some(shadow) => vec![Outgoing {
                channel: Channel::Reply(op, Reply::Accepted),
                payload: document::to_json(&shadow.get_document(unix_now(), token)),
            }],
            None => rejected(op, &no_shadow(thing), token),
        }),
        ShadowOp::Delete => {
            // Locked, so that the version answered is the one deleted.
            let row = shadows::Entity::find_by_id(thing.as_str().to_owned())
                .lock_exclusive()
                .one(db)
                .await?;
            let deleted = shadows::Entity::delete_by_id(thing.as_str().to_owned())
                .exec(db)
                .await?;
            Ok(match row {
                Some(row) if deleted.rows_affected > 0 => vec![Outgoing {
                    channel: Channel::Reply(op, Reply::Accepted),
                    payload: document::to_json(&document::deleted_document(
                        u64::try_from(row.version).unwrap_or(0),
                        unix_now(),
                        token,
                    )),
                }],
                _ => rejected(op, &no_shadow(thing), token),
            })
        }
    }
}

/// A request's JSON and client token, or the rejection to publish.
fn parse_request(op: ShadowOp, payload: &[u8]) -> Result<(Value, Option<String>), Vec<Outgoing>> {
    if payload.len() > MAX_REQUEST_BYTES {
        let r = Rejection {
            code: 413,
            message: format!("the request is larger than {MAX_REQUEST_BYTES} bytes"),
        };
        return Err(rejected(op, &r, None));
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
                return Err(rejected(op, &r, None));
            }
        }
    };
    match document::client_token(&request) {
        Ok(t) => {
            let token = t.map(str::to_owned);
            Ok((request, token))
        }
        Err(r) => Err(rejected(op, &r, None)),
    }
}

/// What to publish for an accepted update.
fn update_answers(updated: document::Updated) -> Vec<Outgoing> {
    let mut out = vec![
        Outgoing {
            channel: Channel::Reply(ShadowOp::Update, Reply::Accepted),
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

/// Handles a run of update requests devices sent (in arrival order) inside the caller's
/// transaction, as [`handle`] would one by one, with set-based statements on PostgreSQL:
/// one locks and reads the run's shadows (with their devices' registry values), one writes
/// the changed ones back (devices without a shadow yet take three more: their device rows
/// locked, their shadows read again, an `INSERT`). Locks are taken as [`lock_one`] takes
/// them. The registry then records the run's firmware and last-seen times where they
/// changed ([`record_reports`]: at most two statements, none when nothing changed, as for
/// most runs, plus one per report of a device whose reports in the run named different
/// firmware), and each report's transition follows, request by request, in order. Answers come
/// back in the requests' order.
pub async fn update_run(
    txn: &impl ConnectionTrait,
    run: &[(&DeviceId, &[u8])],
) -> Result<Vec<Vec<Outgoing>>, DbErr> {
    let backend = txn.get_database_backend();
    if backend != sea_orm::DatabaseBackend::Postgres || run.len() == 1 {
        let mut answers = Vec::with_capacity(run.len());
        for (thing, payload) in run {
            answers.push(handle(txn, thing, ShadowOp::Update, payload).await?);
        }
        return Ok(answers);
    }
    let parsed: Vec<_> = run
        .iter()
        .map(|(_, payload)| parse_request(ShadowOp::Update, payload))
        .collect();
    // The devices of the well-formed requests, sorted, each once.
    let requested = |keep: &dyn Fn(&str) -> bool| {
        let mut ids: Vec<String> = run
            .iter()
            .zip(&parsed)
            .filter(|((thing, _), p)| p.is_ok() && keep(thing.as_str()))
            .map(|((thing, _), _)| thing.as_str().to_owned())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    let ids = requested(&|_| true);
    // Each registered device's current shadow (none yet: version 0), and whether it changed.
    let mut shadows: HashMap<String, Current> = HashMap::with_capacity(ids.len());
    // The run's shadows are locked in id order and read in the same statement: a row
    // locked `FOR UPDATE` comes back as its latest committed version, so a concurrent
    // update is seen, not overwritten. (Another batch's requests lock theirs in arrival
    // order, so two batches can still deadlock; PostgreSQL then aborts one, which is
    // retried.) A shadow's row stands for its device: removing the device locks the shadow
    // row first, and so waits for this transaction.
    if !ids.is_empty() {
        read_locked(txn, ids, &mut shadows).await?;
    }
    // Devices without a shadow yet (their first update) or not registered: their device
    // rows are locked, which is what every writer of a new shadow holds, and the shadows
    // read again (one may have been created meanwhile).
    let misses = requested(&|id| !shadows.contains_key(id));
    if !misses.is_empty() {
        let registered = lock_devices(txn, misses).await?;
        for id in &registered {
            shadows.insert(id.clone(), Current::default());
        }
        if !registered.is_empty() {
            read_locked(txn, registered, &mut shadows).await?;
        }
    }
    let now = unix_now();
    let mut answers = Vec::with_capacity(run.len());
    let mut reports = Vec::new();
    for ((thing, _), parsed) in run.iter().zip(parsed) {
        let (request, token) = match parsed {
            Ok(p) => p,
            Err(out) => {
                answers.push(out);
                continue;
            }
        };
        let Some(Current {
            stored, changed, ..
        }) = shadows.get_mut(thing.as_str())
        else {
            let r = Rejection {
                code: 404,
                message: format!("{thing} is not a registered device"),
            };
            answers.push(rejected(ShadowOp::Update, &r, token.as_deref()));
            continue;
        };
        match document::update(stored, &request, now) {
            Ok(updated) => {
                reports.push((*thing, reported_firmware(stored.shadow()), request));
                *changed = true;
                answers.push(update_answers(updated));
            }
            Err(r) => answers.push(rejected(ShadowOp::Update, &r, token.as_deref())),
        }
    }
    write_back(txn, &mut shadows).await?;
    // What the run says about each device (the firmware its shadow reports, when it was
    // seen) goes to the registry before any report follows: the rows to write are locked in
    // id order first (an execution's transition may take the audit log's lock, which the
    // API's change of a device takes after that device's row). A device whose reports named
    // different firmware (rare: a reboot lies between them) has its row locked with them
    // and each report's firmware recorded in order, before that report's transition.
    let at = crate::db::now();
    let mut last: HashMap<&str, (Option<&semver::Version>, bool)> = HashMap::new();
    for (thing, firmware, _) in &reports {
        let version = firmware.as_ref().map(|f| &f.version);
        last.entry(thing.as_str())
            .and_modify(|(v, mixed)| {
                *mixed |= *v != version;
                *v = version;
            })
            .or_insert((version, false));
    }
    let (mut once, mut mixed) = (Vec::with_capacity(last.len()), Vec::new());
    for (id, (version, several)) in last {
        if several {
            mixed.push(id.to_owned());
        } else {
            once.push(Report {
                id: id.to_owned(),
                firmware: version.cloned(),
            });
        }
    }
    // A report that changes nothing in the registry (the same firmware, seen within the
    // minute: an agent's every report but a few) needs no statement. The registry's values
    // were read with the shadows, from the statement's snapshot, which can predate a writer
    // it waited for; the locked shadow cannot, and every writer recorded the firmware it
    // reports: so a firmware that differs from either is written.
    once.retain(|report| match shadows.get(&report.id) {
        Some(Current {
            recorded: Some(recorded),
            reported,
            ..
        }) => report.firmware != *reported || report.changes(recorded, true, at),
        _ => true,
    });
    once.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    mixed.sort_unstable();
    record_reports(txn, &once, &mixed, true, at).await?;
    for (thing, firmware, request) in reports {
        if mixed
            .binary_search_by(|id| id.as_str().cmp(thing.as_str()))
            .is_ok()
        {
            let report = Report {
                id: thing.as_str().to_owned(),
                firmware: firmware.map(|f| f.version),
            };
            record_reports(txn, &[report], &[], true, at).await?;
        }
        follow_report(txn, thing, &request).await?;
    }
    Ok(answers)
}

/// A device's shadow while a run of updates is applied.
#[derive(Default)]
struct Current {
    /// The shadow, with its text (version 0: the device has none yet).
    stored: Stored,
    /// Whether an update of the run changed it.
    changed: bool,
    /// What the registry holds of the device, read with its stored shadow (None: no shadow
    /// row yet, written back with `INSERT` rather than `UPDATE`).
    recorded: Option<Recorded>,
    /// The firmware the stored shadow reported when it was read.
    reported: Option<semver::Version>,
}

/// Locks the rows of the registered devices among `ids` (`FOR UPDATE`, in id order);
/// their ids come back.
async fn lock_devices(txn: &impl ConnectionTrait, ids: Vec<String>) -> Result<Vec<String>, DbErr> {
    txn.query_all_raw(sea_orm::Statement::from_sql_and_values(
        sea_orm::DatabaseBackend::Postgres,
        "SELECT id FROM devices WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        vec![ids.into()],
    ))
    .await?
    .iter()
    .map(|row| row.try_get_by_index(0))
    .collect()
}

/// Reads and locks (`FOR UPDATE`, in id order) the stored shadows of `ids` into `into`,
/// with what the registry holds of their devices (read, not locked: a locked row is read
/// again once its lock is released, the joined device row is not, so its values may be
/// those from before a writer this statement waited for).
async fn read_locked(
    txn: &impl ConnectionTrait,
    ids: Vec<String>,
    into: &mut HashMap<String, Current>,
) -> Result<(), DbErr> {
    let rows = txn
        .query_all_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT s.device_id, s.document, s.version, d.firmware_version, d.last_seen_at \
             FROM shadows AS s JOIN devices AS d ON d.id = s.device_id \
             WHERE s.device_id = ANY($1) ORDER BY s.device_id FOR UPDATE OF s",
            vec![ids.into()],
        ))
        .await?;
    for row in rows {
        let id: String = row.try_get_by_index(0)?;
        let document: String = row.try_get_by_index(1)?;
        let version: i64 = row.try_get_by_index(2)?;
        let stored = decode_document(&id, document, version)?;
        let reported = reported_firmware(stored.shadow()).map(|f| f.version);
        let recorded = Recorded {
            firmware_version: row.try_get_by_index(3)?,
            last_seen_at: row.try_get_by_index(4)?,
        };
        into.insert(
            id,
            Current {
                stored,
                changed: false,
                recorded: Some(recorded),
                reported,
            },
        );
    }
    Ok(())
}

/// Writes the changed shadows of a run back: one `UPDATE` for the stored ones, one
/// `INSERT` for the new ones, each column bound as a PostgreSQL array (no JSON to build
/// here, nor for the database to parse). The documents are the texts the updates
/// serialised, taken from `shadows`.
async fn write_back(
    txn: &impl ConnectionTrait,
    shadows: &mut HashMap<String, Current>,
) -> Result<(), DbErr> {
    /// One array per column.
    #[derive(Default)]
    struct Columns {
        ids: Vec<String>,
        documents: Vec<String>,
        versions: Vec<i64>,
    }
    let (mut updated, mut inserted) = (Columns::default(), Columns::default());
    for (id, current) in shadows {
        if !current.changed {
            continue;
        }
        let columns = if current.recorded.is_some() {
            &mut updated
        } else {
            &mut inserted
        };
        columns.ids.push(id.clone());
        columns
            .versions
            .push(stored_version(current.stored.shadow()));
        columns.documents.push(current.stored.take_document());
    }
    let at = crate::db::now();
    for (columns, sql) in [
        (
            updated,
            "UPDATE shadows AS s SET document = x.document, version = x.version, updated_at = $4 \
             FROM unnest($1::text[], $2::text[], $3::bigint[]) AS x(device_id, document, version) \
             WHERE s.device_id = x.device_id",
        ),
        (
            inserted,
            "INSERT INTO shadows (device_id, document, version, updated_at) \
             SELECT device_id, document, version, $4 \
             FROM unnest($1::text[], $2::text[], $3::bigint[]) AS x(device_id, document, version)",
        ),
    ] {
        let expected = columns.ids.len() as u64;
        if expected == 0 {
            continue;
        }
        let done = txn
            .execute_raw(sea_orm::Statement::from_sql_and_values(
                sea_orm::DatabaseBackend::Postgres,
                sql,
                vec![
                    columns.ids.into(),
                    columns.documents.into(),
                    columns.versions.into(),
                    at.into(),
                ],
            ))
            .await?;
        // Under the run's locks every row is there; an answer already says accepted.
        if done.rows_affected() != expected {
            return Err(DbErr::Custom(format!(
                "wrote {} of {expected} shadows back",
                done.rows_affected()
            )));
        }
    }
    Ok(())
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
    decode(row).map(|stored| Some(stored.into_shadow()))
}

fn decode(row: shadows::Model) -> Result<Stored, DbErr> {
    decode_document(&row.device_id, row.document, row.version)
}

/// A stored shadow document of `device` at `version`, the row's (1 or more: a stored
/// shadow was accepted at least once, and version 0 stands for none; the document names
/// the same version).
fn decode_document(device: &str, document: String, version: i64) -> Result<Stored, DbErr> {
    let corrupt = |e: String| DbErr::Custom(format!("stored shadow of {device} is corrupt: {e}"));
    let stored = Stored::read(document).map_err(|e| corrupt(e.to_string()))?;
    let named = stored.shadow().version;
    if u64::try_from(version) != Ok(named) {
        return Err(corrupt(format!(
            "the row is at version {version}, its document at {named}"
        )));
    }
    Ok(stored)
}

/// A shadow's version as its row holds it.
fn stored_version(shadow: &Shadow) -> i64 {
    i64::try_from(shadow.version).unwrap_or(i64::MAX)
}

/// Applies an update request to a registered device's shadow in one transaction, and keeps
/// the registry's firmware version in step with `reported.firmware`.
/// A person's change (through the API) is audited in the same transaction as `actor`;
/// device reports (`actor` None) are not, and renew the device's last-seen time. A transaction PostgreSQL aborts as a deadlock
/// (possible, for example, while a device's first shadow is created: see `lock_one`) is
/// run again ([`crate::db::retry_conflicts`]).
pub async fn apply(
    db: &DatabaseConnection,
    thing: &DeviceId,
    request: &Value,
    actor: Option<&Actor>,
) -> Result<Result<document::Updated, Rejection>, DbErr> {
    crate::db::retry_conflicts("a shadow update", || async {
        let txn = db.begin().await?;
        let outcome = apply_in(&txn, thing, request, actor).await?;
        if outcome.is_ok() {
            txn.commit().await?;
        }
        Ok(outcome)
    })
    .await
}

/// [`apply`] inside the caller's transaction.
pub async fn apply_in(
    txn: &impl ConnectionTrait,
    thing: &DeviceId,
    request: &Value,
    actor: Option<&Actor>,
) -> Result<Result<document::Updated, Rejection>, DbErr> {
    let row = match lock_one(txn, thing).await? {
        Ok(row) => row,
        Err(rejection) => return Ok(Err(rejection)),
    };
    let existed = row.is_some();
    let mut stored = row.map(decode).transpose()?.unwrap_or_default();
    let updated = match document::update(&mut stored, request, unix_now()) {
        Ok(u) => u,
        Err(r) => return Ok(Err(r)),
    };
    let model = shadows::ActiveModel {
        device_id: Set(thing.as_str().to_owned()),
        version: Set(stored_version(stored.shadow())),
        document: Set(stored.take_document()),
        updated_at: Set(crate::db::now()),
    };
    if existed {
        shadows::Entity::update(model).exec(txn).await?;
    } else {
        shadows::Entity::insert(model)
            .exec_without_returning(txn)
            .await?;
    }
    let report = Report {
        id: thing.as_str().to_owned(),
        firmware: reported_firmware(stored.shadow()).map(|f| f.version),
    };
    // A device's own report says when it was seen; a person's change does not.
    record_reports(txn, &[report], &[], actor.is_none(), crate::db::now()).await?;
    follow_report(txn, thing, request).await?;
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

/// A registered device's shadow row (None: no shadow yet), locked in the order the writers
/// of a device's shadow take their locks: the shadow row; only when there is none, the
/// device row and then the shadow row again (another writer may have created it
/// meanwhile). Recording a report in the registry, when it writes the device row, locks it
/// after the shadow row (a run locks the rows it writes in id order, all before any
/// transition), and so does removing a device.
/// The exception is a device's first shadow (the device row, then the shadow row): a writer
/// that finds a shadow created meanwhile can deadlock with one that locked it. PostgreSQL
/// then aborts one of them, which is run again ([`apply`]; the bridge's batches), as it is
/// for a batch whose later runs lock rows after an earlier run took the audit log's lock.
/// [`update_run`] takes its locks the same way.
async fn lock_one(
    txn: &impl ConnectionTrait,
    thing: &DeviceId,
) -> Result<Result<Option<shadows::Model>, Rejection>, DbErr> {
    let shadow = || {
        shadows::Entity::find_by_id(thing.as_str().to_owned())
            .lock_exclusive()
            .one(txn)
    };
    if let Some(row) = shadow().await? {
        return Ok(Ok(Some(row)));
    }
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
    Ok(Ok(shadow().await?))
}

/// The firmware a shadow reports running (`reported.firmware`), if any.
fn reported_firmware(shadow: &Shadow) -> Option<FirmwareReport> {
    shadow
        .reported
        .as_ref()
        .and_then(|r| r.get("firmware"))
        .and_then(|f| FirmwareReport::deserialize(f).ok())
}

/// What an applied update reports beyond the shadow and the registry (recorded with
/// [`record_reports`] first): an execution's progress (`reported.ota`, a job transition).
async fn follow_report(
    txn: &impl ConnectionTrait,
    thing: &DeviceId,
    request: &Value,
) -> Result<(), DbErr> {
    // Looked up level by level: `Value::pointer` allocates a string per level, on every
    // device update.
    if let Some(ota) = request
        .get("state")
        .and_then(|state| state.get("reported"))
        .and_then(|reported| reported.get("ota"))
        .filter(|v| !v.is_null())
    {
        match OtaReport::deserialize(ota) {
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
    Ok(())
}
