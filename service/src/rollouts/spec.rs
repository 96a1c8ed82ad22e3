//! What a release engineer asks for: the release, the target, the waves and the policies of a
//! rollout, as the API accepts it and as it is stored. [`NewRollout::check`] names every
//! problem by its field.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Most waves in one rollout.
pub const MAX_WAVES: usize = 20;
/// Most devices in a device-list target.
pub const MAX_LISTED_DEVICES: usize = 10_000;
/// Most attempts per device.
pub const MAX_ATTEMPTS: u32 = 10;

/// A rollout to create.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRollout {
    /// A name people recognise it by (default: the release id).
    #[serde(default)]
    pub name: Option<String>,
    /// The release to install.
    pub release: String,
    /// Which devices.
    pub target: Target,
    /// The waves, by cumulative size: each covers its devices and every earlier wave's.
    pub waves: Vec<Wave>,
    /// Seconds a device may stay IN_PROGRESS before it is TIMED_OUT.
    #[serde(default = "default_timeout")]
    pub in_progress_timeout_secs: u64,
    /// Which failures are retried, how often and how late.
    #[serde(default)]
    pub retry: Retry,
    /// Not before this time (the rollout stays SCHEDULED until then).
    #[serde(default)]
    pub start_at: Option<DateTime<Utc>>,
    /// Not after this time: what is not finished by then is canceled.
    #[serde(default)]
    pub end_at: Option<DateTime<Utc>>,
    /// Devices are queued only while this window is open.
    #[serde(default)]
    pub maintenance_window: Option<Window>,
    /// Most devices queued per minute.
    #[serde(default)]
    pub rate_per_minute: Option<u32>,
}

fn default_timeout() -> u64 {
    3600
}

/// The devices a rollout covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Target {
    /// A static or dynamic group; devices that join it while the rollout runs are taken by
    /// the current wave.
    Group(String),
    /// These devices.
    Devices(Vec<String>),
}

/// One wave.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    /// Cumulative size: this wave and all before it.
    pub size: Size,
    /// Seconds to wait after the success threshold is met before the next wave.
    #[serde(default)]
    pub soak_secs: u64,
    /// Percent of the wave's devices that must have SUCCEEDED to advance.
    #[serde(default = "default_success")]
    pub success_percent: f64,
    /// Halt the rollout when any of these trips.
    #[serde(default)]
    pub halt: Vec<HaltRule>,
    /// The wave starts only once someone approves it.
    #[serde(default)]
    pub approval: bool,
}

fn default_success() -> f64 {
    100.0
}

/// A cumulative wave size: at least one device either way.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Size {
    /// Percent of the target (0 < p <= 100).
    Percent(f64),
    /// Number of devices.
    Count(u64),
}

impl Size {
    /// How many of `n` devices the size covers: at least one (when there is one), at most n.
    pub fn of(self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let k = match self {
            Size::Percent(p) => (p / 100.0 * n as f64).ceil() as usize,
            Size::Count(c) => usize::try_from(c).unwrap_or(usize::MAX),
        };
        k.clamp(1, n)
    }
}

impl FromStr for Size {
    type Err = String;

    /// `10%` or `25`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_suffix('%') {
            Some(p) => p
                .trim()
                .parse::<f64>()
                .map(Size::Percent)
                .map_err(|_| format!("{s:?} is not a percentage")),
            None => s
                .trim()
                .parse::<u64>()
                .map(Size::Count)
                .map_err(|_| format!("{s:?} is neither a count nor a percentage like 10%")),
        }
    }
}

/// A kind of failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureKind {
    /// The device tried and rolled back.
    Failed,
    /// The device refused the release.
    Rejected,
    /// No result within the in-progress timeout.
    TimedOut,
    /// Any of the three.
    Any,
}

impl FromStr for FailureKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().replace('-', "_").as_str() {
            "FAILED" => Ok(FailureKind::Failed),
            "REJECTED" => Ok(FailureKind::Rejected),
            "TIMED_OUT" => Ok(FailureKind::TimedOut),
            "ANY" => Ok(FailureKind::Any),
            _ => Err(format!(
                "{s:?} is not one of FAILED, REJECTED, TIMED_OUT, ANY"
            )),
        }
    }
}

