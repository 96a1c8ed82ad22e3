//! Devices: register, change, remove, read and page through them. Every change is audited.

use chrono::{DateTime, Utc};
use fleetwave_artifacts::{DeviceId, HardwareId};
use sea_orm::sea_query::IntoCondition;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseBackend, DatabaseConnection,
    DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait,
};
use serde::{Deserialize, Serialize};

use super::entities::{devices, job_executions, shadows};
use super::{Error, is_unique_violation};
use crate::audit::{self, Actor, Event};

/// Most attributes a device may carry, and the longest key and value.
const MAX_ATTRIBUTES: usize = 64;
const MAX_ATTRIBUTE_KEY: usize = 64;
const MAX_ATTRIBUTE_VALUE: usize = 256;

/// The largest page a list returns.
pub const MAX_PAGE: u64 = 1000;

/// A device as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Device {
    /// Device id: the thing name in topics, the CN of its certificate.
    pub id: String,
    /// Serial number.
    pub serial: Option<String>,
    /// Hardware id, matched against a release's compatibility list.
    pub hardware: String,
    /// Attributes (string, number or boolean values) that dynamic groups query.
    #[schema(value_type = Object)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// The firmware version it last reported.
    pub firmware_version: Option<String>,
    /// When it was last heard from.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When it was last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<devices::Model> for Device {
    fn from(m: devices::Model) -> Self {
        Device {
            id: m.id,
            serial: m.serial,
            hardware: m.hardware,
            attributes: match m.attributes {
                serde_json::Value::Object(map) => map,
                _ => serde_json::Map::new(),
            },
            firmware_version: m.firmware_version,
            last_seen_at: m.last_seen_at,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// A device to register.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// Device id.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
    pub id: String,
    /// Serial number.
    #[serde(default)]
    pub serial: Option<String>,
    /// Hardware id.
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,63}$")]
    pub hardware: String,
    /// Attributes.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// Changes to a device; absent fields stay as they are, `attributes` replaces them whole.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePatch {
    /// New serial number.
    #[serde(default)]
    pub serial: Option<String>,
    /// New hardware id.
    #[serde(default)]
    pub hardware: Option<String>,
    /// New attributes.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<serde_json::Map<String, serde_json::Value>>,
}

/// One page of a list, and where the next begins.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// Which devices to list.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Continue after this cursor.
    pub cursor: Option<String>,
    /// Page size (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
    /// Only devices of this hardware id.
    pub hardware: Option<String>,
    /// Only devices matching this query (the language of dynamic groups).
    pub query: Option<String>,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        reason: reason.into(),
    }
}

/// The reason inside a contract validation error, without its field name.
fn reason(e: fleetwave_artifacts::Error) -> String {
    match e {
        fleetwave_artifacts::Error::InvalidField { reason, .. } => reason,
        other => other.to_string(),
    }
}

fn check_attributes(attrs: &serde_json::Map<String, serde_json::Value>) -> Result<(), Error> {
    if attrs.len() > MAX_ATTRIBUTES {
        return Err(invalid(
            "attributes",
            format!("at most {MAX_ATTRIBUTES} attributes"),
        ));
    }
    for (key, value) in attrs {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_ATTRIBUTE_KEY
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !key_ok {
            return Err(invalid(
                "attributes",
                format!(
                    "key {key:?} must be 1 to {MAX_ATTRIBUTE_KEY} characters of A-Z a-z 0-9 _ -"
                ),
            ));
        }
        let value_ok = match value {
            serde_json::Value::String(s) => s.len() <= MAX_ATTRIBUTE_VALUE,
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => true,
            _ => false,
        };
        if !value_ok {
            return Err(invalid(
                "attributes",
                format!(
                    "{key}: values are strings (at most {MAX_ATTRIBUTE_VALUE} bytes), numbers or booleans"
                ),
            ));
        }
    }
    Ok(())
}

fn check_serial(serial: &Option<String>) -> Result<(), Error> {
    match serial {
        Some(s) if s.is_empty() || s.len() > 128 || s.chars().any(char::is_control) => {
            Err(invalid("serial", "1 to 128 printable characters"))
        }
        _ => Ok(()),
    }
}

