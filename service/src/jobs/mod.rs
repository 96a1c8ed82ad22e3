//! Jobs and their executions: a job installs one release on its targets; each device's
//! execution moves through the legal transitions of `protocol::jobs`, driven by what the
//! device reports in `reported.ota`. Every transition is appended to the history with the
//! device's details; a duplicate or out-of-order report (QoS 1 redelivery) changes nothing.

use fleetwave_artifacts::protocol::jobs::{ExecutionState, JobDocument, Step};
use fleetwave_artifacts::protocol::report::OtaReport;
use fleetwave_artifacts::{DeviceId, SignedManifest};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use serde::Serialize;

use crate::audit::{self, Actor, Event};
use crate::registry::entities::{devices, execution_history, job_executions, jobs, releases};
use crate::rollouts::ledger::{self, Counter};
use crate::storage::Storage;

/// Why a job operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such thing.
    #[error("{kind} {id} not found")]
    NotFound {
        /// What.
        kind: &'static str,
        /// Which.
        id: String,
    },
    /// The database failed.
    #[error("database error")]
    Db(#[from] DbErr),
    /// Making the download URL failed.
    #[error("making a download URL")]
    Url(#[source] anyhow::Error),
}

/// Why a reported transition was not applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The device reported on a job it has no execution of.
    #[error("no execution of job {job} for this device")]
    NoExecution {
        /// The job named.
        job: String,
    },
    /// Not a legal transition.
    #[error("{from} cannot become {to}")]
    Illegal {
        /// Stored state.
        from: ExecutionState,
        /// Reported state.
        to: ExecutionState,
    },
    /// An IN_PROGRESS report no further along than what is stored (a duplicate or an
    /// out-of-order redelivery).
    #[error("not further along than the stored progress")]
    Stale,
    /// SUCCEEDED reported while `reported.firmware.version` is not the release's: success
    /// means the new image booted and committed, never just downloaded.
    #[error("SUCCEEDED reported, but the device runs {installed:?}, not the release's {release}")]
    NotInstalled {
        /// What the device reports it runs.
        installed: Option<String>,
        /// The release's version.
        release: String,
    },
}

/// A transition a device (or the service) asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The new state.
    pub to: ExecutionState,
    /// Its step, when in progress.
    pub step: Option<Step>,
    /// Percent of the step.
    pub progress: Option<u8>,
    /// Error code and message, when it failed.
    pub error: Option<(String, String)>,
}

impl From<&OtaReport> for Change {
    fn from(r: &OtaReport) -> Self {
        Change {
            to: r.state,
            step: r.step,
            progress: r.progress,
            error: r
                .error
                .as_ref()
                .map(|e| (e.code.clone(), e.message.clone())),
        }
    }
}

/// A job as the API shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Job {
    /// Job id.
    pub id: String,
    /// Release to install.
    pub release: String,
    /// The rollout it belongs to.
    pub rollout: Option<String>,
    /// Created by (token id).
    pub created_by: String,
    /// When.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<jobs::Model> for Job {
    fn from(m: jobs::Model) -> Self {
        Job {
            id: m.id,
            release: m.release_id,
            rollout: m.rollout_id,
            created_by: m.created_by,
            created_at: m.created_at,
        }
    }
}

/// Creates a job installing `release` on one device, its execution QUEUED.
pub async fn create_for_device(
    db: &DatabaseConnection,
    actor: &Actor,
    release: &str,
    device: &str,
) -> Result<Job, Error> {
    let txn = db.begin().await?;
    crate::registry::devices::hold_devices(&txn).await?;
    if releases::Entity::find_by_id(release.to_owned())
        .one(&txn)
        .await?
        .is_none()
    {
        return Err(Error::NotFound {
            kind: "release",
            id: release.to_owned(),
        });
    }
    let Some(dev) = devices::Entity::find_by_id(device.to_owned())
        .one(&txn)
        .await?
    else {
        return Err(Error::NotFound {
            kind: "device",
            id: device.to_owned(),
        });
    };
    let now = crate::db::now();
    let job = jobs::Model {
        id: uuid::Uuid::now_v7().to_string(),
        release_id: release.to_owned(),
        rollout_id: None,
        created_by: actor.id.clone(),
        created_at: now,
    };
    jobs::Entity::insert(jobs::ActiveModel::from(job.clone()))
        .exec_without_returning(&txn)
        .await?;
    let execution = job_executions::Model::queued(job.id.clone(), device.to_owned(), now, None);
    job_executions::Entity::insert(job_executions::ActiveModel::from(execution.clone()))
        .exec_without_returning(&txn)
        .await?;
    record_history(&txn, &execution, None, &dev).await?;
    audit::append(
        &txn,
        actor,
        Event {
            action: "job.create",
            subject: format!("job:{}", job.id),
            details: serde_json::json!({"release": release, "device": device}),
        },
    )
    .await?;
    txn.commit().await?;
    Ok(job.into())
}

