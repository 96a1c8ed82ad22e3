//! Set-based fan-out on PostgreSQL: a rollout's target snapshot and the queueing of its
//! waves as `INSERT … SELECT` statements, so that no device row crosses into the service.
//! The engine keeps the row-by-row path for SQLite and for the few devices these
//! statements leave undecided.
//!
//! Two rules are restated here in SQL and must stay exactly equal to their Rust originals:
//! a device's bucket ([`bucket`], checked against it in this module's tests) and the
//! install rules of [`rules::check_manifest`]. For the rules, SQL only ever queues a device
//! the Rust rules would queue too; anything it is not sure of (a pre-release against a
//! pre-release of the same version, build metadata, a version it cannot read) is handed
//! back undecided, with the device's hardware and firmware, for the Rust rules to judge.
//!
//! [`bucket`]: fleetwave_artifacts::protocol::bucket::bucket
//! [`rules::check_manifest`]: fleetwave_artifacts::rules::check_manifest

use chrono::{DateTime, Utc};
use fleetwave_artifacts::Manifest;
use fleetwave_artifacts::protocol::bucket::BUCKETS;
use fleetwave_artifacts::protocol::jobs::ExecutionState;
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, Statement, Value};

use super::engine::status;
use super::plan::{Cut, Histogram};
use crate::registry::version_key;

/// A device's bucket in rollout `rollout_param` (a placeholder such as `$3`), for the id
/// column `id` (a qualified column), in SQL: SHA-256 of the same bytes as
/// [`bucket`](fleetwave_artifacts::protocol::bucket::bucket), its first eight bytes read as
/// an unsigned big-endian integer, modulo [`BUCKETS`]. PostgreSQL has no unsigned 64-bit
/// integer: a negative `s` stands for `s + 2^64`, whose remainder is shifted accordingly.
fn bucket_sql(id: &str, rollout_param: &str) -> String {
    let buckets = i64::from(BUCKETS);
    let wrap = ((1u128 << 64) % u128::from(BUCKETS)) as i64;
    format!(
        "(SELECT CASE WHEN k.s >= 0 THEN k.s % {buckets} \
                 ELSE (k.s % {buckets} + {wrap} + {buckets}) % {buckets} END \
          FROM (SELECT ('x' || encode(substring(sha256(convert_to( \
                  'fleetwave/bucket/v1' || chr(10) || {rollout_param}::text || chr(10) || {id}, \
                  'UTF8')) from 1 for 8), 'hex'))::bit(64)::bigint AS s) AS k)"
    )
}

/// The target (a query whose one column is the device id) with each device's bucket in
/// `rollout`, as `target(id, b)`; the rollout id is bound after the target's own values.
fn bucketed(target: &Statement, rollout: &str) -> (String, Vec<Value>) {
    let mut values = target
        .values
        .as_ref()
        .map(|v| v.0.clone())
        .unwrap_or_default();
    values.push(rollout.to_owned().into());
    let rollout_param = format!("${}", values.len());
    let sql = format!(
        "SELECT t.id, {b}::integer AS b FROM ({inner}) AS t(id)",
        b = bucket_sql("t.id", &rollout_param),
        inner = target.sql,
    );
    (sql, values)
}

/// Runs one statement on PostgreSQL.
async fn query(
    txn: &impl ConnectionTrait,
    sql: String,
    values: Vec<Value>,
) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
    txn.query_all_raw(Statement::from_sql_and_values(
        DatabaseBackend::Postgres,
        sql,
        values,
    ))
    .await
}

/// Counts the target's devices per bucket, in the database.
pub async fn histogram(
    txn: &impl ConnectionTrait,
    target: &Statement,
    rollout: &str,
) -> Result<Histogram, DbErr> {
    let (inner, values) = bucketed(target, rollout);
    let rows = query(
        txn,
        format!("SELECT b, count(*) FROM ({inner}) AS target GROUP BY b"),
        values,
    )
    .await?;
    let mut histogram = Histogram::default();
    for row in rows {
        let b: i32 = row.try_get_by_index(0)?;
        let n: i64 = row.try_get_by_index(1)?;
        histogram.count(
            u16::try_from(b).unwrap_or(BUCKETS - 1),
            usize::try_from(n).unwrap_or(0),
        );
    }
    Ok(histogram)
}