fn parse_hardware(h: &str) -> Result<String, Error> {
    HardwareId::parse(h)
        .map(|h| h.as_str().to_owned())
        .map_err(|e| invalid("hardware", reason(e)))
}

/// Registers a device.
pub async fn create(
    db: &DatabaseConnection,
    actor: &Actor,
    new: NewDevice,
) -> Result<Device, Error> {
    let id = DeviceId::parse(&new.id).map_err(|e| invalid("id", reason(e)))?;
    let hardware = parse_hardware(&new.hardware)?;
    check_serial(&new.serial)?;
    check_attributes(&new.attributes)?;
    let now = crate::db::now();
    let model = devices::Model {
        id: id.as_str().to_owned(),
        serial: new.serial,
        hardware,
        attributes: serde_json::Value::Object(new.attributes),
        firmware_version: None,
        firmware_key: None,
        last_seen_at: None,
        created_at: now,
        updated_at: now,
    };
    let txn = db.begin().await?;
    let inserted = devices::Entity::insert(devices::ActiveModel::from(model.clone()))
        .exec_without_returning(&txn)
        .await;
    match inserted {
        Err(e) if is_unique_violation(&e) => {
            return Err(Error::AlreadyExists {
                kind: "device",
                id: model.id,
            });
        }
        other => other?,
    };
    audit::append(
        &txn,
        actor,
        Event {
            action: "device.create",
            subject: format!("device:{}", model.id),
            details: serde_json::json!({"hardware": model.hardware, "serial": model.serial, "attributes": model.attributes}),
        },
    )
    .await?;
    txn.commit().await?;
    Ok(model.into())
}

/// How stale a device's `last_seen_at` may grow: a report within this of the recorded time
/// writes nothing to the device's row (unless its firmware changed), so a device reporting
/// every second costs its row one write a minute, not one a report.
pub const SEEN_PRECISION: chrono::Duration = chrono::Duration::seconds(60);

/// What one device reported through its shadow.
#[derive(Clone, Debug)]
pub struct Report {
    /// The device.
    pub id: String,
    /// The firmware its shadow reports running, if any.
    pub firmware: Option<semver::Version>,
}

/// What the registry holds of a device that its reports keep up to date.
#[derive(Debug)]
pub struct Recorded {
    /// The firmware version it last reported.
    pub firmware_version: Option<String>,
    /// When it was last seen.
    pub last_seen_at: Option<DateTime<Utc>>,
}

impl Report {
    /// Whether [`record_reports`] would write a device's row holding `recorded` for this
    /// report at `at` (the rule its statements apply): its firmware differs, or `seen` and
    /// the last-seen time is [`SEEN_PRECISION`] old. A caller that knows the row's current
    /// values (every writer of these columns holds the device's shadow row lock) can leave
    /// out the reports that change nothing, and with them a statement; values read in a
    /// statement that waited for that lock may be older than the row.
    pub fn changes(&self, recorded: &Recorded, seen: bool, at: DateTime<Utc>) -> bool {
        let firmware = self.firmware.as_ref().is_some_and(|v| {
            recorded
                .firmware_version
                .as_deref()
                .is_none_or(|r| semver::Version::parse(r).ok().as_ref() != Some(v))
        });
        firmware
            || (seen
                && recorded
                    .last_seen_at
                    .is_none_or(|t| t < at - SEEN_PRECISION))
    }
}

