//! The rollout engine: the IO loop around [`super::plan`]. Every tick it takes each due
//! rollout in its own transaction, holding the rollout's row (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL, so replicas never step the same rollout at once), and there: times out stuck
//! devices, queues due retries, takes in devices that joined the target, queues the current
//! wave's devices in bulk within the maintenance window and the rate limit (checking each
//! one's compatibility first), then lets [`plan::decide`] start, advance, halt or complete
//! it. Messages to devices go out only after the commit; what a crash between the commit
//! and the publish loses is redone on the next tick (notices) or asked for by the device
//! (`start-next`). A replica killed mid-step rolls its transaction back: nothing is lost and
//! nothing queued twice.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use fleetwave_artifacts::protocol::bucket::bucket;
use fleetwave_artifacts::protocol::jobs::{ExecutionState, WaveNotice};
use fleetwave_artifacts::rules;
use fleetwave_artifacts::{DeviceId, Manifest, Timestamp};
use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType, Query as SqlQuery};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseBackend,
    DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, Statement, TransactionTrait, TryIntoModel,
};

use super::fanout;
use super::ledger::{self, Counter};
use super::plan::{self, Decision, Situation, State, WaveView};
use super::spec::{NewRollout, Target};
use crate::audit::{self, Actor};
use crate::events;
use crate::jobs;
use crate::mqtt::bridge::Bridge;
use crate::registry::entities::{
    devices, execution_history, groups, job_executions, releases, rollout_targets, rollout_waves,
    rollouts,
};
use crate::storage::Storage;

/// Rows written per statement in bulk inserts.
const CHUNK: usize = 1000;
/// Devices looked at per query when queueing, timing out or retrying.
const BATCH: u64 = 5_000;

/// Target statuses.
pub(crate) mod status {
    /// Not queued yet. A queued device has no target row: its execution (which names
    /// the rollout and the wave) holds its place.
    pub const PENDING: &str = "pending";
    /// Cannot take the release.
    pub const INCOMPATIBLE: &str = "incompatible";
    /// In the target but beyond the last wave's size.
    pub const OUTSIDE: &str = "outside";

    /// The condition that a target has `status`, written out rather than bound: the
    /// indexes of pending and of incompatible targets are partial, and a planner only uses
    /// one for a condition it can see (PostgreSQL's generic plans and SQLite do not look
    /// into bound values).
    pub fn is(status: &'static str) -> sea_orm::sea_query::SimpleExpr {
        sea_orm::sea_query::Expr::cust(is_sql(status))
    }

    /// [`is`] as SQL text.
    pub fn is_sql(status: &'static str) -> String {
        format!("status = '{status}'")
    }
}

/// Advances rollouts.
#[derive(Clone)]
pub struct Engine {
    db: DatabaseConnection,
    bridge: Bridge,
    storage: Storage,
    every: Duration,
}

/// What to tell devices once a step has committed.
#[derive(Default)]
struct Outbox {
    /// Devices queued in this step (with their bucket and execution number).
    queued: Vec<(String, u16, i64)>,
    /// Publish the retained notice of this wave.
    notice: Option<(String, i32, u16)>,
    /// Clear the retained notice of this group.
    clear: Option<String>,
}

impl Engine {
    /// An engine over `db` that reaches devices through `bridge`, looking at each running
    /// rollout every `every`.
    pub fn new(db: DatabaseConnection, bridge: Bridge, storage: Storage, every: Duration) -> Self {
        Engine {
            db,
            bridge,
            storage,
            every: every.max(Duration::from_millis(1)),
        }
    }

    /// Ticks until the process ends.
    pub async fn run(self) {
        loop {
            if let Err(e) = self.tick(Utc::now()).await {
                tracing::warn!(error.message = %format!("{e:#}"), "rollout engine tick failed; retrying");
            }
            tokio::time::sleep(self.every).await;
        }
    }