/// Writes the target rows of `rollout`, each device in the wave its bucket falls in
/// (`outside` past the last cut), in one statement; returns how many pending devices each
/// wave got.
pub async fn write_targets(
    txn: &impl ConnectionTrait,
    target: &Statement,
    rollout: &str,
    cuts: &[Cut],
) -> Result<Vec<i64>, DbErr> {
    let (inner, mut values) = bucketed(target, rollout);
    let rollout_param = format!("${}", values.len());
    let inside = cuts.last().map_or(0, |c| c.threshold);
    let last = cuts.len().saturating_sub(1);
    let mut wave = format!(
        "CASE WHEN b >= {inside} THEN {outside}",
        outside = cuts.len()
    );
    for (i, cut) in cuts.iter().enumerate() {
        wave.push_str(&format!(" WHEN b < {} THEN {i}", cut.threshold));
    }
    wave.push_str(&format!(" ELSE {last} END"));
    values.push(status::PENDING.into());
    let pending = format!("${}", values.len());
    values.push(status::OUTSIDE.into());
    let outside = format!("${}", values.len());
    // Materialised, so each device's bucket is hashed once, not once per use.
    let sql = format!(
        "WITH target AS MATERIALIZED ({inner}), \
         written AS ( \
           INSERT INTO rollout_targets (rollout_id, device_id, bucket, wave, status) \
           SELECT {rollout_param}, id, b, {wave}, \
                  CASE WHEN b < {inside} THEN {pending} ELSE {outside} END \
           FROM target \
           RETURNING wave, status) \
         SELECT wave, count(*) FROM written WHERE status = {pending} GROUP BY wave"
    );
    let rows = query(txn, sql, values).await?;
    let mut planned = vec![0i64; cuts.len()];
    for row in rows {
        let w: i32 = row.try_get_by_index(0)?;
        let n: i64 = row.try_get_by_index(1)?;
        if let Some(p) = usize::try_from(w).ok().and_then(|w| planned.get_mut(w)) {
            *p += n;
        }
    }
    Ok(planned)
}

/// Targets queued per statement: the statement's fixed costs (a pass over the devices to
/// join them) spread over many, while what comes back to the service stays a few MiB.
pub const BATCH: u64 = 25_000;

/// A pending target picked for queueing.
pub struct Picked {
    pub device_id: String,
    pub wave: i32,
    pub bucket: i32,
}

/// What one queueing statement did.
pub struct Batch {
    /// Targets looked at (queued here or handed back).
    pub picked: usize,
    /// Queued by the statement: execution, history row and target status written.
    pub queued: Vec<Picked>,
    /// Left pending for the Rust rules to judge (rare: see the module's notes).
    pub undecided: Vec<Picked>,
}

