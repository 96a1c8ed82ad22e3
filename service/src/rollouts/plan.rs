//! The rollout's decisions, as pure functions of its counters and the time: how the target
//! is cut into waves, whether the maintenance window is open, how many devices the rate limit
//! lets through, whether a wave tripped a halt rule, and what the engine does next. The
//! engine ([`super::engine`]) does the IO around them.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use fleetwave_artifacts::protocol::bucket::BUCKETS;

use super::spec::{FailureKind, HaltRule, Invalid, NewRollout, Size, Window};

/// Where a rollout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// Waiting for its start time.
    Scheduled,
    /// Queueing and watching its current wave.
    Running,
    /// Stopped by a person; resumes where it was.
    Paused,
    /// Stopped by a tripped threshold.
    Halted,
    /// Every wave met its threshold and soaked.
    Completed,
    /// Stopped for good by a person or its end time.
    Canceled,
}

impl State {
    /// Every state.
    pub const ALL: [State; 6] = [
        State::Scheduled,
        State::Running,
        State::Paused,
        State::Halted,
        State::Completed,
        State::Canceled,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Scheduled => "SCHEDULED",
            State::Running => "RUNNING",
            State::Paused => "PAUSED",
            State::Halted => "HALTED",
            State::Completed => "COMPLETED",
            State::Canceled => "CANCELED",
        }
    }

    /// Whether it can still change by itself or by a resume.
    pub fn is_final(self) -> bool {
        matches!(self, State::Halted | State::Completed | State::Canceled)
    }
}

impl FromStr for State {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        State::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown rollout state {s:?}"))
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one wave ends in the target ordered by bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cut {
    /// Devices in this wave and every earlier one.
    pub cumulative: usize,
    /// Devices whose bucket is below this belong to this wave or an earlier one.
    pub threshold: u16,
}

/// How many devices of a target fall in each bucket: all the planner needs to cut waves,
/// whatever the fleet's size (the target itself is streamed past it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram(Vec<usize>);

impl Default for Histogram {
    fn default() -> Self {
        Histogram(vec![0; usize::from(BUCKETS)])
    }
}

impl Histogram {
    /// Counts one device in `bucket`.
    pub fn add(&mut self, bucket: u16) {
        self.count(bucket, 1);
    }

    /// Counts `n` devices in `bucket`.
    pub fn count(&mut self, bucket: u16, n: usize) {
        self.0[usize::from(bucket.min(BUCKETS - 1))] += n;
    }

