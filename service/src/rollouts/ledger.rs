//! The rollout's books: every execution transition moves one device from one counter of its
//! wave to another in the same transaction, and a failure is either booked for good or, when
//! the retry policy allows another attempt, booked as `retrying` with its retry time. Status
//! reads these counters and never scans executions.

use fleetwave_artifacts::protocol::jobs::ExecutionState;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};

use super::spec::{FailureKind, NewRollout};
use crate::audit::{self, Actor};
use crate::events;
use crate::registry::entities::{job_executions, rollout_waves, rollouts};

/// A counter of a wave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Executions in this state.
    State(ExecutionState),
    /// Failed executions waiting for their retry.
    Retrying,
    /// Devices found incompatible.
    Incompatible,
}

impl Counter {
    fn column(self) -> rollout_waves::Column {
        use rollout_waves::Column as C;
        match self {
            Counter::State(s) => match s {
                ExecutionState::Queued => C::Queued,
                ExecutionState::InProgress => C::InProgress,
                ExecutionState::Succeeded => C::Succeeded,
                ExecutionState::Failed => C::Failed,
                ExecutionState::Rejected => C::Rejected,
                ExecutionState::TimedOut => C::TimedOut,
                ExecutionState::Canceled => C::Canceled,
                ExecutionState::Removed => C::Removed,
            },
            Counter::Retrying => C::Retrying,
            Counter::Incompatible => C::Incompatible,
        }
    }
}

/// Moves `n` devices of a wave from counter `from` (none: newly counted) to `to` (none: no
/// longer counted).
pub async fn shift(
    txn: &impl ConnectionTrait,
    rollout: &str,
    wave: i32,
    from: Option<Counter>,
    to: Option<Counter>,
    n: i64,
) -> Result<(), DbErr> {
    if n == 0 || from == to {
        return Ok(());
    }
    let mut update = rollout_waves::Entity::update_many()
        .filter(rollout_waves::Column::RolloutId.eq(rollout))
        .filter(rollout_waves::Column::Wave.eq(wave));
    if let Some(from) = from {
        let c = from.column();
        update = update.col_expr(c, Expr::col(c).sub(n));
    }
    if let Some(to) = to {
        let c = to.column();
        update = update.col_expr(c, Expr::col(c).add(n));
    }
    update.exec(txn).await?;
    Ok(())
}

/// The failure kind of a state, if it is one.
pub fn failure_kind(state: ExecutionState) -> Option<FailureKind> {
    match state {
        ExecutionState::Failed => Some(FailureKind::Failed),
        ExecutionState::Rejected => Some(FailureKind::Rejected),
        ExecutionState::TimedOut => Some(FailureKind::TimedOut),
        _ => None,
    }
}

/// Books the transition of a rollout's execution from `before` to `after.state`, inside the
/// transaction that writes `after`: decides a retry (setting `after.retry_at`), moves the
/// counters, and records a failure in the audit log and as an event for webhooks. Executions outside rollouts are left alone.
pub async fn book(
    txn: &impl ConnectionTrait,
    before: ExecutionState,
    after: &mut job_executions::Model,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), DbErr> {
    let (Some(rollout_id), Some(wave)) = (after.rollout_id.clone(), after.wave) else {
        return Ok(());
    };
    let state = ExecutionState::parse(&after.state)
        .ok_or_else(|| DbErr::Custom(format!("unknown execution state {:?}", after.state)))?;
    let mut to = Counter::State(state);
    if let Some(kind) = failure_kind(state) {
        let spec = spec_of(txn, &rollout_id).await?;
        let attempt = u32::try_from(after.execution_number).unwrap_or(u32::MAX);
        if spec.retry.retries(kind, attempt) {
            after.retry_at = Some(now + spec.retry.delay(attempt));
            to = Counter::Retrying;
        }
        let event = match state {
            ExecutionState::TimedOut => "execution.timed_out",
            ExecutionState::Rejected => "execution.rejected",
            _ => "execution.failed",
        };
        let details = serde_json::json!({
                "rollout": rollout_id,
                "job": after.job_id,
                "device": after.device_id,
                "wave": wave,
                "attempt": after.execution_number,
                "state": state,
                "error_code": after.error_code,
                "error_message": after.error_message,
                "retry_at": after.retry_at,
        });
        // The device decided a failure or refusal; the service decided a timeout.
        let actor = match state {
            ExecutionState::TimedOut => Actor::system(),
            _ => Actor {
                id: format!("device:{}", after.device_id),
                request_digest: None,
            },
        };
        audit::append(
            txn,
            &actor,
            audit::Event {
                action: event,
                subject: format!("execution:{}/{}", after.job_id, after.device_id),
                details: details.clone(),
            },
        )
        .await?;
        events::record(txn, event, Some(&rollout_id), details).await?;
    }
    shift(
        txn,
        &rollout_id,
        wave,
        Some(Counter::State(before)),
        Some(to),
        1,
    )
    .await
}

/// The stored request of a rollout.
pub async fn spec_of(txn: &impl ConnectionTrait, rollout: &str) -> Result<NewRollout, DbErr> {
    let row = rollouts::Entity::find_by_id(rollout.to_owned())
        .one(txn)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("rollout {rollout}")))?;
    serde_json::from_str(&row.spec)
        .map_err(|e| DbErr::Custom(format!("stored spec of rollout {rollout}: {e}")))
}
