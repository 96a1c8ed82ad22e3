//! What a device reports through its shadow: `reported.firmware` (what it runs) and
//! `reported.ota` (where it stands in its current job). The service derives job execution
//! transitions from these reports.

use semver::Version;
use serde::{Deserialize, Serialize};

use super::jobs::{ExecutionState, Step};

/// `reported.firmware`: the running image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareReport {
    /// Version of the running image.
    pub version: Version,
    /// The slot it booted from (`a`, `b`).
    pub slot: String,
}

/// `reported.ota`: progress of the current job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtaReport {
    /// The job (execution) id.
    pub job: String,
    /// Where the device stands.
    pub state: ExecutionState,
    /// The step, while in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Step>,
    /// Percent of the current step, 0 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    /// Why it failed or refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ReportError>,
}

/// A failure as the device reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportError {
    /// A stable code: an [`crate::Error::code`] for refusals, or the agent's own
    /// (`health_check_failed`, `download_failed`, ...).
    pub code: String,
    /// Human-readable detail.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse_strictly() {
        let r: OtaReport = serde_json::from_value(serde_json::json!({
            "job": "j-1", "state": "IN_PROGRESS", "step": "downloading", "progress": 40
        }))
        .unwrap();
        assert_eq!(r.step, Some(Step::Downloading));
        assert!(
            serde_json::from_value::<OtaReport>(serde_json::json!({"job": "j", "state": "DONE"}))
                .is_err()
        );
        assert!(
            serde_json::from_value::<FirmwareReport>(
                serde_json::json!({"version": "1.0", "slot": "a"})
            )
            .is_err()
        );
    }
}
