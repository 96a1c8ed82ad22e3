//! Rollouts: one release installed on a target in staged waves that halt themselves. A
//! person creates, pauses, resumes, cancels and approves them here (each audited); the
//! [`engine`] advances them; the [`ledger`] keeps each wave's counters in step with every
//! execution transition, so [`status`] reads counters and never scans executions.

pub mod engine;
mod fanout;
pub mod ledger;
pub mod plan;
pub mod spec;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use serde::Serialize;

use self::plan::State;
use self::spec::{Invalid, NewRollout, Target};
use crate::audit::{self, Actor, Event};
use crate::registry::entities::{
    devices, jobs, releases, rollout_targets, rollout_waves, rollouts,
};

/// Most incompatible devices listed in a status.
pub const LISTED_INCOMPATIBLE: u64 = 100;

/// Why a rollout operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// Something it names does not exist.
    #[error("{kind} {id} not found")]
    NotFound {
        /// What.
        kind: &'static str,
        /// Which.
        id: String,
    },
    /// Not possible in the rollout's state.
    #[error("{0}")]
    Conflict(String),
    /// The release cannot be rolled out (its manifest expired).
    #[error("{0}")]
    Unusable(String),
    /// The database failed.
    #[error("database error")]
    Db(#[from] DbErr),
    /// Reading the target failed.
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
}

impl crate::db::Conflict for Error {
    fn is_transient_conflict(&self) -> bool {
        match self {
            Error::Db(e) => e.is_transient_conflict(),
            Error::Registry(e) => e.is_transient_conflict(),
            _ => false,
        }
    }
}

/// A rollout as the API lists it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Rollout {
    /// Rollout id.
    pub id: String,
    /// Name.
    pub name: String,
    /// The release installed.
    pub release: String,
    /// The job its executions belong to.
    pub job: String,
    /// Where it stands.
    pub state: State,
    /// Why (the tripped threshold, the approval it waits for, who paused it).
    pub reason: Option<String>,
    /// The current wave, from 1.
    pub wave: u32,
    /// Number of waves.
    pub waves: u32,
    /// Who created it (token id).
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When its first wave started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

impl Rollout {
    fn from_row(row: rollouts::Model) -> Self {
        let waves = serde_json::from_str::<NewRollout>(&row.spec)
            .map(|s| s.waves.len())
            .unwrap_or(0);
        Rollout {
            state: row.state.parse().unwrap_or(State::Canceled),
            id: row.id,
            name: row.name,
            release: row.release_id,
            job: row.job_id,
            reason: row.state_reason,
            wave: u32::try_from(row.current_wave).unwrap_or(0) + 1,
            waves: u32::try_from(waves).unwrap_or(0),
            created_by: row.created_by,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
        }
    }
}

/// One wave's progress.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct WaveStatus {
    /// From 1.
    pub wave: u32,
    /// Its bucket threshold (devices below it belong to it or an earlier wave).
    pub threshold: i32,
    /// How many of its devices are in each state.
    #[serde(flatten)]
    pub counts: plan::Counts,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// When its success threshold was met (its soak started).
    pub threshold_met_at: Option<DateTime<Utc>>,
    /// Who approved it, when gated.
    pub approved_by: Option<String>,
}

impl From<&rollout_waves::Model> for WaveStatus {
    fn from(w: &rollout_waves::Model) -> Self {
        WaveStatus {
            wave: u32::try_from(w.wave).unwrap_or(0) + 1,
            threshold: w.threshold,
            counts: plan::Counts::from(w),
            started_at: w.started_at,
            threshold_met_at: w.threshold_met_at,
            approved_by: w.approved_by.clone(),
        }
    }
}

/// A device left out because it cannot take the release.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Incompatible {
    /// The device.
    pub device: String,
    /// Stable code, e.g. `incompatible_hardware`, `not_newer`, `minimum_version_not_met`.
    pub reason: String,
    /// The detail.
    pub detail: String,
}

/// A rollout with every wave's counters.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Status {
    /// The rollout.
    #[serde(flatten)]
    pub rollout: Rollout,
    /// Its request.
    pub spec: NewRollout,
    /// Each wave.
    pub wave_status: Vec<WaveStatus>,
    /// Devices left out as incompatible (the first [`LISTED_INCOMPATIBLE`]).
    pub incompatible: Vec<Incompatible>,
}