/// Records what devices reported through their shadows, `at`: the firmware each one's shadow
/// reports (its version and sortable key, written when it differs from the registry's) and,
/// when `seen` (the reports came from the devices, not from a person), when each was last
/// seen (written when the recorded time is [`SEEN_PRECISION`] old). A device's row is
/// written only when one of them changes, so a device reporting often does not rewrite its
/// row each time. On PostgreSQL the rows to write are locked in id order in one statement
/// and written in a second; `locked` names more devices whose rows that first statement
/// locks (their reports the caller records one by one, in order, afterwards). Unregistered
/// devices are skipped.
pub async fn record_reports(
    txn: &impl ConnectionTrait,
    reports: &[Report],
    locked: &[String],
    seen: bool,
    at: DateTime<Utc>,
) -> Result<(), DbErr> {
    // Nothing to lock, or nothing that could be written (a person's change names no
    // firmware and does not count as the device being seen).
    if locked.is_empty()
        && (reports.is_empty() || (!seen && reports.iter().all(|r| r.firmware.is_none())))
    {
        return Ok(());
    }
    let stale = at - SEEN_PRECISION;
    let backend = txn.get_database_backend();
    if backend != DatabaseBackend::Postgres || (reports.len() == 1 && locked.is_empty()) {
        // One device, or SQLite (whose writers take turns): one conditional statement each.
        for report in reports {
            let (version, key) = firmware_columns(report.firmware.as_ref());
            txn.execute_raw(crate::db::statement(
                backend,
                "UPDATE devices SET firmware_version = coalesce($1, firmware_version), \
                 firmware_key = coalesce($2, firmware_key), \
                 last_seen_at = CASE WHEN $3 THEN $4 ELSE last_seen_at END \
                 WHERE id = $5 AND (($1 IS NOT NULL AND firmware_version IS DISTINCT FROM $1) \
                 OR ($3 AND (last_seen_at IS NULL OR last_seen_at < $6)))",
                vec![
                    version.into(),
                    key.into(),
                    seen.into(),
                    at.into(),
                    report.id.clone().into(),
                    stale.into(),
                ],
            ))
            .await?;
        }
        return Ok(());
    }
    // Columns bound as text arrays (whose elements cannot be NULL): no firmware is ''.
    let mut ids = Vec::with_capacity(reports.len());
    let mut versions = Vec::with_capacity(reports.len());
    let mut keys = Vec::with_capacity(reports.len());
    for report in reports {
        let (version, key) = firmware_columns(report.firmware.as_ref());
        ids.push(report.id.clone());
        versions.push(version.unwrap_or_default());
        keys.push(key.unwrap_or_default());
    }
    let to_write = txn
        .query_all_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            "SELECT d.id FROM devices AS d \
             LEFT JOIN unnest($1::text[], $2::text[]) AS x(id, version) ON x.id = d.id \
             WHERE d.id = ANY($1) AND ((x.version <> '' AND d.firmware_version IS DISTINCT FROM x.version) \
             OR ($3 AND (d.last_seen_at IS NULL OR d.last_seen_at < $4))) \
             OR d.id = ANY($5) \
             ORDER BY d.id FOR UPDATE OF d",
            vec![
                ids.clone().into(),
                versions.clone().into(),
                seen.into(),
                stale.into(),
                locked.to_vec().into(),
            ],
        ))
        .await?;
    let mut writes = to_write
        .iter()
        .filter_map(|row| row.try_get_by_index::<String>(0).ok());
    if !writes.any(|id| !locked.contains(&id)) {
        // Nothing to write, only the caller's rows to lock.
        return Ok(());
    }
    txn.execute_raw(Statement::from_sql_and_values(
        DatabaseBackend::Postgres,
        "UPDATE devices AS d SET firmware_version = coalesce(NULLIF(x.version, ''), d.firmware_version), \
         firmware_key = coalesce(NULLIF(x.key, ''), d.firmware_key), \
         last_seen_at = CASE WHEN $4 THEN $6 ELSE d.last_seen_at END \
         FROM unnest($1::text[], $2::text[], $3::text[]) AS x(id, version, key) \
         WHERE d.id = x.id AND ((x.version <> '' AND d.firmware_version IS DISTINCT FROM x.version) \
         OR ($4 AND (d.last_seen_at IS NULL OR d.last_seen_at < $5)))",
        vec![
            ids.into(),
            versions.into(),
            keys.into(),
            seen.into(),
            stale.into(),
            at.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// The registry's firmware columns (version, sortable key) for a reported version.
fn firmware_columns(firmware: Option<&semver::Version>) -> (Option<String>, Option<String>) {
    (
        firmware.map(ToString::to_string),
        firmware.map(super::version_key::of),
    )
}

/// Reads one device.
pub async fn get(db: &impl ConnectionTrait, id: &str) -> Result<Device, Error> {
    devices::Entity::find_by_id(id.to_owned())
        .one(db)
        .await?
        .map(Device::from)
        .ok_or_else(|| Error::NotFound {
            kind: "device",
            id: id.to_owned(),
        })
}

/// Changes a device. A transaction PostgreSQL aborted for a conflict (with a batch of
/// device reports) runs again.
pub async fn update(
    db: &DatabaseConnection,
    actor: &Actor,
    id: &str,
    patch: DevicePatch,
) -> Result<Device, Error> {
    check_serial(&patch.serial)?;
    let hardware = patch.hardware.as_deref().map(parse_hardware).transpose()?;
    if let Some(attrs) = &patch.attributes {
        check_attributes(attrs)?;
    }
    crate::db::retry_conflicts("a device update", || {
        update_once(db, actor, id, patch.clone(), hardware.clone())
    })
    .await
}

async fn update_once(
    db: &DatabaseConnection,
    actor: &Actor,
    id: &str,
    patch: DevicePatch,
    hardware: Option<String>,
) -> Result<Device, Error> {
    let txn = db.begin().await?;
    let current = devices::Entity::find_by_id(id.to_owned())
        .lock_exclusive()
        .one(&txn)
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "device",
            id: id.to_owned(),
        })?;
    let mut row: devices::ActiveModel = current.into();
    let mut changed = serde_json::Map::new();
    if let Some(serial) = patch.serial {
        changed.insert("serial".into(), serial.clone().into());
        row.serial = Set(Some(serial));
    }
    if let Some(hardware) = hardware {
        changed.insert("hardware".into(), hardware.clone().into());
        row.hardware = Set(hardware);
    }
    if let Some(attrs) = patch.attributes {
        changed.insert(
            "attributes".into(),
            serde_json::Value::Object(attrs.clone()),
        );
        row.attributes = Set(serde_json::Value::Object(attrs));
    }
    row.updated_at = Set(crate::db::now());
    let updated = devices::Entity::update(row).exec(&txn).await?;
    audit::append(
        &txn,
        actor,
        Event {
            action: "device.update",
            subject: format!("device:{id}"),
            details: serde_json::Value::Object(changed),
        },
    )
    .await?;
    txn.commit().await?;
    Ok(updated.into())
}

/// The advisory lock that keeps devices and the executions written for them consistent
/// on PostgreSQL, where `job_executions` has no foreign keys (see the migration that
/// dropped them): taken shared by every transaction that writes executions, exclusively by
/// a device's deletion. The key spells "fleetdev".
const DEVICES_LOCK: i64 = 0x666c_6565_7464_6576;

/// Keeps every device from being deleted until the transaction ends, so the executions it
/// writes (for devices it saw registered) never outlive their device. Take it before
/// reading the devices. A no-op on SQLite, whose foreign keys still cascade and whose
/// writers take turns anyway.
pub async fn hold_devices(txn: &impl ConnectionTrait) -> Result<(), DbErr> {
    lock_devices(txn, "pg_advisory_xact_lock_shared").await
}

async fn lock_devices(txn: &impl ConnectionTrait, function: &str) -> Result<(), DbErr> {
    if txn.get_database_backend() != DatabaseBackend::Postgres {
        return Ok(());
    }
    txn.execute_raw(Statement::from_sql_and_values(
        DatabaseBackend::Postgres,
        format!("SELECT {function}($1)"),
        [DEVICES_LOCK.into()],
    ))
    .await
    .map(|_| ())
}

/// Removes a device, its executions and its group memberships. Its execution history
/// stays: it is the audit trail of what the device ran. A transaction PostgreSQL aborted for
/// a conflict (with a batch of device reports) runs again.
pub async fn delete(db: &DatabaseConnection, actor: &Actor, id: &str) -> Result<(), Error> {
    crate::db::retry_conflicts("a device removal", || async {
        let txn = db.begin().await?;
        delete_in(&txn, actor, id).await?;
        txn.commit().await?;
        Ok(())
    })
    .await
}

/// [`delete`] inside the caller's transaction, run once.
pub async fn delete_in(txn: &impl ConnectionTrait, actor: &Actor, id: &str) -> Result<(), Error> {
    // Its shadow's row first, then the device's, then its executions: the order a device's
    // report takes them (its shadow, its firmware, its execution), so a removal and a report
    // of the same device do not wait on each other in a cycle. The shadow's row is locked
    // before the lock below, which would hold up every transaction writing executions while
    // this one waits for a batch of reports.
    shadows::Entity::find_by_id(id.to_owned())
        .lock_exclusive()
        .one(txn)
        .await?;
    // Waits for the transactions writing executions to end; none starts until this one does.
    lock_devices(txn, "pg_advisory_xact_lock").await?;
    let result = devices::Entity::delete_by_id(id.to_owned())
        .exec(txn)
        .await?;
    if result.rows_affected == 0 {
        return Err(Error::NotFound {
            kind: "device",
            id: id.to_owned(),
        });
    }
    job_executions::Entity::delete_many()
        .filter(job_executions::Column::DeviceId.eq(id))
        .exec(txn)
        .await?;
    audit::append(
        txn,
        actor,
        Event {
            action: "device.delete",
            subject: format!("device:{id}"),
            details: serde_json::json!({}),
        },
    )
    .await?;
    Ok(())
}

/// A page of devices in id order, after `query.cursor`, optionally filtered by hardware
/// and by a device query.
pub async fn list(db: &impl ConnectionTrait, query: &ListQuery) -> Result<Page<Device>, Error> {
    let mut condition = Condition::all();
    if let Some(hardware) = &query.hardware {
        condition = condition.add(devices::Column::Hardware.eq(hardware.as_str()));
    }
    if let Some(q) = &query.query {
        condition = condition.add(super::groups::parse_query(q)?.to_sql(db.get_database_backend()));
    }
    page(db, condition, query.cursor.as_deref(), query.limit).await
}

/// One page of the devices matching `condition`, in id order, after `cursor`.
pub async fn page(
    db: &impl ConnectionTrait,
    condition: impl IntoCondition,
    cursor: Option<&str>,
    limit: Option<u64>,
) -> Result<Page<Device>, Error> {
    let limit = page_limit(limit)?;
    let mut select = devices::Entity::find()
        .filter(condition)
        .order_by_asc(devices::Column::Id);
    if let Some(cursor) = cursor {
        select = select.filter(devices::Column::Id.gt(cursor));
    }
    let rows = select.limit(limit + 1).all(db).await?;
    Ok(Page::from_rows(rows, limit, |r| r.id.clone()))
}

/// A requested page size, checked: 1 to [`MAX_PAGE`], 100 when absent.
pub fn page_limit(limit: Option<u64>) -> Result<u64, Error> {
    let limit = limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(invalid("limit", format!("1 to {MAX_PAGE}")));
    }
    Ok(limit)
}