    /// Steps every rollout due at `now` once; returns how many it stepped. A step that
    /// PostgreSQL aborted for a deadlock (with device reports taking the same rows) rolled
    /// back whole and runs again at once, a few times at most.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<usize> {
        let mut stepped = 0;
        while crate::db::retry_conflicts("a rollout step", || self.step_one(now)).await? {
            stepped += 1;
        }
        Ok(stepped)
    }

    /// Steps one due rollout that no other replica holds; false when there is none.
    async fn step_one(&self, now: DateTime<Utc>) -> Result<bool> {
        let txn = self.db.begin().await?;
        let mut query = rollouts::Entity::find()
            .filter(
                sea_orm::Condition::any()
                    .add(
                        rollouts::Column::State
                            .is_in([State::Scheduled.as_str(), State::Running.as_str()]),
                    )
                    .add(rollouts::Column::NoticeWave.is_not_null()),
            )
            .filter(rollouts::Column::NextTickAt.lte(now))
            .order_by_asc(rollouts::Column::NextTickAt)
            .limit(1);
        if txn.get_database_backend() == DatabaseBackend::Postgres {
            query = query.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let Some(mut row) = query.one(&txn).await? else {
            txn.commit().await?;
            return Ok(false);
        };
        let mut out = Outbox::default();
        self.step(&txn, &mut row, now, &mut out)
            .await
            .with_context(|| format!("stepping rollout {}", row.id))?;
        row.next_tick_at = now + chrono::Duration::from_std(self.every).unwrap_or_default();
        rollouts::Entity::update(rollouts::ActiveModel::from(row.clone()).reset_all())
            .exec(&txn)
            .await?;
        txn.commit().await?;
        self.send(&row, out).await?;
        Ok(true)
    }

    async fn step(
        &self,
        txn: &DatabaseTransaction,
        row: &mut rollouts::Model,
        now: DateTime<Utc>,
        out: &mut Outbox,
    ) -> Result<()> {
        let spec: NewRollout =
            serde_json::from_str(&row.spec).context("the stored rollout request")?;
        let state: State = row.state.parse().map_err(anyhow::Error::msg)?;
        let group = match &spec.target {
            Target::Group(name) => groups::Entity::find_by_id(name.clone()).one(txn).await?,
            Target::Devices(_) => None,
        };
        let static_group = group
            .as_ref()
            .filter(|g| g.query.is_none())
            .map(|g| g.name.clone());
        if state.is_final() || state == State::Paused {
            if row.notice_wave.is_some() {
                out.clear = static_group;
            }
            return Ok(());
        }
        // This step may write executions: no device is deleted under them.
        crate::registry::devices::hold_devices(txn).await?;
        let release = releases::Entity::find_by_id(row.release_id.clone())
            .one(txn)
            .await?
            .context("the rollout's release is gone")?;
        let manifest = jobs::stored_manifest(&release)?;
        let manifest = manifest.manifest();
        if state == State::Running {
            if today(now) >= manifest.expires_at {
                let reason = format!("the release's manifest expired at {}", manifest.expires_at);
                finish(txn, row, State::Halted, Some(reason), &Actor::system(), now).await?;
                out.clear = static_group.filter(|_| row.notice_wave.is_some());
                return Ok(());
            }
            self.time_out(txn, row, &spec, now).await?;
            self.retry_due(txn, row, now, out).await?;
            if group.is_some() {
                self.take_in_joiners(txn, row, &spec).await?;
            }
            self.queue(txn, row, &spec, manifest, now, out).await?;
        }
        for _ in 0..4 {
            let waves = load_waves(txn, &row.id).await?;
            let views: Vec<WaveView> = waves
                .iter()
                .enumerate()
                .map(|(i, w)| WaveView {
                    counts: plan::Counts::from(w),
                    threshold_met_at: w.threshold_met_at,
                    approved: !spec.waves[i].approval || w.approved_at.is_some(),
                })
                .collect();
            let state: State = row.state.parse().map_err(anyhow::Error::msg)?;
            let current = usize::try_from(row.current_wave).unwrap_or(0);
            let pending = if state == State::Running {
                pending(txn, &row.id, row.current_wave).await?
            } else {
                0
            };
            let decision = plan::decide(&Situation {
                spec: &spec,
                state,
                current,
                waves: &views,
                pending,
                now,
            });
            match decision {
                Decision::Wait => break,
                Decision::Start => {
                    // A static group's first wave is announced by its notice alone: with
                    // nothing to send device by device and nothing to ration, the
                    // statement writing the targets queues that wave too.
                    let job = row.job_id.clone();
                    let queue_now = (static_group.is_some()
                        && spec.rate_per_minute.is_none()
                        && set_based(txn, manifest, now)
                        && window_open(&spec, now)?)
                    .then_some(fanout::Queueing {
                        job: &job,
                        manifest,
                        now,
                    });
                    let queued = self.start(txn, row, &spec, queue_now, now).await?;
                    if queued > 0 {
                        let to = Some(Counter::State(ExecutionState::Queued));
                        ledger::shift(txn, &row.id, 0, None, to, queued).await?;
                    }
                    self.queue(txn, row, &spec, manifest, now, out).await?;
                }
                Decision::ThresholdMet => {
                    rollout_waves::Entity::update_many()
                        .col_expr(rollout_waves::Column::ThresholdMetAt, Expr::value(now))
                        .filter(rollout_waves::Column::RolloutId.eq(&row.id))
                        .filter(rollout_waves::Column::Wave.eq(row.current_wave))
                        .exec(txn)
                        .await?;
                }
                Decision::Advance { to } => {
                    let to = i32::try_from(to).unwrap_or(i32::MAX);
                    row.current_wave = to;
                    row.state_reason = None;
                    mark_started(txn, &row.id, to, now).await?;
                    audit::append(
                        txn,
                        &Actor::system(),
                        audit::Event {
                            action: "rollout.advance",
                            subject: format!("rollout:{}", row.id),
                            details: serde_json::json!({"wave": to + 1}),
                        },
                    )
                    .await?;
                    self.queue(txn, row, &spec, manifest, now, out).await?;
                }
                Decision::AwaitApproval { wave } => {
                    row.state_reason = Some(format!("awaiting approval of wave {}", wave + 1));
                    break;
                }
                Decision::Halt { reason, .. } => {
                    finish(txn, row, State::Halted, Some(reason), &Actor::system(), now).await?;
                    break;
                }
                Decision::End => {
                    let reason = "its end time passed before it finished".to_owned();
                    finish(
                        txn,
                        row,
                        State::Canceled,
                        Some(reason),
                        &Actor::system(),
                        now,
                    )
                    .await?;
                    break;
                }
                Decision::Complete => {
                    finish(txn, row, State::Completed, None, &Actor::system(), now).await?;
                    break;
                }
            }
        }
        let state: State = row.state.parse().map_err(anyhow::Error::msg)?;
        if state == State::Running {
            if let Some(group) = static_group {
                if row.notice_wave != Some(row.current_wave)
                    && pending(txn, &row.id, row.current_wave).await? == 0
                {
                    let threshold = load_waves(txn, &row.id)
                        .await?
                        .get(usize::try_from(row.current_wave).unwrap_or(0))
                        .map_or(0, |w| u16::try_from(w.threshold).unwrap_or(0));
                    out.notice = Some((group, row.current_wave, threshold));
                }
            }
        } else if row.notice_wave.is_some() {
            out.clear = static_group;
        }
        Ok(())
    }

    /// Snapshots the target: every device's bucket, cut into waves. On PostgreSQL, with
    /// `queue_now`, the first wave's devices are queued as their targets are written;
    /// returns how many were.
    async fn start(
        &self,
        txn: &DatabaseTransaction,
        row: &mut rollouts::Model,
        spec: &NewRollout,
        queue_now: Option<fanout::Queueing<'_>>,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        let sizes: Vec<_> = spec.waves.iter().map(|w| w.size).collect();
        let (cuts, planned, queued) = if txn.get_database_backend() == DatabaseBackend::Postgres {
            // No device row leaving the database: each device hashed once into a snapshot,
            // its buckets' histogram to cut the waves, then every target row.
            let target = target_query(txn, spec, None)
                .await?
                .build(DatabaseBackend::Postgres);
            let histogram = fanout::snapshot(txn, &target, &row.id).await?;
            let cuts = plan::cut_waves(&histogram, &sizes);
            let written = fanout::write_targets(txn, &row.id, &cuts, queue_now).await?;
            (cuts, written.planned, written.queued)
        } else {
            let (cuts, planned) = snapshot_in_pages(txn, spec, &row.id, &sizes).await?;
            (cuts, planned, 0)
        };
        let covered: i64 = planned.iter().sum();
        if txn.get_database_backend() == DatabaseBackend::Postgres && covered > queued {
            // The rows just written have no statistics yet: without them the planner scans
            // the whole target for every queueing batch instead of walking the pending index.
            txn.execute_unprepared("ANALYZE rollout_targets").await?;
        }
        for (i, (cut, planned)) in cuts.iter().zip(&planned).enumerate() {
            rollout_waves::Entity::update_many()
                .col_expr(rollout_waves::Column::Planned, Expr::value(*planned))
                .col_expr(
                    rollout_waves::Column::Threshold,
                    Expr::value(i32::from(cut.threshold)),
                )
                .filter(rollout_waves::Column::RolloutId.eq(&row.id))
                .filter(rollout_waves::Column::Wave.eq(i32::try_from(i).unwrap_or(0)))
                .exec(txn)
                .await?;
        }
        row.state = State::Running.as_str().to_owned();
        row.state_reason = None;
        row.current_wave = 0;
        row.started_at = Some(now);
        mark_started(txn, &row.id, 0, now).await?;
        audit::append(
            txn,
            &Actor::system(),
            audit::Event {
                action: "rollout.start",
                subject: format!("rollout:{}", row.id),
                details: serde_json::json!({"devices": covered, "waves": cuts.iter().map(|c| c.cumulative).collect::<Vec<_>>()}),
            },
        )
        .await?;
        Ok(queued)
    }

    /// Devices that joined the target group since the start join the current wave.
    async fn take_in_joiners(
        &self,
        txn: &DatabaseTransaction,
        row: &rollouts::Model,
        spec: &NewRollout,
    ) -> Result<()> {
        let joiners = joiners(txn, row, spec).await?;
        if joiners.is_empty() {
            return Ok(());
        }
        let n = joiners.len();
        let rows: Vec<TargetRow> = joiners
            .into_iter()
            .filter_map(|id| {
                let b = bucket(&DeviceId::parse(&id).ok()?, &row.id);
                Some(TargetRow {
                    device_id: id,
                    bucket: b,
                    wave: usize::try_from(row.current_wave).unwrap_or(0),
                    status: status::PENDING,
                })
            })
            .collect();
        insert_targets(txn, &row.id, &rows).await?;
        rollout_waves::Entity::update_many()
            .col_expr(
                rollout_waves::Column::Planned,
                Expr::col(rollout_waves::Column::Planned).add(i64::try_from(n).unwrap_or(0)),
            )
            .filter(rollout_waves::Column::RolloutId.eq(&row.id))
            .filter(rollout_waves::Column::Wave.eq(row.current_wave))
            .exec(txn)
            .await?;
        tracing::info!(rollout.id = %row.id, devices = n, wave = row.current_wave + 1, "devices joined the target");
        Ok(())
    }

    /// Queues pending devices of the current and earlier waves, in bucket order, as far as
    /// the maintenance window and the rate limit allow.
    async fn queue(
        &self,
        txn: &DatabaseTransaction,
        row: &mut rollouts::Model,
        spec: &NewRollout,
        manifest: &Manifest,
        now: DateTime<Utc>,
        out: &mut Outbox,
    ) -> Result<()> {
        if row.state != State::Running.as_str() {
            return Ok(());
        }
        if !window_open(spec, now)? {
            return Ok(());
        }
        let mut allowance = u64::MAX;
        if let Some(rate) = spec.rate_per_minute {
            let tokens = plan::refill(rate, row.rate_tokens, row.rate_at, now);
            row.rate_tokens = tokens;
            row.rate_at = Some(now);
            allowance = tokens.floor().max(0.0) as u64;
        }
        let today = today(now);
        let set_based = set_based(txn, manifest, now);
        while allowance > 0 {
            let limit = Ord::min(allowance, if set_based { fanout::BATCH } else { BATCH });
            // On PostgreSQL one statement queues every device the rules surely admit and
            // hands back the rest; elsewhere every pending device is judged here.
            let (picked, mut queued, rest) = if set_based {
                let queue = fanout::Queueing {
                    job: &row.job_id,
                    manifest,
                    now,
                };
                let batch =
                    fanout::queue_batch(txn, &row.id, row.current_wave, limit, queue).await?;
                (batch.picked, batch.queued, batch.undecided)
            } else {
                let rest: Vec<fanout::Picked> = rollout_targets::Entity::find()
                    .filter(rollout_targets::Column::RolloutId.eq(&row.id))
                    .filter(status::is(status::PENDING))
                    .filter(rollout_targets::Column::Wave.lte(row.current_wave))
                    .order_by_asc(rollout_targets::Column::Wave)
                    .order_by_asc(rollout_targets::Column::Bucket)
                    .order_by_asc(rollout_targets::Column::DeviceId)
                    .limit(limit)
                    .all(txn)
                    .await?
                    .into_iter()
                    .map(|t| fanout::Picked {
                        device_id: t.device_id,
                        wave: t.wave,
                        bucket: t.bucket,
                    })
                    .collect();
                (rest.len(), Vec::new(), rest)
            };
            if picked == 0 {
                break;
            }
            let ids: Vec<String> = rest.iter().map(|t| t.device_id.clone()).collect();
            let found = if ids.is_empty() {
                BTreeMap::new()
            } else {
                load_devices(txn, &ids).await?
            };
            let mut executions = Vec::new();
            let mut history = Vec::new();
            let mut queued_here = Vec::new();
            let mut incompatible = Vec::new();
            for target in rest {
                let verdict = match found.get(&target.device_id) {
                    None => Err((
                        "device_deleted".to_owned(),
                        "the device was deleted".to_owned(),
                    )),
                    Some(d) => {
                        let installed = d
                            .firmware_version
                            .as_deref()
                            .and_then(|v| semver::Version::parse(v).ok());
                        rules::check_manifest(
                            manifest,
                            rules::Device {
                                hardware: &d.hardware,
                                installed: installed.as_ref(),
                                security_floor: None,
                            },
                            rules::Request {
                                now: today,
                                force: false,
                            },
                        )
                        .map_err(|e| (e.code().to_owned(), e.to_string()))
                    }
                };
                match verdict {
                    Err((code, detail)) => incompatible.push((target, code, detail)),
                    Ok(()) => {
                        let execution = job_executions::Model::queued(
                            row.job_id.clone(),
                            target.device_id.clone(),
                            now,
                            Some((row.id.clone(), target.wave)),
                        );
                        history.push(jobs::history_row(
                            &execution,
                            None,
                            &found[&target.device_id],
                        ));
                        executions.push(job_executions::ActiveModel::from(execution));
                        queued_here.push(target.device_id.clone());
                        queued.push(target);
                    }
                }
            }
            insert_queued(txn, executions, history).await?;
            delete_targets(txn, &row.id, &queued_here).await?;
            mark_incompatible(txn, &row.id, &incompatible).await?;
            let mut per_wave: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
            for target in &queued {
                per_wave.entry(target.wave).or_default().0 += 1;
            }
            for (target, _, _) in &incompatible {
                per_wave.entry(target.wave).or_default().1 += 1;
            }
            for (wave, (n_queued, n_incompatible)) in per_wave {
                let queued_to = Some(Counter::State(ExecutionState::Queued));
                ledger::shift(txn, &row.id, wave, None, queued_to, n_queued).await?;
                let incompatible_to = Some(Counter::Incompatible);
                ledger::shift(txn, &row.id, wave, None, incompatible_to, n_incompatible).await?;
            }
            if spec.rate_per_minute.is_some() {
                row.rate_tokens -= queued.len() as f64;
            }
            out.queued.extend(
                queued
                    .into_iter()
                    .map(|t| (t.device_id, u16::try_from(t.bucket).unwrap_or(u16::MAX), 1)),
            );
            allowance = allowance.saturating_sub(picked as u64);
        }
        Ok(())
    }

    /// Devices IN_PROGRESS for longer than the timeout become TIMED_OUT.
    async fn time_out(
        &self,
        txn: &DatabaseTransaction,
        row: &rollouts::Model,
        spec: &NewRollout,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let limit = chrono::Duration::seconds(
            i64::try_from(spec.in_progress_timeout_secs).unwrap_or(i64::MAX / 2),
        );
        let stuck = job_executions::Entity::find()
            .filter(job_executions::Column::JobId.eq(&row.job_id))
            .filter(job_executions::Column::State.eq(ExecutionState::InProgress.as_str()))
            .filter(job_executions::Column::StartedAt.lt(now - limit))
            .limit(BATCH)
            .all(txn)
            .await?;
        for execution in stuck {
            let message = format!(
                "no result within the in-progress timeout of {} s",
                spec.in_progress_timeout_secs
            );
            if let Err(refused) = jobs::end_by_service(
                txn,
                &execution,
                ExecutionState::TimedOut,
                ("timed_out", message),
                now,
            )
            .await?
            {
                tracing::warn!(device.id = %execution.device_id, reason = %refused, "could not time out");
            }
        }
        Ok(())
    }

    /// Failed executions whose retry time has come are queued again.
    async fn retry_due(
        &self,
        txn: &DatabaseTransaction,
        row: &rollouts::Model,
        now: DateTime<Utc>,
        out: &mut Outbox,
    ) -> Result<()> {
        let due = job_executions::Entity::find()
            .filter(job_executions::Column::JobId.eq(&row.job_id))
            .filter(job_executions::Column::RetryAt.lte(now))
            .limit(BATCH)
            .all(txn)
            .await?;
        for execution in due {
            if let Some(next) = jobs::requeue(txn, &execution, now).await? {
                out.queued
                    .push((next.device_id.clone(), u16::MAX, next.execution_number));
            }
        }
        Ok(())
    }

    /// Sends what a committed step decided.
    async fn send(&self, row: &rollouts::Model, out: Outbox) -> Result<()> {
        if let Some(group) = out.clear {
            self.bridge.clear_notice(&group).await?;
            rollouts::Entity::update_many()
                .col_expr(
                    rollouts::Column::NoticeWave,
                    Expr::value(Option::<i32>::None),
                )
                .filter(rollouts::Column::Id.eq(&row.id))
                .filter(rollouts::Column::State.ne(State::Running.as_str()))
                .exec(&self.db)
                .await?;
            tracing::info!(rollout.id = %row.id, group = %group, "wave notice cleared");
        }
        if out.notice.is_none() && out.queued.is_empty() {
            return Ok(());
        }
        let template = jobs::template(&self.db, &self.storage, &row.job_id).await?;
        let mut covered = 0;
        if let Some((group, wave, threshold)) = &out.notice {
            let notice = WaveNotice {
                rollout: row.id.clone(),
                job: row.job_id.clone(),
                wave: u32::try_from(*wave).unwrap_or(0),
                threshold: *threshold,
                release: template.release.clone(),
                manifest: template.manifest.clone(),
                url: template.url.clone(),
                url_expires_at: template.url_expires_at,
            };
            self.bridge.publish_notice(group, &notice).await?;
            rollouts::Entity::update_many()
                .col_expr(rollouts::Column::NoticeWave, Expr::value(*wave))
                .filter(rollouts::Column::Id.eq(&row.id))
                .filter(rollouts::Column::State.eq(State::Running.as_str()))
                .filter(rollouts::Column::CurrentWave.eq(*wave))
                .exec(&self.db)
                .await?;
            covered = *threshold;
            tracing::info!(rollout.id = %row.id, group = %group, wave = wave + 1, threshold, "wave notice published");
        }
        for (device, b, execution_number) in out.queued {
            if b < covered && execution_number == 1 {
                continue;
            }
            let Ok(thing) = DeviceId::parse(&device) else {
                continue;
            };
            let mut doc = template.clone();
            doc.execution_number = u64::try_from(execution_number).unwrap_or(1);
            self.bridge
                .notify_next(
                    &thing,
                    serde_json::to_vec(&doc).expect("a job document serialises"),
                )
                .await;
        }
        Ok(())
    }
}