/// Picks up to `limit` pending targets of `rollout` in waves up to `current` (in wave,
/// bucket, id order) and queues, in the same statement, every one the install rules surely
/// admit (the caller has checked that the manifest has not expired at `now`): its execution of `job` and first history row are written and its target marked
/// queued at `now`. The rest stay pending and come back undecided.
#[allow(clippy::too_many_arguments)]
pub async fn queue_batch(
    txn: &impl ConnectionTrait,
    rollout: &str,
    job: &str,
    current: i32,
    limit: u64,
    manifest: &Manifest,
    now: DateTime<Utc>,
) -> Result<Batch, DbErr> {
    let hardware: Vec<&str> = manifest.hardware.iter().map(|h| h.as_str()).collect();
    let version = version_key::of(&manifest.version);
    let mut values: Vec<Value> = vec![
        rollout.to_owned().into(),
        current.into(),
        i64::try_from(limit).unwrap_or(i64::MAX).into(),
        serde_json::to_string(&hardware)
            .expect("hardware ids serialise")
            .into(),
        job.to_owned().into(),
        now.into(),
        ExecutionState::Queued.as_str().into(),
        status::PENDING.into(),
        status::QUEUED.into(),
        version.clone().into(),
    ];
    // Newer: no firmware reported, or a sortable key below the release's (compared byte by
    // byte, whatever the database's collation). A key equal in its numbers and both
    // pre-releases compare as text, which is not semver's order.
    let mut sure = vec![
        "(d.firmware_version IS NULL OR d.firmware_key COLLATE \"C\" < $10)".to_owned(),
        ambiguous_with(&manifest.version, &mut values),
    ];
    if let Some(min) = &manifest.min_version {
        values.push(version_key::of(min).into());
        let key = format!("${}", values.len());
        values.push(min.to_string().into());
        let text = format!("${}", values.len());
        sure.push(format!(
            "(d.firmware_key COLLATE \"C\" > {key} OR d.firmware_version = {text})"
        ));
        sure.push(ambiguous_with(min, &mut values));
    }
    // The picked targets are marked queued by their physical address (`ctid`), read in this
    // same statement while the engine holds the rollout's row: nothing moved them meanwhile.
    let sql = format!(
        "WITH picked AS ( \
           SELECT ctid AS tid, device_id, wave, bucket FROM rollout_targets \
           WHERE rollout_id = $1 AND status = $8 AND wave <= $2 \
           ORDER BY wave, bucket, device_id LIMIT $3), \
         judged AS ( \
           SELECT p.tid, p.device_id, p.wave, p.bucket, d.hardware, d.firmware_version, \
                  COALESCE(d.id IS NOT NULL \
                    AND d.hardware IN (SELECT json_array_elements_text($4::json)) \
                    AND {sure}, false) AS ok \
           FROM picked p LEFT JOIN devices d ON d.id = p.device_id), \
         executions AS ( \
           INSERT INTO job_executions (job_id, device_id, execution_number, version, state, \
                                       queued_at, updated_at, rollout_id, wave) \
           SELECT $5, device_id, 1, 1, $7, $6, $6, $1, wave FROM judged WHERE ok), \
         history AS ( \
           INSERT INTO execution_history (job_id, device_id, execution_number, to_state, \
                                          hardware, firmware_version, at) \
           SELECT $5, device_id, 1, $7, hardware, firmware_version, $6 FROM judged WHERE ok), \
         marked AS ( \
           UPDATE rollout_targets SET status = $9 \
           WHERE ctid = ANY(ARRAY(SELECT tid FROM judged WHERE ok))) \
         SELECT device_id, wave, bucket, ok FROM judged",
        sure = sure.join(" AND "),
    );
    let rows = query(txn, sql, values).await?;
    let mut batch = Batch {
        picked: rows.len(),
        queued: Vec::with_capacity(rows.len()),
        undecided: Vec::new(),
    };
    for row in rows {
        let picked = Picked {
            device_id: row.try_get_by_index(0)?,
            wave: row.try_get_by_index(1)?,
            bucket: row.try_get_by_index(2)?,
        };
        if row.try_get_by_index::<bool>(3)? {
            batch.queued.push(picked);
        } else {
            batch.undecided.push(picked);
        }
    }
    Ok(batch)
}

/// The condition that the device's firmware is not a pre-release of the same numbers as
/// `v` when `v` is a pre-release itself (their keys then compare as text), binding what it
/// needs into `values`.
fn ambiguous_with(v: &semver::Version, values: &mut Vec<Value>) -> String {
    if v.pre.is_empty() {
        return "true".to_owned();
    }
    let key = version_key::of(v);
    let numbers = key.split_once('-').map_or(key.as_str(), |(n, _)| n);
    values.push(format!("{numbers}-").into());
    format!(
        "(d.firmware_key IS NULL OR left(d.firmware_key, {len}) <> ${n})",
        len = numbers.len() + 1,
        n = values.len()
    )
}