/// Creates a rollout in SCHEDULED; the engine starts it at its start time.
pub async fn create(
    db: &DatabaseConnection,
    actor: &Actor,
    new: NewRollout,
) -> Result<Rollout, Error> {
    new.check()?;
    let txn = db.begin().await?;
    let release = releases::Entity::find_by_id(new.release.clone())
        .one(&txn)
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "release",
            id: new.release.clone(),
        })?;
    let manifest =
        crate::jobs::stored_manifest(&release).map_err(|e| Error::Unusable(e.to_string()))?;
    let now = crate::db::now();
    let expires = manifest.manifest().expires_at;
    if u64::try_from(now.timestamp()).unwrap_or(0) >= expires.unix() {
        return Err(Error::Unusable(format!(
            "release {} expired at {expires}: sign a new manifest",
            release.id
        )));
    }
    match &new.target {
        Target::Group(name) => {
            crate::registry::groups::get(&txn, name).await?;
        }
        Target::Devices(ids) => {
            let found: Vec<String> = devices::Entity::find()
                .select_only()
                .column(devices::Column::Id)
                .filter(devices::Column::Id.is_in(ids.iter().cloned()))
                .into_tuple()
                .all(&txn)
                .await?;
            if found.len() != ids.len() {
                let found: std::collections::HashSet<_> = found.into_iter().collect();
                let missing: Vec<_> = ids
                    .iter()
                    .filter(|i| !found.contains(*i))
                    .take(10)
                    .cloned()
                    .collect();
                return Err(Error::NotFound {
                    kind: "device",
                    id: missing.join(", "),
                });
            }
        }
    }
    let id = uuid::Uuid::now_v7().to_string();
    let job = uuid::Uuid::now_v7().to_string();
    jobs::Entity::insert(jobs::ActiveModel::from(jobs::Model {
        id: job.clone(),
        release_id: release.id.clone(),
        rollout_id: Some(id.clone()),
        created_by: actor.id.clone(),
        created_at: now,
    }))
    .exec_without_returning(&txn)
    .await?;
    let (target_kind, target) = match &new.target {
        Target::Group(g) => ("group", g.clone()),
        Target::Devices(d) => ("devices", serde_json::to_string(d).expect("ids serialise")),
    };
    let row = rollouts::Model {
        id: id.clone(),
        name: new.display_name().to_owned(),
        release_id: release.id.clone(),
        job_id: job,
        target_kind: target_kind.to_owned(),
        target,
        spec: serde_json::to_string(&new).expect("a rollout request serialises"),
        state: State::Scheduled.as_str().to_owned(),
        state_reason: None,
        current_wave: 0,
        notice_wave: None,
        rate_tokens: 0.0,
        rate_at: None,
        next_tick_at: now,
        created_by: actor.id.clone(),
        created_at: now,
        started_at: None,
        finished_at: None,
    };
    rollouts::Entity::insert(rollouts::ActiveModel::from(row.clone()))
        .exec_without_returning(&txn)
        .await?;
    let waves: Vec<_> = (0..new.waves.len())
        .map(|i| {
            rollout_waves::ActiveModel::from(rollout_waves::Model {
                rollout_id: id.clone(),
                wave: i32::try_from(i).unwrap_or(0),
                planned: 0,
                threshold: 0,
                queued: 0,
                in_progress: 0,
                succeeded: 0,
                failed: 0,
                rejected: 0,
                timed_out: 0,
                canceled: 0,
                removed: 0,
                retrying: 0,
                incompatible: 0,
                started_at: None,
                threshold_met_at: None,
                approved_by: None,
                approved_at: None,
            })
        })
        .collect();
    rollout_waves::Entity::insert_many(waves)
        .exec_without_returning(&txn)
        .await?;
    audit::append(
        &txn,
        actor,
        Event {
            action: "rollout.create",
            subject: format!("rollout:{id}"),
            details: serde_json::to_value(&new).unwrap_or_default(),
        },
    )
    .await?;
    txn.commit().await?;
    Ok(Rollout::from_row(row))
}

/// The newest rollouts first, optionally only those in `state`.
pub async fn list(
    db: &impl ConnectionTrait,
    state: Option<State>,
    limit: u64,
) -> Result<Vec<Rollout>, Error> {
    let mut query = rollouts::Entity::find().order_by_desc(rollouts::Column::CreatedAt);
    if let Some(state) = state {
        query = query.filter(rollouts::Column::State.eq(state.as_str()));
    }
    Ok(query
        .limit(limit)
        .all(db)
        .await?
        .into_iter()
        .map(Rollout::from_row)
        .collect())
}

async fn row(db: &impl ConnectionTrait, id: &str) -> Result<rollouts::Model, Error> {
    rollouts::Entity::find_by_id(id.to_owned())
        .one(db)
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "rollout",
            id: id.to_owned(),
        })
}

/// The rollout with its waves' counters and the first incompatible devices: a handful of
/// indexed reads, whatever the number of executions.
pub async fn status(db: &impl ConnectionTrait, id: &str) -> Result<Status, Error> {
    let row = row(db, id).await?;
    let spec: NewRollout = serde_json::from_str(&row.spec)
        .map_err(|e| DbErr::Custom(format!("stored spec of rollout {id}: {e}")))?;
    let waves = engine::load_waves(db, id).await?;
    let incompatible = rollout_targets::Entity::find()
        .filter(rollout_targets::Column::RolloutId.eq(id))
        .filter(engine::status::is(engine::status::INCOMPATIBLE))
        .order_by_asc(rollout_targets::Column::DeviceId)
        .limit(LISTED_INCOMPATIBLE)
        .all(db)
        .await?
        .into_iter()
        .map(|t| Incompatible {
            device: t.device_id,
            reason: t.reason.unwrap_or_default(),
            detail: t.detail.unwrap_or_default(),
        })
        .collect();
    Ok(Status {
        rollout: Rollout::from_row(row),
        spec,
        wave_status: waves.iter().map(WaveStatus::from).collect(),
        incompatible,
    })
}