/// Ends a rollout in `to` as `actor` decided, inside the caller's transaction: a halt or
/// cancel cancels what is still queued and every retry still waiting, audits it and records
/// the event for webhooks.
pub(crate) async fn finish(
    txn: &impl ConnectionTrait,
    row: &mut rollouts::Model,
    to: State,
    reason: Option<String>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    row.state = to.as_str().to_owned();
    row.state_reason = reason.clone();
    row.finished_at = Some(now);
    if matches!(to, State::Halted | State::Canceled) {
        cancel_outstanding(
            txn,
            row,
            reason.as_deref().unwrap_or("rollout stopped"),
            now,
        )
        .await?;
    }
    let (action, kind) = match to {
        State::Halted => ("rollout.halt", "rollout.halted"),
        State::Completed => ("rollout.complete", "rollout.completed"),
        _ => ("rollout.cancel", "rollout.canceled"),
    };
    let waves: Vec<serde_json::Value> = load_waves(txn, &row.id)
        .await?
        .iter()
        .map(|w| serde_json::to_value(super::WaveStatus::from(w)).unwrap_or_default())
        .collect();
    audit::append(
        txn,
        actor,
        audit::Event {
            action,
            subject: format!("rollout:{}", row.id),
            details: serde_json::json!({"reason": reason}),
        },
    )
    .await?;
    events::record(
        txn,
        kind,
        Some(&row.id),
        serde_json::json!({
            "rollout": row.id, "name": row.name, "release": row.release_id,
            "state": to, "reason": reason, "wave": row.current_wave + 1, "waves": waves,
        }),
    )
    .await?;
    tracing::info!(rollout.id = %row.id, state = %to, reason = ?reason, "rollout ended");
    Ok(())
}