impl<T> Page<T> {
    /// A page from up to `limit + 1` rows fetched in cursor order: the extra row, if there
    /// is one, only tells that a next page exists, which starts after the last kept row.
    pub fn from_rows<M>(mut rows: Vec<M>, limit: u64, cursor_of: impl Fn(&M) -> String) -> Self
    where
        T: From<M>,
    {
        let next_cursor = if rows.len() as u64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(cursor_of)
        } else {
            None
        };
        Page {
            items: rows.into_iter().map(T::from).collect(),
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_changes_the_registry_only_for_new_firmware_or_a_stale_last_seen() {
        let at = Utc::now();
        let v = |s: &str| Some(semver::Version::parse(s).unwrap());
        let report = |firmware| Report {
            id: "pi".into(),
            firmware,
        };
        let recorded = |firmware: Option<&str>, seen_ago: Option<i64>| Recorded {
            firmware_version: firmware.map(str::to_owned),
            last_seen_at: seen_ago.map(|s| at - chrono::Duration::seconds(s)),
        };
        let fresh = recorded(Some("1.0.0"), Some(5));
        assert!(!report(v("1.0.0")).changes(&fresh, true, at), "nothing new");
        assert!(
            !report(None).changes(&fresh, true, at),
            "no firmware, seen lately"
        );
        assert!(report(v("1.1.0")).changes(&fresh, true, at), "new firmware");
        assert!(
            report(v("1.1.0")).changes(&fresh, false, at),
            "even from a person"
        );
        assert!(
            report(v("1.0.0")).changes(&recorded(None, Some(5)), true, at),
            "first firmware"
        );
        let stale = recorded(Some("1.0.0"), Some(61));
        assert!(
            report(v("1.0.0")).changes(&stale, true, at),
            "seen a minute ago"
        );
        assert!(
            !report(v("1.0.0")).changes(&stale, false, at),
            "not by a person"
        );
        assert!(
            report(None).changes(&recorded(None, None), true, at),
            "never seen"
        );
    }
}