/// A person's action on a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop queueing and advancing; clear the notice.
    Pause,
    /// Continue after a pause.
    Resume,
    /// Stop for good, canceling what is queued.
    Cancel,
    /// Approve a gated wave (the next one when none is named).
    Approve(Option<u32>),
}

/// Applies `action` by `actor`, audited; the engine acts on it at its next tick. A
/// transaction PostgreSQL aborted for a conflict (a cancel takes executions that device
/// reports take too) runs again.
pub async fn act(
    db: &DatabaseConnection,
    actor: &Actor,
    id: &str,
    action: Action,
) -> Result<Rollout, Error> {
    crate::db::retry_conflicts("a rollout action", || act_once(db, actor, id, action)).await
}

async fn act_once(
    db: &DatabaseConnection,
    actor: &Actor,
    id: &str,
    action: Action,
) -> Result<Rollout, Error> {
    let txn = db.begin().await?;
    let mut row = rollouts::Entity::find_by_id(id.to_owned())
        .lock_exclusive()
        .one(&txn)
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "rollout",
            id: id.to_owned(),
        })?;
    let state: State = row.state.parse().map_err(DbErr::Custom)?;
    let now = crate::db::now();
    let details;
    let verb;
    match action {
        Action::Pause => {
            if !matches!(state, State::Running | State::Scheduled) {
                return Err(Error::Conflict(format!(
                    "a {state} rollout cannot be paused"
                )));
            }
            row.state = State::Paused.as_str().to_owned();
            row.state_reason = Some(format!("paused by token {}", actor.id));
            verb = "rollout.pause";
            details = serde_json::json!({"from": state});
        }
        Action::Resume => {
            if state != State::Paused {
                return Err(Error::Conflict(format!(
                    "a {state} rollout cannot be resumed"
                )));
            }
            let to = if row.started_at.is_some() {
                State::Running
            } else {
                State::Scheduled
            };
            row.state = to.as_str().to_owned();
            row.state_reason = None;
            verb = "rollout.resume";
            details = serde_json::json!({"to": to});
        }
        Action::Cancel => {
            if state.is_final() {
                return Err(Error::Conflict(format!(
                    "a {state} rollout cannot be canceled"
                )));
            }
            let reason = format!("canceled by token {}", actor.id);
            engine::finish(&txn, &mut row, State::Canceled, Some(reason), actor, now).await?;
            verb = "";
            details = serde_json::Value::Null;
        }
        Action::Approve(wave) => {
            if state.is_final() {
                return Err(Error::Conflict(format!(
                    "a {state} rollout needs no approval"
                )));
            }
            let spec: NewRollout = serde_json::from_str(&row.spec)
                .map_err(|e| DbErr::Custom(format!("stored spec: {e}")))?;
            let index = match wave {
                Some(w) if w >= 1 => w - 1,
                Some(_) => return Err(Error::Conflict("waves are numbered from 1".into())),
                None if row.started_at.is_none() => 0,
                None => u32::try_from(row.current_wave).unwrap_or(0) + 1,
            };
            let Some(gated) = spec.waves.get(index as usize) else {
                return Err(Error::Conflict(format!(
                    "the rollout has no wave {}",
                    index + 1
                )));
            };
            if !gated.approval {
                return Err(Error::Conflict(format!(
                    "wave {} has no approval gate",
                    index + 1
                )));
            }
            let started =
                row.started_at.is_some() && i64::from(index) <= i64::from(row.current_wave);
            if started {
                return Err(Error::Conflict(format!(
                    "wave {} has already started",
                    index + 1
                )));
            }
            let updated = rollout_waves::Entity::update_many()
                .col_expr(
                    rollout_waves::Column::ApprovedBy,
                    Expr::value(actor.id.clone()),
                )
                .col_expr(rollout_waves::Column::ApprovedAt, Expr::value(now))
                .filter(rollout_waves::Column::RolloutId.eq(id))
                .filter(rollout_waves::Column::Wave.eq(i32::try_from(index).unwrap_or(0)))
                .filter(rollout_waves::Column::ApprovedAt.is_null())
                .exec(&txn)
                .await?;
            if updated.rows_affected == 0 {
                return Err(Error::Conflict(format!(
                    "wave {} is already approved",
                    index + 1
                )));
            }
            verb = "rollout.approve";
            details = serde_json::json!({"wave": index + 1});
        }
    }
    row.next_tick_at = now;
    rollouts::Entity::update(rollouts::ActiveModel::from(row.clone()).reset_all())
        .exec(&txn)
        .await?;
    if !verb.is_empty() {
        audit::append(
            &txn,
            actor,
            Event {
                action: verb,
                subject: format!("rollout:{id}"),
                details,
            },
        )
        .await?;
    }
    txn.commit().await?;
    Ok(Rollout::from_row(row))
}