    /// Devices counted.
    pub fn total(&self) -> usize {
        self.0.iter().sum()
    }
}

impl FromIterator<u16> for Histogram {
    fn from_iter<I: IntoIterator<Item = u16>>(buckets: I) -> Self {
        let mut h = Histogram::default();
        buckets.into_iter().for_each(|b| h.add(b));
        h
    }
}

/// Cuts a target, given as its histogram of buckets, into cumulative waves (devices in
/// ascending bucket order). A cut never splits a bucket, so a wave's notice (a bucket
/// threshold) covers exactly its devices; a wave may therefore take a few more devices than
/// its size.
pub fn cut_waves(histogram: &Histogram, sizes: &[Size]) -> Vec<Cut> {
    let n = histogram.total();
    let mut cuts = Vec::with_capacity(sizes.len());
    let mut previous = 0;
    for size in sizes {
        let wanted = size.of(n).max(previous);
        // Extend to the end of the bucket holding the wanted-th device.
        let (mut k, mut last) = (0, None);
        if wanted > 0 {
            for (b, count) in histogram.0.iter().enumerate() {
                k += count;
                if k >= wanted {
                    last = Some(b);
                    break;
                }
            }
        }
        let threshold = match last {
            _ if k == n && n > 0 => BUCKETS,
            None => 0,
            Some(b) => u16::try_from(b + 1).unwrap_or(BUCKETS),
        };
        cuts.push(Cut {
            cumulative: k,
            threshold,
        });
        previous = k;
    }
    cuts
}

/// The wave a device with `bucket` belongs to (the last one when none covers it).
pub fn wave_of(bucket: u16, cuts: &[Cut]) -> usize {
    cuts.iter()
        .position(|c| bucket < c.threshold)
        .unwrap_or(cuts.len().saturating_sub(1))
}

/// A maintenance window, parsed.
#[derive(Clone, Debug)]
pub struct WindowSchedule {
    cron: croner::Cron,
    zone: chrono_tz::Tz,
    length: Duration,
}

impl WindowSchedule {
    /// Parses the cron expression and the time zone.
    pub fn parse(window: &Window) -> Result<Self, Invalid> {
        let cron = croner::Cron::from_str(&window.cron).map_err(|e| Invalid {
            field: "maintenance_window.cron".into(),
            message: format!("{:?} is not a cron expression: {e}", window.cron),
        })?;
        let zone = window
            .time_zone
            .parse::<chrono_tz::Tz>()
            .map_err(|_| Invalid {
                field: "maintenance_window.time_zone".into(),
                message: format!("{:?} is not an IANA time zone", window.time_zone),
            })?;
        if window.duration_secs == 0 || window.duration_secs > 7 * 86_400 {
            return Err(Invalid {
                field: "maintenance_window.duration_secs".into(),
                message: "1 second to 7 days".into(),
            });
        }
        Ok(WindowSchedule {
            cron,
            zone,
            length: Duration::seconds(window.duration_secs as i64),
        })
    }

    /// Whether the window is open at `now`: it opened at most its length ago.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        let local = now.with_timezone(&self.zone);
        match self.cron.find_previous_occurrence(&local, true) {
            Ok(opened) => now < opened.with_timezone(&Utc) + self.length,
            Err(_) => false,
        }
    }