pub(crate) async fn record_history(
    txn: &impl ConnectionTrait,
    execution: &job_executions::Model,
    from: Option<&str>,
    device: &devices::Model,
) -> Result<(), DbErr> {
    execution_history::Entity::insert(history_row(execution, from, device))
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

/// The history row of `execution` having just come from state `from` (none when it was
/// queued), with `device`'s hardware and firmware at that moment.
pub(crate) fn history_row(
    execution: &job_executions::Model,
    from: Option<&str>,
    device: &devices::Model,
) -> execution_history::ActiveModel {
    execution_history::ActiveModel {
        id: sea_orm::ActiveValue::NotSet,
        job_id: Set(execution.job_id.clone()),
        device_id: Set(execution.device_id.clone()),
        execution_number: Set(execution.execution_number),
        from_state: Set(from.map(str::to_owned)),
        to_state: Set(execution.state.clone()),
        step: Set(execution.step.clone()),
        progress: Set(execution.progress),
        error_code: Set(execution.error_code.clone()),
        hardware: Set(device.hardware.clone()),
        firmware_version: Set(device.firmware_version.clone()),
        at: Set(execution.updated_at),
    }
}

/// The pure rule of [`transition`]: may `change` follow an execution in `from`, whose stored
/// (step, progress) is `stored`? Illegal moves are refused, and so is an IN_PROGRESS report no
/// further along than the stored one (a duplicate or an out-of-order redelivery).
pub fn admit(
    from: ExecutionState,
    stored: (Option<Step>, i32),
    change: &Change,
) -> Result<(), Refused> {
    if !from.can_become(change.to) {
        return Err(Refused::Illegal {
            from,
            to: change.to,
        });
    }
    if from == ExecutionState::InProgress && change.to == ExecutionState::InProgress {
        let reported = (change.step, i32::from(change.progress.unwrap_or(0)));
        if reported <= stored {
            return Err(Refused::Stale);
        }
    }
    Ok(())
}

/// Applies `change` to the device's execution of `job`, inside the caller's transaction;
/// a refused change leaves everything as it was.
pub async fn transition(
    txn: &impl ConnectionTrait,
    job: &str,
    device: &DeviceId,
    change: &Change,
) -> Result<Result<job_executions::Model, Refused>, DbErr> {
    let Some(current) =
        job_executions::Entity::find_by_id((job.to_owned(), device.as_str().to_owned()))
            .lock_exclusive()
            .one(txn)
            .await?
    else {
        return Ok(Err(Refused::NoExecution {
            job: job.to_owned(),
        }));
    };
    let from = ExecutionState::parse(&current.state).ok_or_else(|| {
        DbErr::Custom(format!(
            "stored execution state {:?} is unknown",
            current.state
        ))
    })?;
    let stored = (
        current.step.as_deref().and_then(Step::parse),
        current.progress.unwrap_or(0),
    );
    if let Err(refused) = admit(from, stored, change) {
        return Ok(Err(refused));
    }
    let dev = devices::Entity::find_by_id(device.as_str().to_owned())
        .one(txn)
        .await?
        .ok_or_else(|| DbErr::Custom(format!("device {device} vanished")))?;
    if change.to == ExecutionState::Succeeded {
        let release = release_version(txn, job).await?;
        if dev.firmware_version.as_deref() != Some(release.as_str()) {
            return Ok(Err(Refused::NotInstalled {
                installed: dev.firmware_version.clone(),
                release,
            }));
        }
    }
    let now = crate::db::now();
    let mut next = current.clone();
    next.state = change.to.as_str().to_owned();
    next.step = change.step.map(|s| s.as_str().to_owned());
    next.progress = change.progress.map(i32::from);
    next.error_code = change.error.as_ref().map(|e| e.0.clone());
    next.error_message = change.error.as_ref().map(|e| e.1.clone());
    next.version += 1;
    next.updated_at = now;
    if from == ExecutionState::Queued && change.to == ExecutionState::InProgress {
        next.started_at = Some(now);
    }
    ledger::book(txn, from, &mut next, now).await?;
    write(txn, &current, &next, &dev).await?;
    Ok(Ok(next))
}

/// The service ends an execution itself (`TIMED_OUT` past the in-progress timeout), through
/// the same books as a device's report. Refused when the execution moved on meanwhile.
pub async fn end_by_service(
    txn: &impl ConnectionTrait,
    current: &job_executions::Model,
    to: ExecutionState,
    error: (&str, String),
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Result<job_executions::Model, Refused>, DbErr> {
    let current = &locked(txn, current).await?;
    let from = ExecutionState::parse(&current.state).ok_or_else(|| {
        DbErr::Custom(format!(
            "stored execution state {:?} is unknown",
            current.state
        ))
    })?;
    if !from.can_become(to) {
        return Ok(Err(Refused::Illegal { from, to }));
    }
    let mut next = current.clone();
    next.state = to.as_str().to_owned();
    next.error_code = Some(error.0.to_owned());
    next.error_message = Some(error.1);
    next.version += 1;
    next.updated_at = now;
    ledger::book(txn, from, &mut next, now).await?;
    let dev = device_of(txn, &current.device_id).await?;
    write(txn, current, &next, &dev).await?;
    Ok(Ok(next))
}

/// Queues a failed execution again for its next attempt (a new execution number), moving
/// it from its wave's `retrying` counter to `queued`.
pub async fn requeue(
    txn: &impl ConnectionTrait,
    current: &job_executions::Model,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<job_executions::Model>, DbErr> {
    let current = &locked(txn, current).await?;
    if current.retry_at.is_none_or(|at| at > now) {
        // A concurrent cancel ended the wait meanwhile.
        return Ok(None);
    }
    let mut next = current.clone();
    next.state = ExecutionState::Queued.as_str().to_owned();
    next.execution_number += 1;
    next.version += 1;
    next.step = None;
    next.progress = None;
    next.error_code = None;
    next.error_message = None;
    next.queued_at = now;
    next.started_at = None;
    next.updated_at = now;
    next.retry_at = None;
    if let (Some(rollout), Some(wave)) = (&next.rollout_id, next.wave) {
        ledger::shift(
            txn,
            rollout,
            wave,
            Some(Counter::Retrying),
            Some(Counter::State(ExecutionState::Queued)),
            1,
        )
        .await?;
    }
    let dev = device_of(txn, &current.device_id).await?;
    write(txn, current, &next, &dev).await?;
    Ok(Some(next))
}

/// `execution` read again under a row lock, so a concurrent report is seen, not overwritten.
async fn locked(
    txn: &impl ConnectionTrait,
    execution: &job_executions::Model,
) -> Result<job_executions::Model, DbErr> {
    job_executions::Entity::find_by_id((execution.job_id.clone(), execution.device_id.clone()))
        .lock_exclusive()
        .one(txn)
        .await?
        .ok_or_else(|| {
            DbErr::RecordNotFound(format!(
                "execution {}/{}",
                execution.job_id, execution.device_id
            ))
        })
}

async fn device_of(txn: &impl ConnectionTrait, id: &str) -> Result<devices::Model, DbErr> {
    devices::Entity::find_by_id(id.to_owned())
        .one(txn)
        .await?
        .ok_or_else(|| DbErr::Custom(format!("device {id} vanished")))
}

async fn release_version(txn: &impl ConnectionTrait, job: &str) -> Result<String, DbErr> {
    let job = jobs::Entity::find_by_id(job.to_owned())
        .one(txn)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("job {job}")))?;
    let release = releases::Entity::find_by_id(job.release_id.clone())
        .one(txn)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("release {}", job.release_id)))?;
    Ok(release.version)
}