/// Cancels the job's QUEUED executions and ends every waiting retry as the failure it was.
async fn cancel_outstanding(
    txn: &impl ConnectionTrait,
    row: &rollouts::Model,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let backend = txn.get_database_backend();
    txn.execute_raw(crate::db::statement(
        backend,
        "INSERT INTO execution_history (job_id, device_id, execution_number, from_state, to_state, \
         step, progress, error_code, hardware, firmware_version, at) \
         SELECT e.job_id, e.device_id, e.execution_number, 'QUEUED', 'CANCELED', NULL, NULL, \
         'rollout_stopped', d.hardware, d.firmware_version, $1 \
         FROM job_executions e JOIN devices d ON d.id = e.device_id \
         WHERE e.job_id = $2 AND e.state = 'QUEUED'",
        vec![now.into(), row.job_id.clone().into()],
    ))
    .await?;
    txn.execute_raw(crate::db::statement(
        backend,
        "UPDATE job_executions SET state = 'CANCELED', version = version + 1, updated_at = $1, \
         error_code = 'rollout_stopped', error_message = $2 \
         WHERE job_id = $3 AND state = 'QUEUED'",
        vec![
            now.into(),
            reason.to_owned().into(),
            row.job_id.clone().into(),
        ],
    ))
    .await?;
    rollout_waves::Entity::update_many()
        .col_expr(
            rollout_waves::Column::Canceled,
            Expr::col(rollout_waves::Column::Canceled)
                .add(Expr::col(rollout_waves::Column::Queued)),
        )
        .col_expr(rollout_waves::Column::Queued, Expr::value(0i64))
        .filter(rollout_waves::Column::RolloutId.eq(&row.id))
        .exec(txn)
        .await?;
    let waiting = job_executions::Entity::find()
        .filter(job_executions::Column::JobId.eq(&row.job_id))
        .filter(job_executions::Column::RetryAt.is_not_null())
        .all(txn)
        .await?;
    for execution in waiting {
        let state = ExecutionState::parse(&execution.state).unwrap_or(ExecutionState::Failed);
        if let Some(wave) = execution.wave {
            ledger::shift(
                txn,
                &row.id,
                wave,
                Some(Counter::Retrying),
                Some(Counter::State(state)),
                1,
            )
            .await?;
        }
        job_executions::Entity::update_many()
            .col_expr(
                job_executions::Column::RetryAt,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(job_executions::Column::JobId.eq(&execution.job_id))
            .filter(job_executions::Column::DeviceId.eq(&execution.device_id))
            .exec(txn)
            .await?;
    }
    Ok(())
}

/// The rollout's waves, in order.
pub(crate) async fn load_waves(
    db: &impl ConnectionTrait,
    rollout: &str,
) -> Result<Vec<rollout_waves::Model>, DbErr> {
    rollout_waves::Entity::find()
        .filter(rollout_waves::Column::RolloutId.eq(rollout))
        .order_by_asc(rollout_waves::Column::Wave)
        .all(db)
        .await
}

async fn mark_started(
    txn: &impl ConnectionTrait,
    rollout: &str,
    wave: i32,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    rollout_waves::Entity::update_many()
        .col_expr(rollout_waves::Column::StartedAt, Expr::value(now))
        .filter(rollout_waves::Column::RolloutId.eq(rollout))
        .filter(rollout_waves::Column::Wave.eq(wave))
        .exec(txn)
        .await?;
    Ok(())
}

/// `now` as the manifest rules' timestamp.
fn today(now: DateTime<Utc>) -> Timestamp {
    Timestamp::from_unix(u64::try_from(now.timestamp()).unwrap_or(0))
}

/// Whether the rollout's maintenance window (if any) is open at `now`.
fn window_open(spec: &NewRollout, now: DateTime<Utc>) -> Result<bool> {
    let Some(window) = &spec.maintenance_window else {
        return Ok(true);
    };
    let schedule = plan::WindowSchedule::parse(window).map_err(anyhow::Error::msg)?;
    Ok(schedule.is_open(now))
}

/// Whether devices are queued by the set-based statements of [`fanout`]: on PostgreSQL,
/// while the release has not expired. Those statements restate the per-device rules; the
/// release's expiry, the same for every device, is left to the Rust rules (which refuse
/// every device).
fn set_based(txn: &impl ConnectionTrait, manifest: &Manifest, now: DateTime<Utc>) -> bool {
    txn.get_database_backend() == DatabaseBackend::Postgres && today(now) < manifest.expires_at
}

/// Targets of waves up to `current` not yet queued.
async fn pending(txn: &impl ConnectionTrait, rollout: &str, current: i32) -> Result<u64, DbErr> {
    rollout_targets::Entity::find()
        .filter(rollout_targets::Column::RolloutId.eq(rollout))
        .filter(status::is(status::PENDING))
        .filter(rollout_targets::Column::Wave.lte(current))
        .count(txn)
        .await
}

/// The target snapshot without set-based statements (SQLite): two passes over the target,
/// a page at a time, so memory stays flat whatever the fleet's size. The first counts the
/// buckets to cut the waves, the second writes each device's target row. Returns the cuts
/// and each wave's pending devices.
async fn snapshot_in_pages(
    txn: &DatabaseTransaction,
    spec: &NewRollout,
    rollout: &str,
    sizes: &[super::spec::Size],
) -> Result<(Vec<plan::Cut>, Vec<i64>)> {
    let mut histogram = plan::Histogram::default();
    let mut after = None;
    loop {
        let page = target_page(txn, spec, after.as_deref()).await?;
        let Some(last) = page.last().cloned() else {
            break;
        };
        for id in &page {
            if let Ok(device) = DeviceId::parse(id) {
                histogram.add(bucket(&device, rollout));
            }
        }
        after = Some(last);
    }
    let cuts = plan::cut_waves(&histogram, sizes);
    let inside = cuts.last().map_or(0, |c| c.threshold);
    // Each wave's planned size counts the rows written (the pages are read statement by
    // statement, so a device registered or deleted meanwhile is counted as written).
    let mut planned = vec![0i64; cuts.len()];
    let mut after = None;
    loop {
        let page = target_page(txn, spec, after.as_deref()).await?;
        let Some(last) = page.last().cloned() else {
            break;
        };
        let rows: Vec<TargetRow> = page
            .into_iter()
            .filter_map(|id| {
                let b = bucket(&DeviceId::parse(&id).ok()?, rollout);
                Some(if b < inside {
                    TargetRow {
                        device_id: id,
                        bucket: b,
                        wave: plan::wave_of(b, &cuts),
                        status: status::PENDING,
                    }
                } else {
                    TargetRow {
                        device_id: id,
                        bucket: b,
                        wave: cuts.len(),
                        status: status::OUTSIDE,
                    }
                })
            })
            .collect();
        for r in rows.iter().filter(|r| r.status == status::PENDING) {
            planned[r.wave] += 1;
        }
        insert_targets(txn, rollout, &rows).await?;
        after = Some(last);
    }
    Ok((cuts, planned))
}

/// The ids of the target's registered devices that `rollout` has neither among its
/// targets nor ever queued: those that joined its target group since the start.
async fn joiners(
    txn: &impl ConnectionTrait,
    rollout: &rollouts::Model,
    spec: &NewRollout,
) -> Result<Vec<String>> {
    let query = target_query(txn, spec, Some(rollout)).await?;
    Ok(query.into_tuple::<String>().all(txn).await?)
}

/// Devices of the target read at a time when the rollout starts.
const TARGET_PAGE: u64 = 10_000;

/// The next page of the target's device ids after `after`, in id order.
async fn target_page(
    txn: &impl ConnectionTrait,
    spec: &NewRollout,
    after: Option<&str>,
) -> Result<Vec<String>> {
    let mut query = target_query(txn, spec, None)
        .await?
        .order_by_asc(devices::Column::Id)
        .limit(TARGET_PAGE);
    if let Some(after) = after {
        query = query.filter(devices::Column::Id.gt(after));
    }
    Ok(query.into_tuple::<String>().all(txn).await?)
}

/// The ids of the target's devices, as a query; with `joined`, only those that rollout has
/// neither among its targets nor ever queued (its job's history has no row for them: the
/// history outlives a deleted device's executions, so a device deleted and registered again
/// under the same id does not join twice).
async fn target_query(
    txn: &impl ConnectionTrait,
    spec: &NewRollout,
    joined: Option<&rollouts::Model>,
) -> Result<sea_orm::Select<devices::Entity>> {
    let mut query = devices::Entity::find()
        .select_only()
        .column(devices::Column::Id);
    match &spec.target {
        Target::Group(name) => {
            let condition = crate::registry::groups::membership(txn, name)
                .await
                .with_context(|| format!("reading group {name}"))?;
            query = query.filter(condition);
        }
        Target::Devices(ids) => {
            if joined.is_some() {
                // A list of devices has no joiners.
                return Ok(query.filter(Expr::val(false)));
            }
            query = query.filter(devices::Column::Id.is_in(ids.iter().cloned()));
        }
    }
    if let Some(rollout) = joined {
        // Anti-joins (`NOT EXISTS`), which PostgreSQL plans whatever the sizes, where
        // `NOT IN` falls back to a scan per device once its list outgrows `work_mem`.
        query = query
            .filter(none_for_device::<rollout_targets::Entity>(
                rollout_targets::Column::RolloutId,
                rollout.id.clone(),
                rollout_targets::Column::DeviceId,
            ))
            .filter(none_for_device::<execution_history::Entity>(
                execution_history::Column::JobId,
                rollout.job_id.clone(),
                execution_history::Column::DeviceId,
            ));
    }
    Ok(query)
}

/// `NOT EXISTS` a row of `E` whose `owner` is `id` and whose `device` is the device being
/// selected (`devices.id`).
fn none_for_device<E: EntityTrait>(
    owner: E::Column,
    id: String,
    device: E::Column,
) -> sea_orm::sea_query::SimpleExpr {
    Expr::exists(
        SqlQuery::select()
            .expr(Expr::val(1))
            .from(E::default())
            .and_where(Expr::col((E::default(), owner)).eq(id))
            .and_where(
                Expr::col((E::default(), device)).equals((devices::Entity, devices::Column::Id)),
            )
            .to_owned(),
    )
    .not()
}

/// A device's place in a rollout, as written when it starts or joins.
struct TargetRow {
    device_id: String,
    bucket: u16,
    wave: usize,
    status: &'static str,
}

/// Inserts target rows of `rollout`: one JSON-carried statement on PostgreSQL, chunked
/// inserts elsewhere.
async fn insert_targets(
    txn: &impl ConnectionTrait,
    rollout: &str,
    rows: &[TargetRow],
) -> Result<(), DbErr> {
    let wave = |r: &TargetRow| i32::try_from(r.wave).unwrap_or(i32::MAX);
    if txn.get_database_backend() != DatabaseBackend::Postgres {
        for chunk in rows.chunks(CHUNK) {
            let models = chunk.iter().map(|r| rollout_targets::ActiveModel {
                rollout_id: Set(rollout.to_owned()),
                device_id: Set(r.device_id.clone()),
                bucket: Set(i32::from(r.bucket)),
                wave: Set(wave(r)),
                status: Set(r.status.to_owned()),
                reason: Set(None),
                detail: Set(None),
            });
            rollout_targets::Entity::insert_many(models)
                .exec_without_returning(txn)
                .await?;
        }
        return Ok(());
    }
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({"rollout_id": rollout, "device_id": r.device_id,
                "bucket": r.bucket, "wave": wave(r), "status": r.status})
        })
        .collect();
    for chunk in json.chunks(50_000) {
        crate::db::insert_json_rows(
            txn,
            "rollout_targets",
            &[
                ("rollout_id", "text"),
                ("device_id", "text"),
                ("bucket", "integer"),
                ("wave", "integer"),
                ("status", "text"),
            ],
            chunk,
        )
        .await?;
    }
    Ok(())
}