    /// When it next opens after `now`.
    pub fn next_open(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = now.with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// A token bucket of `per_minute` devices, holding at most a minute's worth: the tokens
/// available at `now` given `tokens` at `since`.
pub fn refill(
    per_minute: u32,
    tokens: f64,
    since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> f64 {
    let cap = f64::from(per_minute);
    let Some(since) = since else {
        return cap;
    };
    let elapsed = (now - since).num_milliseconds().max(0) as f64 / 60_000.0;
    (tokens + elapsed * cap).min(cap)
}

/// A wave's counters: how many of its devices are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Counts {
    /// Devices assigned to the wave.
    pub planned: i64,
    /// QUEUED now.
    pub queued: i64,
    /// IN_PROGRESS now.
    pub in_progress: i64,
    /// SUCCEEDED.
    pub succeeded: i64,
    /// FAILED for good.
    pub failed: i64,
    /// REJECTED for good.
    pub rejected: i64,
    /// TIMED_OUT for good.
    pub timed_out: i64,
    /// CANCELED.
    pub canceled: i64,
    /// REMOVED.
    pub removed: i64,
    /// Waiting for a retry.
    pub retrying: i64,
    /// Not queued: cannot take the release.
    pub incompatible: i64,
}

impl From<&crate::registry::entities::rollout_waves::Model> for Counts {
    fn from(w: &crate::registry::entities::rollout_waves::Model) -> Self {
        Counts {
            planned: w.planned,
            queued: w.queued,
            in_progress: w.in_progress,
            succeeded: w.succeeded,
            failed: w.failed,
            rejected: w.rejected,
            timed_out: w.timed_out,
            canceled: w.canceled,
            removed: w.removed,
            retrying: w.retrying,
            incompatible: w.incompatible,
        }
    }
}

impl Counts {
    /// Devices that can take part: the wave's devices less the incompatible ones.
    pub fn eligible(&self) -> i64 {
        (self.planned - self.incompatible).max(0)
    }

    /// Failures of `kind` for good.
    pub fn failures(&self, kind: FailureKind) -> i64 {
        match kind {
            FailureKind::Failed => self.failed,
            FailureKind::Rejected => self.rejected,
            FailureKind::TimedOut => self.timed_out,
            FailureKind::Any => self.failed + self.rejected + self.timed_out,
        }
    }

    /// Whether at least `percent` of the eligible devices succeeded (true with none).
    pub fn success_met(&self, percent: f64) -> bool {
        let eligible = self.eligible();
        eligible == 0 || self.succeeded as f64 * 100.0 >= percent * eligible as f64
    }

    /// Whether `rule` trips on these counts, and why.
    pub fn tripped(&self, rule: &HaltRule) -> Option<String> {
        let n = self.failures(rule.on);
        if n == 0 {
            return None;
        }
        let kind = match rule.on {
            FailureKind::Failed => "FAILED",
            FailureKind::Rejected => "REJECTED",
            FailureKind::TimedOut => "TIMED_OUT",
            FailureKind::Any => "failed, rejected or timed-out",
        };
        if let Some(count) = rule
            .count
            .filter(|c| n >= i64::try_from(*c).unwrap_or(i64::MAX))
        {
            return Some(format!(
                "{n} {kind} device(s), at least the halt count {count}"
            ));
        }
        let eligible = self.eligible().max(1) as f64;
        if let Some(rate) = rule
            .rate_percent
            .filter(|r| n as f64 * 100.0 >= r * eligible)
        {
            return Some(format!(
                "{n} of {} device(s) {kind} ({:.1} %), at least the halt rate {rate} %",
                self.eligible(),
                n as f64 * 100.0 / eligible
            ));
        }
        None
    }
}

/// One wave as the engine sees it when deciding.
#[derive(Clone, Copy, Debug)]
pub struct WaveView {
    /// Its counters.
    pub counts: Counts,
    /// When its success threshold was first met.
    pub threshold_met_at: Option<DateTime<Utc>>,
    /// Whether its start was approved (or needs no approval).
    pub approved: bool,
}

/// What the engine knows when it decides.
#[derive(Clone, Debug)]
pub struct Situation<'a> {
    /// The request.
    pub spec: &'a NewRollout,
    /// Its state.
    pub state: State,
    /// The current wave.
    pub current: usize,
    /// Every wave, in order.
    pub waves: &'a [WaveView],
    /// Devices of waves up to the current one not yet queued (or found incompatible).
    pub pending: u64,
    /// The time.
    pub now: DateTime<Utc>,
}

/// What the engine does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing now.
    Wait,
    /// Start the first wave.
    Start,
    /// The current wave's success threshold is met now: record the time its soak starts.
    ThresholdMet,
    /// Start wave `to`.
    Advance {
        /// The wave to start.
        to: usize,
    },
    /// Wait for a person to approve wave `wave`.
    AwaitApproval {
        /// The gated wave.
        wave: usize,
    },
    /// A halt rule tripped.
    Halt {
        /// The wave whose rule tripped.
        wave: usize,
        /// Which and why.
        reason: String,
    },
    /// The end time passed before the rollout finished.
    End,
    /// The last wave met its threshold and soaked.
    Complete,
}

/// Decides the next step of a rollout.
pub fn decide(s: &Situation<'_>) -> Decision {
    match s.state {
        State::Scheduled => {
            if s.spec.end_at.is_some_and(|end| s.now >= end) {
                return Decision::End;
            }
            if s.spec.start_at.is_some_and(|start| s.now < start) {
                return Decision::Wait;
            }
            if s.spec.waves[0].approval && !s.waves[0].approved {
                return Decision::AwaitApproval { wave: 0 };
            }
            Decision::Start
        }
        State::Running => running(s),
        State::Paused | State::Halted | State::Completed | State::Canceled => Decision::Wait,
    }
}