/// Writes `next` over `current` and appends the transition to the history.
async fn write(
    txn: &impl ConnectionTrait,
    current: &job_executions::Model,
    next: &job_executions::Model,
    device: &devices::Model,
) -> Result<(), DbErr> {
    job_executions::Entity::update(job_executions::ActiveModel::from(next.clone()).reset_all())
        .exec(txn)
        .await?;
    record_history(txn, next, Some(&current.state), device).await
}

/// The job document of the device's execution of `job`, with a fresh download URL.
pub async fn document(
    db: &impl ConnectionTrait,
    storage: &Storage,
    job: &str,
    device: &DeviceId,
) -> Result<Option<Vec<u8>>, Error> {
    let Some(execution) =
        job_executions::Entity::find_by_id((job.to_owned(), device.as_str().to_owned()))
            .one(db)
            .await?
    else {
        return Ok(None);
    };
    render(db, storage, &execution).await.map(Some)
}

/// The document of the device's oldest unfinished execution (QUEUED or IN_PROGRESS), with a
/// fresh download URL.
pub async fn next_document(
    db: &impl ConnectionTrait,
    storage: &Storage,
    device: &DeviceId,
) -> Result<Option<Vec<u8>>, Error> {
    let execution = job_executions::Entity::find()
        .filter(job_executions::Column::DeviceId.eq(device.as_str()))
        .filter(job_executions::Column::State.is_in([
            ExecutionState::Queued.as_str(),
            ExecutionState::InProgress.as_str(),
        ]))
        .order_by_asc(job_executions::Column::QueuedAt)
        .one(db)
        .await?;
    match execution {
        Some(e) => render(db, storage, &e).await.map(Some),
        None => Ok(None),
    }
}