/// The registered devices among `ids` (missing ones were deleted), by id.
async fn load_devices(
    txn: &impl ConnectionTrait,
    ids: &[String],
) -> Result<BTreeMap<String, devices::Model>, DbErr> {
    let mut found = BTreeMap::new();
    if txn.get_database_backend() == DatabaseBackend::Postgres {
        // One join against the pending targets instead of thousands of bound ids.
        let wanted = serde_json::to_string(ids).expect("ids serialise");
        let rows = devices::Entity::find()
            .from_raw_sql(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                "SELECT d.* FROM devices d JOIN json_array_elements_text($1::json) AS w(id) \
                 ON d.id = w.id",
                vec![wanted.into()],
            ))
            .all(txn)
            .await?;
        for d in rows {
            found.insert(d.id.clone(), d);
        }
        return Ok(found);
    }
    for chunk in ids.chunks(CHUNK) {
        for d in devices::Entity::find()
            .filter(devices::Column::Id.is_in(chunk.iter().cloned()))
            .all(txn)
            .await?
        {
            found.insert(d.id.clone(), d);
        }
    }
    Ok(found)
}

/// Inserts queued executions and their first history rows.
async fn insert_queued(
    txn: &impl ConnectionTrait,
    executions: Vec<job_executions::ActiveModel>,
    history: Vec<execution_history::ActiveModel>,
) -> Result<(), DbErr> {
    if txn.get_database_backend() != DatabaseBackend::Postgres {
        for chunk in executions.chunks(CHUNK) {
            job_executions::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(txn)
                .await?;
        }
        for chunk in history.chunks(CHUNK) {
            execution_history::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(txn)
                .await?;
        }
        return Ok(());
    }
    let executions: Vec<serde_json::Value> = executions
        .into_iter()
        .map(|e| {
            let e = e.try_into_model().expect("every execution field is set");
            serde_json::json!({"job_id": e.job_id, "device_id": e.device_id,
                "execution_number": e.execution_number, "version": e.version, "state": e.state,
                "queued_at": e.queued_at, "updated_at": e.updated_at,
                "rollout_id": e.rollout_id, "wave": e.wave})
        })
        .collect();
    crate::db::insert_json_rows(
        txn,
        "job_executions",
        &[
            ("job_id", "text"),
            ("device_id", "text"),
            ("execution_number", "bigint"),
            ("version", "bigint"),
            ("state", "text"),
            ("queued_at", "timestamptz"),
            ("updated_at", "timestamptz"),
            ("rollout_id", "text"),
            ("wave", "integer"),
        ],
        &executions,
    )
    .await?;
    let history: Vec<serde_json::Value> = history
        .into_iter()
        .map(|h| {
            serde_json::json!({"job_id": h.job_id.unwrap(), "device_id": h.device_id.unwrap(),
                "execution_number": h.execution_number.unwrap(), "to_state": h.to_state.unwrap(),
                "hardware": h.hardware.unwrap(), "firmware_version": h.firmware_version.unwrap(),
                "at": h.at.unwrap()})
        })
        .collect();
    crate::db::insert_json_rows(
        txn,
        "execution_history",
        &[
            ("job_id", "text"),
            ("device_id", "text"),
            ("execution_number", "bigint"),
            ("to_state", "text"),
            ("hardware", "text"),
            ("firmware_version", "text"),
            ("at", "timestamptz"),
        ],
        &history,
    )
    .await
}

