//! Set-based fan-out on PostgreSQL: a rollout's target snapshot and the queueing of its
//! waves as `INSERT … SELECT` statements, so that no device row crosses into the service.
//! At the start each device is hashed once (in parallel workers) into a temporary table,
//! whose histogram cuts the waves; one statement then writes every target row and, for a
//! static group with no rate limit, queues the first wave in passing (a device it queues
//! gets its execution and no target row: a target is a device's place in the rollout until
//! it is queued). Later waves, and rationed first waves, are queued in batches that delete
//! the targets they queue. The engine keeps the row-by-row path for SQLite and for the few
//! devices these statements leave undecided.
//!
//! Two rules are restated here in SQL and must stay exactly equal to their Rust originals:
//! a device's bucket ([`bucket`], checked against it by the fan-out tests) and the
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

/// The target (a query whose one column is the device id) with each device's bucket in
/// `rollout`, as rows `(id, b)`; the bytes hashed before each id are bound after the
/// target's own values.
///
/// The bucket in SQL: SHA-256 of the same bytes as
/// [`bucket`](fleetwave_artifacts::protocol::bucket::bucket), its first eight bytes read as
/// an unsigned big-endian integer, modulo [`BUCKETS`]. PostgreSQL has no unsigned 64-bit
/// integer: a negative `s` stands for `s + 2^64`, whose remainder is shifted accordingly.
fn bucketed(target: &Statement, rollout: &str) -> (String, Vec<Value>) {
    let mut values = target
        .values
        .as_ref()
        .map(|v| v.0.clone())
        .unwrap_or_default();
    // The bytes before the device's id, the same for every device: bound once.
    let prefix = bind(
        &mut values,
        format!("fleetwave/bucket/v1\n{rollout}\n").into_bytes(),
    );
    let buckets = i64::from(BUCKETS);
    let wrap = ((1u128 << 64) % u128::from(BUCKETS)) as i64;
    let sql = format!(
        "SELECT id, (CASE WHEN s >= 0 THEN s % {buckets} \
                     ELSE (s % {buckets} + {wrap} + {buckets}) % {buckets} END)::integer AS b \
         FROM (SELECT t.id, ('x' || encode(substring( \
                 sha256({prefix}::bytea || convert_to(t.id, 'UTF8')) from 1 for 8), 'hex') \
               )::bit(64)::bigint AS s \
               FROM ({inner}) AS t(id)) AS hashed",
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

/// Appends `value` to a statement's `values` and returns its placeholder (`$n`).
fn bind(values: &mut Vec<Value>, value: impl Into<Value>) -> String {
    values.push(value.into());
    format!("${}", values.len())
}

/// PostgreSQL's `work_mem` for the rest of a starting rollout's transaction: the limit of
/// each hash table or stored result before it spills to a temporary file, not an
/// allocation (a 100k-device target needed 12 MiB for the devices' hash table and about as
/// much for the judged rows; a larger one spills beyond about five times that).
const WORK_MEM: &str = "64MB";

/// The temporary table a starting rollout's target is hashed into, dropped at commit.
const SNAPSHOT: &str = "fanout_target";

/// Hashes every device of the target into a temporary table (its id and its bucket in
/// `rollout`), once, and counts them per bucket: [`write_targets`] reads the table, which
/// goes at commit (one rollout starts per transaction).
pub async fn snapshot(
    txn: &impl ConnectionTrait,
    target: &Statement,
    rollout: &str,
) -> Result<Histogram, DbErr> {
    let (inner, values) = bucketed(target, rollout);
    // The statement writing the targets holds the whole target twice (its devices' hash
    // table and the judged rows, which each of its parts reads): room for them in memory,
    // for this transaction only, instead of temporary files (4 MiB by default: a
    // 100k-device target spilled about 30 MiB to disk).
    //
    // Hashing is most of the snapshot's time (about 2 µs per device, in `sha256()`), and
    // PostgreSQL hashes in parallel workers when the table is created from the query
    // (`CREATE TABLE … AS`; an `INSERT … SELECT` runs in one process). Its planner counts
    // `sha256()` as cheap as an addition, so it would judge the workers' start and each
    // row's passage to the leader dearer than the hashing they share: both are costed at
    // nothing for this statement. A devices table under `min_parallel_table_scan_size`
    // (8 MiB by default, some 100k devices) is still read by one process.
    txn.execute_unprepared(&format!(
        "SET LOCAL work_mem = '{WORK_MEM}'; \
         SET LOCAL parallel_setup_cost = 0; SET LOCAL parallel_tuple_cost = 0"
    ))
    .await?;
    query(
        txn,
        format!("CREATE TEMP TABLE {SNAPSHOT} ON COMMIT DROP AS {inner}"),
        values,
    )
    .await?;
    txn.execute_unprepared(
        "SET LOCAL parallel_setup_cost TO DEFAULT; SET LOCAL parallel_tuple_cost TO DEFAULT",
    )
    .await?;
    let rows = query(
        txn,
        format!("SELECT b, count(*) FROM {SNAPSHOT} GROUP BY b"),
        Vec::new(),
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

/// What queueing devices takes: the job to queue, the release's manifest whose rules each
/// device must surely pass, and the time.
pub struct Queueing<'a> {
    pub job: &'a str,
    pub manifest: &'a Manifest,
    pub now: DateTime<Utc>,
}

/// What [`write_targets`] wrote.
pub struct Written {
    /// Devices per wave (queued or pending; not those outside the last wave).
    pub planned: Vec<i64>,
    /// Devices of the first wave queued in the same statement.
    pub queued: i64,
}

/// Writes the target rows of `rollout` from the [`snapshot`], each device in the wave its
/// bucket falls in (`outside` past the last cut), in one statement. With `queue`, the same
/// statement queues every device of the first wave the install rules surely admit (its
/// execution, which names the rollout and the wave, and its first history row, but no
/// target row); the rest stay pending for [`queue_batch`] and the Rust rules.
pub async fn write_targets(
    txn: &impl ConnectionTrait,
    rollout: &str,
    cuts: &[Cut],
    queue: Option<Queueing<'_>>,
) -> Result<Written, DbErr> {
    let inside = cuts.last().map_or(0, |c| c.threshold);
    let last = cuts.len().saturating_sub(1);
    let mut wave = format!(
        "CASE WHEN t.b >= {inside} THEN {outside}",
        outside = cuts.len()
    );
    for (i, cut) in cuts.iter().enumerate() {
        wave.push_str(&format!(" WHEN t.b < {} THEN {i}", cut.threshold));
    }
    wave.push_str(&format!(" ELSE {last} END"));
    let mut values: Vec<Value> = vec![
        rollout.to_owned().into(),
        status::PENDING.into(),
        status::OUTSIDE.into(),
    ];
    let (judged, queueing) = match queue {
        None => (
            format!(
                "SELECT t.id AS device_id, t.b AS bucket, {wave} AS wave, false AS ok FROM {SNAPSHOT} t"
            ),
            String::new(),
        ),
        Some(q) => {
            let admits = surely_admits(q.manifest, &mut values);
            let judged = format!(
                "SELECT w.device_id, w.bucket, w.wave, d.hardware, d.firmware_version, \
                        COALESCE(w.wave = 0 AND {admits}, false) AS ok \
                 FROM (SELECT t.id AS device_id, t.b AS bucket, {wave} AS wave \
                       FROM {SNAPSHOT} t) AS w \
                 LEFT JOIN devices d ON d.id = w.device_id"
            );
            (judged, insert_queued(q.job, q.now, &mut values))
        }
    };
    let sql = format!(
        "WITH judged AS ({judged}), {queueing} \
         written AS ( \
           INSERT INTO rollout_targets (rollout_id, device_id, bucket, wave, status) \
           SELECT $1, device_id, bucket, wave, CASE WHEN bucket < {inside} THEN $2 ELSE $3 END \
           FROM judged WHERE NOT ok) \
         SELECT wave, ok, count(*) FROM judged WHERE bucket < {inside} GROUP BY 1, 2"
    );
    let rows = query(txn, sql, values).await?;
    let mut written = Written {
        planned: vec![0i64; cuts.len()],
        queued: 0,
    };
    for row in rows {
        let w: i32 = row.try_get_by_index(0)?;
        let queued: bool = row.try_get_by_index(1)?;
        let n: i64 = row.try_get_by_index(2)?;
        if let Some(p) = usize::try_from(w)
            .ok()
            .and_then(|w| written.planned.get_mut(w))
        {
            *p += n;
        }
        if queued {
            written.queued += n;
        }
    }
    Ok(written)
}

/// The statements (as common table expressions ending in a comma) that queue every row of
/// `judged` (`device_id`, `wave`, `hardware`, `firmware_version`, `ok`) whose `ok` is true:
/// its execution of `job` and its first history row, at `now`.
fn insert_queued(job: &str, now: DateTime<Utc>, values: &mut Vec<Value>) -> String {
    let job = bind(values, job.to_owned());
    let now = bind(values, now);
    let queued = bind(values, ExecutionState::Queued.as_str());
    format!(
        "executions AS ( \
           INSERT INTO job_executions (job_id, device_id, execution_number, version, state, \
                                       queued_at, updated_at, rollout_id, wave) \
           SELECT {job}, device_id, 1, 1, {queued}, {now}, {now}, $1, wave \
           FROM judged WHERE ok), \
         history AS ( \
           INSERT INTO execution_history (job_id, device_id, execution_number, to_state, \
                                          hardware, firmware_version, at) \
           SELECT {job}, device_id, 1, {queued}, hardware, firmware_version, {now} \
           FROM judged WHERE ok),"
    )
}

/// The condition that the install rules surely admit device `d` (a row of `devices` joined
/// on a target, all NULL when the device was deleted) to `manifest`, binding what it needs
/// into `values`. The caller has checked that the manifest has not expired.
fn surely_admits(manifest: &Manifest, values: &mut Vec<Value>) -> String {
    let hardware: Vec<&str> = manifest.hardware.iter().map(|h| h.as_str()).collect();
    let hardware = bind(
        values,
        serde_json::to_string(&hardware).expect("hardware ids serialise"),
    );
    let version = bind(values, version_key::of(&manifest.version));
    // Newer: no firmware reported, or a sortable key below the release's (compared byte by
    // byte, whatever the database's collation). A key equal in its numbers and both
    // pre-releases compare as text, which is not semver's order.
    let mut sure = vec![
        "d.id IS NOT NULL".to_owned(),
        format!("d.hardware IN (SELECT json_array_elements_text({hardware}::json))"),
        format!("(d.firmware_version IS NULL OR d.firmware_key COLLATE \"C\" < {version})"),
        ambiguous_with(&manifest.version, values),
    ];
    if let Some(min) = &manifest.min_version {
        let key = bind(values, version_key::of(min));
        let text = bind(values, min.to_string());
        sure.push(format!(
            "(d.firmware_key COLLATE \"C\" > {key} OR d.firmware_version = {text})"
        ));
        sure.push(ambiguous_with(min, values));
    }
    sure.join(" AND ")
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
    /// Queued by the statement: execution and history row written, target deleted.
    pub queued: Vec<Picked>,
    /// Left pending for the Rust rules to judge (rare: see the module's notes).
    pub undecided: Vec<Picked>,
}

/// Picks up to `limit` pending targets of `rollout` in waves up to `current` (in wave,
/// bucket, id order) and queues, in the same statement, every one the install rules surely
/// admit (the caller has checked that the manifest has not expired at `now`): its
/// execution of `job` and first history row are written and its target deleted. The rest
/// stay pending and come back undecided.
pub async fn queue_batch(
    txn: &impl ConnectionTrait,
    rollout: &str,
    current: i32,
    limit: u64,
    queue: Queueing<'_>,
) -> Result<Batch, DbErr> {
    let mut values: Vec<Value> = vec![
        rollout.to_owned().into(),
        current.into(),
        i64::try_from(limit).unwrap_or(i64::MAX).into(),
    ];
    let admits = surely_admits(queue.manifest, &mut values);
    let queueing = insert_queued(queue.job, queue.now, &mut values);
    // The queued targets are deleted by their physical address (`ctid`), read in this same
    // statement while the engine holds the rollout's row: nothing moved them meanwhile.
    let sql = format!(
        "WITH picked AS ( \
           SELECT ctid AS tid, device_id, wave, bucket FROM rollout_targets \
           WHERE rollout_id = $1 AND {pending} AND wave <= $2 \
           ORDER BY wave, bucket, device_id LIMIT $3), \
         judged AS ( \
           SELECT p.tid, p.device_id, p.wave, p.bucket, d.hardware, d.firmware_version, \
                  COALESCE({admits}, false) AS ok \
           FROM picked p LEFT JOIN devices d ON d.id = p.device_id), \
         {queueing} \
         done AS ( \
           DELETE FROM rollout_targets \
           WHERE ctid = ANY(ARRAY(SELECT tid FROM judged WHERE ok))) \
         SELECT device_id, wave, bucket, ok FROM judged",
        pending = status::is_sql(status::PENDING),
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
    let prefix = bind(values, format!("{numbers}-"));
    format!(
        "(d.firmware_key IS NULL OR left(d.firmware_key, {len}) <> {prefix})",
        len = numbers.len() + 1,
    )
}