async fn render(
    db: &impl ConnectionTrait,
    storage: &Storage,
    execution: &job_executions::Model,
) -> Result<Vec<u8>, Error> {
    let mut doc = template(db, storage, &execution.job_id).await?;
    doc.execution_number = u64::try_from(execution.execution_number).unwrap_or(0);
    doc.state = ExecutionState::parse(&execution.state).unwrap_or(ExecutionState::Queued);
    Ok(serde_json::to_vec(&doc).expect("a job document serialises"))
}

/// The document of `job` for a first, queued execution, with a fresh download URL: the
/// engine sends it to many devices, changing only what differs.
pub async fn template(
    db: &impl ConnectionTrait,
    storage: &Storage,
    job: &str,
) -> Result<JobDocument, Error> {
    let job = jobs::Entity::find_by_id(job.to_owned())
        .one(db)
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "job",
            id: job.to_owned(),
        })?;
    let release = releases::Entity::find_by_id(job.release_id.clone())
        .one(db)
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "release",
            id: job.release_id.clone(),
        })?;
    let manifest = stored_manifest(&release).map_err(Error::Url)?;
    let url = storage
        .download_url(&release.object_key.as_str().into())
        .await
        .map_err(Error::Url)?;
    Ok(JobDocument {
        job: job.id,
        release: release.id,
        execution_number: 1,
        state: ExecutionState::Queued,
        manifest,
        url: url.url,
        url_expires_at: url.expires_at,
    })
}

/// The signed manifest of a stored release, verbatim.
pub fn stored_manifest(release: &releases::Model) -> anyhow::Result<SignedManifest> {
    let envelope = format!(
        r#"{{"manifest":{},"signatures":{}}}"#,
        release.manifest, release.signatures
    );
    SignedManifest::parse(envelope.as_bytes()).map_err(|e| {
        anyhow::anyhow!(
            "stored manifest of release {} does not parse: {e}",
            release.id
        )
    })
}

/// An execution and its transitions, for the API.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ExecutionView {
    /// Current state.
    pub state: String,
    /// Current step.
    pub step: Option<String>,
    /// Progress of the step.
    pub progress: Option<i32>,
    /// Version (rises on each transition).
    pub version: i64,
    /// Execution number.
    pub execution_number: i64,
    /// Error code, if it failed.
    pub error_code: Option<String>,
    /// Every transition, oldest first: `[from, to, step, progress, hardware, firmware, at]`.
    #[schema(value_type = Vec<Object>)]
    pub history: Vec<serde_json::Value>,
}

/// The device's execution of `job`, with its history.
pub async fn execution(
    db: &impl ConnectionTrait,
    job: &str,
    device: &str,
) -> Result<ExecutionView, Error> {
    let e = job_executions::Entity::find_by_id((job.to_owned(), device.to_owned()))
        .one(db)
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "execution",
            id: format!("{job}/{device}"),
        })?;
    let history = execution_history::Entity::find()
        .filter(execution_history::Column::JobId.eq(job))
        .filter(execution_history::Column::DeviceId.eq(device))
        .order_by_asc(execution_history::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(|h| {
            serde_json::json!({
                "from": h.from_state, "to": h.to_state, "step": h.step, "progress": h.progress,
                "error_code": h.error_code, "hardware": h.hardware, "firmware_version": h.firmware_version, "at": h.at,
            })
        })
        .collect();
    Ok(ExecutionView {
        state: e.state,
        step: e.step,
        progress: e.progress,
        version: e.version,
        execution_number: e.execution_number,
        error_code: e.error_code,
        history,
    })
}