/// Marks targets as incompatible, each with its rule's code and message.
async fn mark_incompatible(
    txn: &impl ConnectionTrait,
    rollout: &str,
    targets: &[(fanout::Picked, String, String)],
) -> Result<(), DbErr> {
    if targets.is_empty() {
        return Ok(());
    }
    if txn.get_database_backend() == DatabaseBackend::Postgres {
        let rows: Vec<serde_json::Value> = targets
            .iter()
            .map(|(t, code, detail)| {
                serde_json::json!({"device_id": t.device_id, "reason": code, "detail": detail})
            })
            .collect();
        txn.execute_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            "UPDATE rollout_targets t SET status = $2, reason = x.reason, detail = x.detail \
             FROM json_to_recordset($3::json) AS x(device_id text, reason text, detail text) \
             WHERE t.rollout_id = $1 AND t.device_id = x.device_id",
            vec![
                rollout.to_owned().into(),
                status::INCOMPATIBLE.into(),
                serde_json::to_string(&rows).expect("rows serialise").into(),
            ],
        ))
        .await?;
        return Ok(());
    }
    for (target, code, detail) in targets {
        rollout_targets::Entity::update_many()
            .col_expr(
                rollout_targets::Column::Status,
                Expr::value(status::INCOMPATIBLE),
            )
            .col_expr(rollout_targets::Column::Reason, Expr::value(code.clone()))
            .col_expr(rollout_targets::Column::Detail, Expr::value(detail.clone()))
            .filter(rollout_targets::Column::RolloutId.eq(rollout))
            .filter(rollout_targets::Column::DeviceId.eq(&target.device_id))
            .exec(txn)
            .await?;
    }
    Ok(())
}

/// Deletes the targets of devices just queued: their executions hold their places.
async fn delete_targets(
    txn: &impl ConnectionTrait,
    rollout: &str,
    ids: &[String],
) -> Result<(), DbErr> {
    if txn.get_database_backend() == DatabaseBackend::Postgres {
        if ids.is_empty() {
            return Ok(());
        }
        txn.execute_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            "DELETE FROM rollout_targets t USING json_array_elements_text($2::json) AS w(id) \
             WHERE t.rollout_id = $1 AND t.device_id = w.id",
            vec![
                rollout.to_owned().into(),
                serde_json::to_string(ids).expect("ids serialise").into(),
            ],
        ))
        .await?;
        return Ok(());
    }
    for chunk in ids.chunks(CHUNK) {
        rollout_targets::Entity::delete_many()
            .filter(rollout_targets::Column::RolloutId.eq(rollout))
            .filter(rollout_targets::Column::DeviceId.is_in(chunk.iter().cloned()))
            .exec(txn)
            .await?;
    }
    Ok(())
}