/// Halt when failures of one kind in a wave reach a rate or a count.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HaltRule {
    /// Which failures count.
    pub on: FailureKind,
    /// Percent of the wave's devices.
    #[serde(default)]
    pub rate_percent: Option<f64>,
    /// Number of devices.
    #[serde(default)]
    pub count: Option<u64>,
}

/// Retries of a failed device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts per device, the first included (1: no retry).
    #[serde(default = "one")]
    pub attempts: u32,
    /// Seconds before the first retry; each further retry waits twice as long.
    #[serde(default = "default_backoff")]
    pub backoff_secs: u64,
    /// Which failures are retried (`ANY` for all).
    #[serde(default = "default_retry_on")]
    pub on: Vec<FailureKind>,
}

fn one() -> u32 {
    1
}

fn default_backoff() -> u64 {
    60
}

fn default_retry_on() -> Vec<FailureKind> {
    vec![FailureKind::Failed, FailureKind::TimedOut]
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: one(),
            backoff_secs: default_backoff(),
            on: default_retry_on(),
        }
    }
}

impl Retry {
    /// Whether attempt `attempt` (from 1) that ended as `kind` gets another.
    pub fn retries(&self, kind: FailureKind, attempt: u32) -> bool {
        attempt < self.attempts && self.on.iter().any(|k| *k == kind || *k == FailureKind::Any)
    }

    /// How long to wait after attempt `attempt` (from 1) failed: the backoff, doubled for
    /// each attempt after the first, at most a day.
    pub fn delay(&self, attempt: u32) -> chrono::Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(20);
        let secs = self.backoff_secs.saturating_mul(factor).min(86_400);
        chrono::Duration::seconds(i64::try_from(secs).unwrap_or(86_400))
    }
}