fn running(s: &Situation<'_>) -> Decision {
    if s.spec.end_at.is_some_and(|end| s.now >= end) {
        return Decision::End;
    }
    for (i, wave) in s.waves.iter().enumerate().take(s.current + 1) {
        for rule in &s.spec.waves[i].halt {
            if let Some(reason) = wave.counts.tripped(rule) {
                return Decision::Halt {
                    wave: i,
                    reason: format!("wave {}: {reason}", i + 1),
                };
            }
        }
    }
    let wave = &s.waves[s.current];
    let spec = &s.spec.waves[s.current];
    if s.pending > 0 {
        return Decision::Wait;
    }
    let Some(met_at) = wave.threshold_met_at else {
        return if wave.counts.success_met(spec.success_percent) {
            Decision::ThresholdMet
        } else {
            Decision::Wait
        };
    };
    if s.now < met_at + Duration::seconds(i64::try_from(spec.soak_secs).unwrap_or(i64::MAX / 2)) {
        return Decision::Wait;
    }
    let next = s.current + 1;
    if next == s.waves.len() {
        return Decision::Complete;
    }
    if s.spec.waves[next].approval && !s.waves[next].approved {
        return Decision::AwaitApproval { wave: next };
    }
    Decision::Advance { to: next }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollouts::spec::Wave;

    fn spec(waves: Vec<Wave>) -> NewRollout {
        NewRollout {
            name: None,
            release: "r".into(),
            target: crate::rollouts::spec::Target::Group("g".into()),
            waves,
            in_progress_timeout_secs: 60,
            retry: Default::default(),
            start_at: None,
            end_at: None,
            maintenance_window: None,
            rate_per_minute: None,
        }
    }

    fn wave(size: Size, soak: u64) -> Wave {
        Wave {
            size,
            soak_secs: soak,
            success_percent: 90.0,
            halt: vec![HaltRule {
                on: FailureKind::Failed,
                rate_percent: Some(20.0),
                count: Some(5),
            }],
            approval: false,
        }
    }

    #[test]
    fn cuts_are_cumulative_and_never_split_a_bucket() {
        let buckets = [3, 7, 7, 7, 100, 200, 9000, 9999];
        let cuts = cut_waves(
            &buckets.into_iter().collect(),
            &[Size::Count(2), Size::Percent(75.0), Size::Percent(100.0)],
        );
        assert_eq!(
            cuts[0],
            Cut {
                cumulative: 4,
                threshold: 8
            }
        );
        assert_eq!(
            cuts[1],
            Cut {
                cumulative: 6,
                threshold: 201
            }
        );
        assert_eq!(
            cuts[2],
            Cut {
                cumulative: 8,
                threshold: BUCKETS
            }
        );
        assert_eq!(wave_of(7, &cuts), 0);
        assert_eq!(wave_of(8, &cuts), 1);
        assert_eq!(wave_of(9999, &cuts), 2);
        let empty = cut_waves(
            &Histogram::default(),
            &[Size::Percent(10.0), Size::Percent(100.0)],
        );
        assert!(empty.iter().all(|c| c.cumulative == 0));
    }

    #[test]
    fn each_device_lands_in_exactly_the_wave_its_threshold_says() {
        let mut buckets: Vec<u16> = (0..1000u32).map(|i| ((i * 7919) % 10_000) as u16).collect();
        buckets.sort_unstable();
        let cuts = cut_waves(
            &buckets.iter().copied().collect(),
            &[
                Size::Percent(1.0),
                Size::Percent(10.0),
                Size::Percent(100.0),
            ],
        );
        for (i, cut) in cuts.iter().enumerate() {
            let covered = buckets.iter().filter(|b| **b < cut.threshold).count();
            assert_eq!(covered, cut.cumulative, "wave {i}");
        }
        assert_eq!(cuts[0].cumulative, 10);
        assert_eq!(cuts[1].cumulative, 100);
    }

    #[test]
    fn windows_open_for_their_duration_in_their_zone() {
        let w = WindowSchedule::parse(&Window {
            cron: "0 2 * * *".into(),
            duration_secs: 3600,
            time_zone: "Europe/Berlin".into(),
        })
        .unwrap();
        // 02:30 in Berlin (winter, UTC+1) is 01:30 UTC.
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert!(w.is_open(at("2026-11-27T01:30:00Z")));
        assert!(!w.is_open(at("2026-11-27T02:30:00Z")));
        assert!(!w.is_open(at("2026-11-27T00:59:00Z")));
        assert_eq!(
            w.next_open(at("2026-11-27T02:30:00Z")),
            Some(at("2026-11-28T01:00:00Z"))
        );
    }

    #[test]
    fn the_rate_limit_refills_up_to_a_minute() {
        let t0: DateTime<Utc> = "2026-11-27T00:00:00Z".parse().unwrap();
        assert_eq!(refill(60, 0.0, None, t0), 60.0);
        assert_eq!(refill(60, 0.0, Some(t0), t0 + Duration::seconds(30)), 30.0);
        assert_eq!(refill(60, 50.0, Some(t0), t0 + Duration::seconds(30)), 60.0);
    }

    #[test]
    fn a_wave_advances_after_threshold_and_soak_and_halts_on_failures() {
        let spec = spec(vec![
            wave(Size::Percent(10.0), 60),
            wave(Size::Percent(100.0), 0),
        ]);
        let t0: DateTime<Utc> = "2026-11-27T00:00:00Z".parse().unwrap();
        let mut waves = [
            WaveView {
                counts: Counts {
                    planned: 10,
                    succeeded: 8,
                    in_progress: 2,
                    ..Counts::default()
                },
                threshold_met_at: None,
                approved: true,
            },
            WaveView {
                counts: Counts::default(),
                threshold_met_at: None,
                approved: true,
            },
        ];
        let d = |spec: &NewRollout, waves: &[WaveView], current: usize, pending: u64, now| {
            decide(&Situation {
                spec,
                state: State::Running,
                current,
                waves,
                pending,
                now,
            })
        };
        assert_eq!(d(&spec, &waves, 0, 0, t0), Decision::Wait);
        waves[0].counts.succeeded = 9;
        waves[0].counts.in_progress = 1;
        assert_eq!(d(&spec, &waves, 0, 0, t0), Decision::ThresholdMet);
        waves[0].threshold_met_at = Some(t0);
        assert_eq!(d(&spec, &waves, 0, 0, t0), Decision::Wait);
        let later = t0 + Duration::seconds(60);
        assert_eq!(d(&spec, &waves, 0, 0, later), Decision::Advance { to: 1 });
        assert_eq!(
            d(&spec, &waves, 0, 3, later),
            Decision::Wait,
            "devices still to queue"
        );
        waves[0].counts.failed = 2;
        assert!(matches!(
            d(&spec, &waves, 0, 0, later),
            Decision::Halt { wave: 0, .. }
        ));
        waves[0].counts.failed = 0;
        let mut gated = spec.clone();
        gated.waves[1].approval = true;
        waves[1].approved = false;
        assert_eq!(
            d(&gated, &waves, 0, 0, later),
            Decision::AwaitApproval { wave: 1 }
        );
        waves[1].approved = true;
        assert_eq!(d(&gated, &waves, 0, 0, later), Decision::Advance { to: 1 });
        waves[1].threshold_met_at = Some(t0);
        assert_eq!(d(&gated, &waves, 1, 0, later), Decision::Complete);
    }

    #[test]
    fn halt_rules_count_and_rate() {
        let c = Counts {
            planned: 100,
            incompatible: 20,
            failed: 4,
            ..Counts::default()
        };
        let rate = HaltRule {
            on: FailureKind::Failed,
            rate_percent: Some(5.0),
            count: None,
        };
        assert!(c.tripped(&rate).is_some(), "4 of 80 is 5 %");
        let count = HaltRule {
            on: FailureKind::Any,
            rate_percent: None,
            count: Some(5),
        };
        assert!(c.tripped(&count).is_none());
        let c = Counts { timed_out: 1, ..c };
        assert!(c.tripped(&count).is_some());
    }
}
