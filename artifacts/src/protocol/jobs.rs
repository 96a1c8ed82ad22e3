//! Job executions as the service and devices both see them: the states, the steps of an
//! install, and the table of legal transitions.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::signing::SignedManifest;

/// What a device receives to run a job (on `notify-next`, and in answers to `start-next`
/// and `jobs/{job}/get`). Serialise it straight to bytes: the signed manifest is carried
/// verbatim, and a JSON value type would reorder its keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobDocument {
    /// The job id; the device names it in `reported.ota.job`.
    pub job: String,
    /// The release id.
    pub release: String,
    /// Rises when the same job is retried on the same device.
    pub execution_number: u64,
    /// The execution's state when this was sent.
    pub state: ExecutionState,
    /// The signed manifest of the release, which the device verifies itself.
    pub manifest: SignedManifest,
    /// Where to download the image; it expires.
    pub url: String,
    /// Unix time the URL expires at; ask again (`jobs/{job}/get`) for a fresh one.
    pub url_expires_at: u64,
}

/// Where one device stands in one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionState {
    /// Assigned, not started.
    Queued,
    /// The device is working on it (see [`Step`]).
    InProgress,
    /// Booted the new slot, passed its health check and committed.
    Succeeded,
    /// Tried and failed (it rolled back).
    Failed,
    /// Refused before changing anything (signature, rules, hardware).
    Rejected,
    /// No progress within the rollout's in-progress timeout.
    TimedOut,
    /// The rollout was halted or canceled before the device finished.
    Canceled,
    /// The device left the target (deleted, or no longer in the group).
    Removed,
}

/// The steps of an execution in progress, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Fetching the image into the inactive slot.
    Downloading,
    /// Checking signatures, rules, size and digest of the written bytes.
    Verifying,
    /// Switching the boot slot.
    Installing,
    /// Rebooting into the new slot for a trial boot.
    Rebooting,
    /// Checking its own health on the trial boot.
    HealthCheck,
}

/// The retained notice of a wave on `groups/{group}/jobs/notify`: every member reads it and
/// takes part when its bucket ([`super::bucket`]) is below `threshold`. Serialise it straight
/// to bytes, like [`JobDocument`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaveNotice {
    /// The rollout; buckets are computed against its id.
    pub rollout: String,
    /// The job each covered device reports on (`reported.ota.job`).
    pub job: String,
    /// The wave's index, from 0.
    pub wave: u32,
    /// Cumulative bucket threshold, 1 to 10000: devices with a bucket below it take part.
    pub threshold: u16,
    /// The release id.
    pub release: String,
    /// The signed manifest, verbatim.
    pub manifest: SignedManifest,
    /// Where to download the image.
    pub url: String,
    /// Unix time the URL expires at; `jobs/{job}/get` gives a fresh one.
    pub url_expires_at: u64,
}

impl WaveNotice {
    /// Whether this wave covers `device`.
    pub fn covers(&self, device: &crate::DeviceId) -> bool {
        super::bucket::covers(self.threshold, device, &self.rollout)
    }
}

impl ExecutionState {
    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// Every state, for tables and tests.
    pub const ALL: [ExecutionState; 8] = [
        ExecutionState::Queued,
        ExecutionState::InProgress,
        ExecutionState::Succeeded,
        ExecutionState::Failed,
        ExecutionState::Rejected,
        ExecutionState::TimedOut,
        ExecutionState::Canceled,
        ExecutionState::Removed,
    ];

    /// Whether nothing follows this state.
    pub fn is_terminal(self) -> bool {
        !matches!(self, ExecutionState::Queued | ExecutionState::InProgress)
    }

    /// The legal transitions:
    ///
    /// | from | to |
    /// |---|---|
    /// | QUEUED | IN_PROGRESS, REJECTED, CANCELED, REMOVED, TIMED_OUT |
    /// | IN_PROGRESS | IN_PROGRESS (a later step or more progress), SUCCEEDED, FAILED, REJECTED, TIMED_OUT, CANCELED, REMOVED |
    /// | any terminal state | nothing |
    pub fn can_become(self, next: ExecutionState) -> bool {
        use ExecutionState as S;
        match self {
            S::Queued => matches!(
                next,
                S::InProgress | S::Rejected | S::Canceled | S::Removed | S::TimedOut
            ),
            S::InProgress => next != S::Queued,
            _ => false,
        }
    }

    /// The wire name, e.g. `IN_PROGRESS`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionState::Queued => "QUEUED",
            ExecutionState::InProgress => "IN_PROGRESS",
            ExecutionState::Succeeded => "SUCCEEDED",
            ExecutionState::Failed => "FAILED",
            ExecutionState::Rejected => "REJECTED",
            ExecutionState::TimedOut => "TIMED_OUT",
            ExecutionState::Canceled => "CANCELED",
            ExecutionState::Removed => "REMOVED",
        }
    }
}

impl fmt::Display for ExecutionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Step {
    /// The wire name, e.g. `health-check`.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Downloading => "downloading",
            Step::Verifying => "verifying",
            Step::Installing => "installing",
            Step::Rebooting => "rebooting",
            Step::HealthCheck => "health-check",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Step::Downloading,
            Step::Verifying,
            Step::Installing,
            Step::Rebooting,
            Step::HealthCheck,
        ]
        .into_iter()
        .find(|step| step.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::ExecutionState as S;

    #[test]
    fn terminal_states_are_final_and_nothing_returns_to_queued() {
        for from in S::ALL {
            assert!(!from.can_become(S::Queued), "{from} → QUEUED");
            if from.is_terminal() {
                assert!(
                    S::ALL.iter().all(|to| !from.can_become(*to)),
                    "{from} is terminal"
                );
            }
        }
        assert!(S::Queued.can_become(S::InProgress));
        assert!(S::InProgress.can_become(S::InProgress));
        assert!(
            !S::Queued.can_become(S::Succeeded),
            "success needs the device to have worked on it"
        );
        assert!(!S::Queued.can_become(S::Failed));
    }

    #[test]
    fn wire_names() {
        assert_eq!(
            serde_json::to_string(&S::TimedOut).unwrap(),
            "\"TIMED_OUT\""
        );
        assert_eq!(
            serde_json::to_string(&super::Step::HealthCheck).unwrap(),
            "\"health-check\""
        );
        for s in S::ALL {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }
}