/// A recurring maintenance window: it opens at each time the cron expression matches, in
/// the time zone, and stays open for the duration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Five-field cron expression (`minute hour day-of-month month day-of-week`).
    pub cron: String,
    /// Seconds it stays open.
    pub duration_secs: u64,
    /// IANA time zone name, e.g. `Europe/Berlin` (default UTC).
    #[serde(default = "utc")]
    pub time_zone: String,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// One problem with a rollout request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The field, e.g. `waves[1].size`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl NewRollout {
    /// The name, or the release id.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.release)
    }

    /// Checks everything that needs no database: the first problem found.
    pub fn check(&self) -> Result<(), Invalid> {
        if let Some(name) = &self.name {
            if name.is_empty() || name.len() > 128 {
                return Err(invalid("name", "must be 1 to 128 characters"));
            }
        }
        match &self.target {
            Target::Group(g) if g.is_empty() => {
                return Err(invalid("target.group", "must name a group"));
            }
            Target::Devices(d) if d.is_empty() || d.len() > MAX_LISTED_DEVICES => {
                return Err(invalid(
                    "target.devices",
                    format!("must list 1 to {MAX_LISTED_DEVICES} devices"),
                ));
            }
            Target::Devices(d) => {
                let mut seen = std::collections::HashSet::new();
                for (i, id) in d.iter().enumerate() {
                    if let Err(e) = fleetwave_artifacts::DeviceId::parse(id) {
                        return Err(invalid(format!("target.devices[{i}]"), e.to_string()));
                    }
                    if !seen.insert(id) {
                        return Err(invalid(
                            format!("target.devices[{i}]"),
                            format!("{id} is listed twice"),
                        ));
                    }
                }
            }
            Target::Group(_) => {}
        }
        if self.waves.is_empty() || self.waves.len() > MAX_WAVES {
            return Err(invalid(
                "waves",
                format!("must hold 1 to {MAX_WAVES} waves"),
            ));
        }
        let (mut last_percent, mut last_count) = (None::<f64>, None::<u64>);
        for (i, wave) in self.waves.iter().enumerate() {
            let field = |f: &str| format!("waves[{i}].{f}");
            match wave.size {
                Size::Percent(p) if !(p > 0.0 && p <= 100.0) => {
                    return Err(invalid(
                        field("size"),
                        "a percentage above 0 and at most 100",
                    ));
                }
                Size::Count(0) => {
                    return Err(invalid(field("size"), "at least one device"));
                }
                _ => {}
            }
            let grows = match wave.size {
                Size::Percent(p) => last_percent.is_none_or(|l| p > l),
                Size::Count(c) => last_count.is_none_or(|l| c > l),
            };
            if last_percent == Some(100.0) || !grows {
                return Err(invalid(
                    field("size"),
                    "sizes are cumulative and must grow from wave to wave",
                ));
            }
            match wave.size {
                Size::Percent(p) => last_percent = Some(p),
                Size::Count(c) => last_count = Some(c),
            }
            if !(0.0..=100.0).contains(&wave.success_percent) {
                return Err(invalid(field("success_percent"), "must be 0 to 100"));
            }
            for (j, rule) in wave.halt.iter().enumerate() {
                let f = format!("waves[{i}].halt[{j}]");
                if rule.rate_percent.is_none() && rule.count.is_none() {
                    return Err(invalid(f, "give rate_percent, count or both"));
                }
                if rule.rate_percent.is_some_and(|r| !(r > 0.0 && r <= 100.0)) {
                    return Err(invalid(f + ".rate_percent", "above 0 and at most 100"));
                }
                if rule.count == Some(0) {
                    return Err(invalid(f + ".count", "at least 1"));
                }
            }
        }
        if self.in_progress_timeout_secs == 0 {
            return Err(invalid("in_progress_timeout_secs", "at least 1 second"));
        }
        if self.retry.attempts == 0 || self.retry.attempts > MAX_ATTEMPTS {
            return Err(invalid(
                "retry.attempts",
                format!("1 to {MAX_ATTEMPTS} (1: no retry)"),
            ));
        }
        if let (Some(start), Some(end)) = (self.start_at, self.end_at) {
            if end <= start {
                return Err(invalid("end_at", "must be after start_at"));
            }
        }
        if let Some(window) = &self.maintenance_window {
            super::plan::WindowSchedule::parse(window)?;
        }
        if self.rate_per_minute == Some(0) {
            return Err(invalid(
                "rate_per_minute",
                "at least 1 (omit it for no limit)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> NewRollout {
        serde_json::from_value(serde_json::json!({
            "release": "r", "target": {"group": "g"},
            "waves": [{"size": {"percent": 10}}, {"size": {"count": 50}}, {"size": {"percent": 100}}]
        }))
        .unwrap()
    }

    #[test]
    fn defaults_are_filled_in() {
        let r = base();
        assert_eq!(r.in_progress_timeout_secs, 3600);
        assert_eq!(r.retry, Retry::default());
        assert_eq!(r.waves[0].success_percent, 100.0);
        r.check().unwrap();
    }

    #[test]
    fn problems_name_their_field() {
        let mut r = base();
        r.waves[1].size = Size::Count(0);
        assert_eq!(r.check().unwrap_err().field, "waves[1].size");
        let mut r = base();
        r.waves.swap(0, 2);
        assert_eq!(r.check().unwrap_err().field, "waves[1].size");
        let mut r = base();
        r.waves[0].halt.push(HaltRule {
            on: FailureKind::Failed,
            rate_percent: None,
            count: None,
        });
        assert_eq!(r.check().unwrap_err().field, "waves[0].halt[0]");
        let mut r = base();
        r.maintenance_window = Some(Window {
            cron: "not cron".into(),
            duration_secs: 60,
            time_zone: "UTC".into(),
        });
        assert_eq!(r.check().unwrap_err().field, "maintenance_window.cron");
        let mut r = base();
        r.target = Target::Devices(vec!["a".into(), "a".into()]);
        assert_eq!(r.check().unwrap_err().field, "target.devices[1]");
    }

    #[test]
    fn sizes_cover_at_least_one_device() {
        assert_eq!(Size::Percent(1.0).of(10), 1);
        assert_eq!(Size::Percent(50.0).of(5), 3);
        assert_eq!(Size::Count(500).of(10), 10);
        assert_eq!(Size::Count(5).of(0), 0);
        assert_eq!("10%".parse::<Size>().unwrap(), Size::Percent(10.0));
        assert_eq!("7".parse::<Size>().unwrap(), Size::Count(7));
        assert!("x".parse::<Size>().is_err());
    }

    #[test]
    fn retries_double_their_wait() {
        let r = Retry {
            attempts: 3,
            backoff_secs: 10,
            on: vec![FailureKind::Failed],
        };
        assert!(r.retries(FailureKind::Failed, 1));
        assert!(r.retries(FailureKind::Failed, 2));
        assert!(!r.retries(FailureKind::Failed, 3));
        assert!(!r.retries(FailureKind::Rejected, 1));
        assert_eq!(r.delay(1).num_seconds(), 10);
        assert_eq!(r.delay(2).num_seconds(), 20);
    }
}
