//! The install state machine, pure: `step(phase, event) -> (phase, actions)`. It does no IO;
//! the executor performs the actions, persists the phase before any action that crosses IO
//! or a reboot ([`Action::Persist`] comes first in such lists), and feeds back what
//! happened. On every process start the executor sends [`Event::Started`] with what the
//! bootloader says, and the machine resumes from the persisted phase, so a power cut at any
//! point ends on a bootable slot with a true report.
//!
//! ```text
//! Idle ─Offered─► Downloading ─Downloaded─► Verifying ─Verified─► Switching ─Switched─►
//! Rebooting ─Started(trial, on target)─► HealthCheck ─HealthPassed─► Committing ─Committed─►
//! Reporting(SUCCEEDED) ─Reported─► Idle
//! refusals and failures before the switch ─► Reporting(REJECTED | FAILED), device unchanged
//! failures on the trial boot ─► RollingBack ─Started(on the old slot)─► Reporting(FAILED)
//! ```

use serde::{Deserialize, Serialize};

/// A boot slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// The job being installed, as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Job id.
    pub id: String,
    /// Version being installed.
    pub version: String,
    /// The slot being written (the inactive one when the job began).
    pub target: Slot,
    /// The image's signed size.
    pub size: u64,
}

/// Why something failed, as reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Stable code (`digest_mismatch`, `health_check_failed`, ...).
    pub code: String,
    /// Detail.
    pub message: String,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Failure {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Booted the new slot, healthy, committed.
    Succeeded,
    /// Refused before changing anything.
    Rejected(Failure),
    /// Tried and failed; the device runs its old slot.
    Failed(Failure),
}

/// Where the agent stands; persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// No job.
    Idle,
    /// Writing the image into the target slot; `written` bytes are there already.
    Downloading {
        /// The job.
        job: Job,
        /// Bytes written and hashed so far.
        written: u64,
    },
    /// Reading the slot back and checking size and digest.
    Verifying {
        /// The job.
        job: Job,
    },
    /// Telling the bootloader to try the target slot once.
    Switching {
        /// The job.
        job: Job,
    },
    /// Rebooting into the trial; `attempts` trial reboots were asked for.
    Rebooting {
        /// The job.
        job: Job,
        /// Trial reboots asked for so far.
        attempts: u8,
    },
    /// Running on the trial boot, checking health.
    HealthCheck {
        /// The job.
        job: Job,
    },
    /// Making the target slot the default.
    Committing {
        /// The job.
        job: Job,
    },
    /// Going back to the old slot with a plain reboot.
    RollingBack {
        /// The job.
        job: Job,
        /// Why.
        failure: Failure,
    },
    /// The outcome is decided; reporting it.
    Reporting {
        /// The job.
        job: Job,
        /// How it ended.
        outcome: Outcome,
    },
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A job whose manifest verified and whose install rules hold.
    Offered(Job),
    /// A job refused before download (signature, rules, hardware).
    Refused(Job, Failure),
    /// Progress of the download (bytes written so far).
    Progress(u64),
    /// Every signed byte is in the slot.
    Downloaded,
    /// Verification of the written slot passed.
    Verified,
    /// The bootloader will try the target once on the next boot.
    Switched,
    /// The health check passed.
    HealthPassed,
    /// The target slot is now the default.
    Committed,
    /// The outcome reached the service.
    Reported,
    /// A step failed (download, verify, switch, health, commit).
    Failed(Failure),
    /// The process started: whether this is a trial boot, and which slot is running.
    Started {
        /// The bootloader says this boot is a one-shot trial.
        trial: bool,
        /// The slot running now.
        booted: Slot,
    },
}

/// What the executor must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write the new phase to disk (temp file, fsync, rename, fsync the directory).
    Persist,
    /// Download into `slot` from byte `from` (HTTP Range when above 0).
    Download {
        /// Where.
        slot: Slot,
        /// First byte to fetch.
        from: u64,
    },
    /// Read `slot` back and check size and digest.
    Verify {
        /// Which.
        slot: Slot,
    },
    /// Arrange a one-shot trial boot of `slot`.
    SwitchToTrial {
        /// Which.
        slot: Slot,
    },
    /// Reboot: into the trial, or plainly (back to the default slot).
    Reboot {
        /// A trial reboot.
        trial: bool,
    },
    /// Run the health check.
    CheckHealth,
    /// Make `slot` the default boot slot.
    Commit {
        /// Which.
        slot: Slot,
    },
    /// Report progress of the job (IN_PROGRESS with a step).
    ReportProgress,
    /// Report the outcome.
    ReportOutcome,
}

/// Trial reboots asked for before a trial that never comes up counts as failed.
pub const MAX_TRIAL_REBOOTS: u8 = 2;

/// One transition. Events that make no sense in a phase leave it unchanged, with no action.
pub fn step(phase: Phase, event: Event) -> (Phase, Vec<Action>) {
    use Action as A;
    use Event as E;
    use Phase as P;
    let report = |job: Job, outcome: Outcome| {
        (
            P::Reporting { job, outcome },
            vec![A::Persist, A::ReportOutcome],
        )
    };
    match (phase, event) {
        (P::Idle, E::Offered(job)) => {
            let slot = job.target;
            (
                P::Downloading { job, written: 0 },
                vec![A::Persist, A::ReportProgress, A::Download { slot, from: 0 }],
            )
        }
        (P::Idle, E::Refused(job, failure)) => report(job, Outcome::Rejected(failure)),

        (P::Downloading { job, .. }, E::Progress(written)) if written <= job.size => {
            (P::Downloading { job, written }, vec![A::Persist])
        }
        (P::Downloading { job, .. }, E::Downloaded) => {
            let slot = job.target;
            (
                P::Verifying { job },
                vec![A::Persist, A::ReportProgress, A::Verify { slot }],
            )
        }
        (P::Verifying { job }, E::Verified) => {
            let slot = job.target;
            (
                P::Switching { job },
                vec![A::Persist, A::ReportProgress, A::SwitchToTrial { slot }],
            )
        }
        (P::Switching { job }, E::Switched) => (
            P::Rebooting { job, attempts: 1 },
            vec![A::Persist, A::ReportProgress, A::Reboot { trial: true }],
        ),
        // Before the switch nothing on the running side changed: a failure is the end.
        (
            P::Downloading { job, .. } | P::Verifying { job } | P::Switching { job },
            E::Failed(failure),
        ) => {
            let outcome = if failure.code.starts_with("download") {
                Outcome::Failed(failure)
            } else {
                Outcome::Rejected(failure)
            };
            report(job, outcome)
        }
        (P::HealthCheck { job }, E::HealthPassed) => {
            let slot = job.target;
            (P::Committing { job }, vec![A::Persist, A::Commit { slot }])
        }
        (P::HealthCheck { job } | P::Committing { job }, E::Failed(failure)) => (
            P::RollingBack { job, failure },
            vec![A::Persist, A::Reboot { trial: false }],
        ),
        (P::Committing { job }, E::Committed) => report(job, Outcome::Succeeded),
        (P::Reporting { .. }, E::Reported) => (P::Idle, vec![A::Persist]),

        // Resuming after a crash, a power cut or a reboot.
        (phase, E::Started { trial, booted }) => resume(phase, trial, booted),
        (phase, _) => (phase, Vec::new()),
    }
}

fn resume(phase: Phase, trial: bool, booted: Slot) -> (Phase, Vec<Action>) {
    use Action as A;
    use Phase as P;
    let failed = |job: Job, code: &str, message: &str| {
        (
            P::Reporting {
                job,
                outcome: Outcome::Failed(Failure::new(code, message)),
            },
            vec![A::Persist, A::ReportOutcome],
        )
    };
    match phase {
        P::Idle => (P::Idle, Vec::new()),
        // The target slot is not the running one: continue where the bytes end.
        P::Downloading { job, written } => {
            let slot = job.target;
            (
                P::Downloading { job, written },
                vec![A::Download {
                    slot,
                    from: written,
                }],
            )
        }
        P::Verifying { job } => {
            let slot = job.target;
            (P::Verifying { job }, vec![A::Verify { slot }])
        }
        P::Switching { job } => {
            let slot = job.target;
            (P::Switching { job }, vec![A::SwitchToTrial { slot }])
        }
        P::Rebooting { job, attempts } => {
            if trial && booted == job.target {
                (
                    P::HealthCheck { job },
                    vec![A::Persist, A::ReportProgress, A::CheckHealth],
                )
            } else if attempts < MAX_TRIAL_REBOOTS {
                // Either the reboot never happened (a crash before it) or the trial did not
                // come up and the firmware fell back: try once more.
                let slot = job.target;
                (
                    P::Rebooting {
                        job,
                        attempts: attempts + 1,
                    },
                    vec![
                        A::Persist,
                        A::SwitchToTrial { slot },
                        A::Reboot { trial: true },
                    ],
                )
            } else {
                failed(
                    job,
                    "trial_boot_failed",
                    "the new slot did not come up on its trial boot",
                )
            }
        }
        P::HealthCheck { job } => {
            if trial && booted == job.target {
                (P::HealthCheck { job }, vec![A::CheckHealth])
            } else {
                failed(
                    job,
                    "health_check_interrupted",
                    "the trial boot ended before its health check passed",
                )
            }
        }
        P::Committing { job } => {
            if booted != job.target {
                failed(
                    job,
                    "commit_lost",
                    "the device restarted on its old slot before the commit took",
                )
            } else if trial {
                let slot = job.target;
                (P::Committing { job }, vec![A::Commit { slot }])
            } else {
                // Running the target without a trial: the commit took before the restart.
                (
                    P::Reporting {
                        job,
                        outcome: Outcome::Succeeded,
                    },
                    vec![A::Persist, A::ReportOutcome],
                )
            }
        }
        P::RollingBack { job, failure } => {
            if booted == job.target {
                (
                    P::RollingBack { job, failure },
                    vec![A::Reboot { trial: false }],
                )
            } else {
                (
                    P::Reporting {
                        job,
                        outcome: Outcome::Failed(failure),
                    },
                    vec![A::Persist, A::ReportOutcome],
                )
            }
        }
        // A success is only true while the new slot runs: if the device came back on the old
        // one before the report went out, report that instead.
        P::Reporting {
            job,
            outcome: Outcome::Succeeded,
        } if booted != job.target => failed(
            job,
            "reverted_after_commit",
            "the device restarted on its old slot after committing the new one",
        ),
        P::Reporting { job, outcome } => (P::Reporting { job, outcome }, vec![A::ReportOutcome]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            id: "j1".into(),
            version: "2.0.0".into(),
            target: Slot::B,
            size: 100,
        }
    }

    /// Runs events from `phase`, returning the last phase and every action.
    fn run(mut phase: Phase, events: Vec<Event>) -> (Phase, Vec<Action>) {
        let mut all = Vec::new();
        for e in events {
            let (next, actions) = step(phase, e);
            phase = next;
            all.extend(actions);
        }
        (phase, all)
    }

    #[test]
    fn the_happy_path_persists_before_every_boundary() {
        let started_trial = Event::Started {
            trial: true,
            booted: Slot::B,
        };
        let (phase, actions) = run(
            Phase::Idle,
            vec![
                Event::Offered(job()),
                Event::Progress(50),
                Event::Downloaded,
                Event::Verified,
                Event::Switched,
                started_trial,
                Event::HealthPassed,
                Event::Committed,
            ],
        );
        assert_eq!(
            phase,
            Phase::Reporting {
                job: job(),
                outcome: Outcome::Succeeded
            }
        );
        assert!(actions.contains(&Action::Reboot { trial: true }));
        assert!(actions.contains(&Action::Commit { slot: Slot::B }));
        // Every reboot, switch and commit comes after a Persist in the same list.
        for boundary in [
            Action::Reboot { trial: true },
            Action::SwitchToTrial { slot: Slot::B },
            Action::Commit { slot: Slot::B },
        ] {
            let at = actions.iter().position(|a| *a == boundary).unwrap();
            assert!(actions[..at].contains(&Action::Persist), "{boundary:?}");
        }
        let (idle, _) = step(phase, Event::Reported);
        assert_eq!(idle, Phase::Idle);
    }

    /// A restart in every phase, on either slot, trial or not: the machine always ends on a
    /// defined phase whose report is true, and never commits a slot that is not running.
    #[test]
    fn a_restart_anywhere_resumes_truthfully() {
        let phases = vec![
            Phase::Idle,
            Phase::Downloading {
                job: job(),
                written: 40,
            },
            Phase::Verifying { job: job() },
            Phase::Switching { job: job() },
            Phase::Rebooting {
                job: job(),
                attempts: 1,
            },
            Phase::Rebooting {
                job: job(),
                attempts: MAX_TRIAL_REBOOTS,
            },
            Phase::HealthCheck { job: job() },
            Phase::Committing { job: job() },
            Phase::RollingBack {
                job: job(),
                failure: Failure::new("health_check_failed", "x"),
            },
            Phase::Reporting {
                job: job(),
                outcome: Outcome::Succeeded,
            },
        ];
        for phase in phases {
            for (trial, booted) in [(false, Slot::A), (true, Slot::B), (false, Slot::B)] {
                let (next, actions) = step(phase.clone(), Event::Started { trial, booted });
                if actions.contains(&Action::Commit { slot: Slot::B }) {
                    assert!(
                        booted == Slot::B && trial,
                        "{phase:?}: commit only on the running trial"
                    );
                }
                if let Phase::Reporting {
                    outcome: Outcome::Succeeded,
                    ..
                } = &next
                {
                    assert_eq!(
                        booted,
                        Slot::B,
                        "{phase:?}: success only when the new slot runs"
                    );
                }
                if matches!(phase, Phase::Downloading { .. }) {
                    assert_eq!(
                        actions,
                        vec![Action::Download {
                            slot: Slot::B,
                            from: 40
                        }],
                        "resume the download"
                    );
                }
            }
        }
    }

    #[test]
    fn failures_end_in_a_true_report() {
        // A bad download before the switch: the device never changed.
        let (phase, _) = run(
            Phase::Idle,
            vec![
                Event::Offered(job()),
                Event::Failed(Failure::new("digest_mismatch", "bad bytes")),
            ],
        );
        assert!(matches!(
            phase,
            Phase::Reporting {
                outcome: Outcome::Rejected(_),
                ..
            }
        ));

        // A failed health check rolls back, and reports FAILED once on the old slot.
        let (phase, actions) = run(
            Phase::HealthCheck { job: job() },
            vec![Event::Failed(Failure::new(
                "health_check_failed",
                "no network",
            ))],
        );
        assert_eq!(
            actions,
            vec![Action::Persist, Action::Reboot { trial: false }]
        );
        let (phase, _) = step(
            phase,
            Event::Started {
                trial: false,
                booted: Slot::A,
            },
        );
        assert!(
            matches!(&phase, Phase::Reporting { outcome: Outcome::Failed(f), .. } if f.code == "health_check_failed")
        );

        // A trial that never comes up: one more try, then FAILED.
        let (phase, _) = step(
            Phase::Rebooting {
                job: job(),
                attempts: 1,
            },
            Event::Started {
                trial: false,
                booted: Slot::A,
            },
        );
        assert_eq!(
            phase,
            Phase::Rebooting {
                job: job(),
                attempts: 2
            }
        );
        let (phase, _) = step(
            phase,
            Event::Started {
                trial: false,
                booted: Slot::A,
            },
        );
        assert!(
            matches!(&phase, Phase::Reporting { outcome: Outcome::Failed(f), .. } if f.code == "trial_boot_failed")
        );
    }

    #[test]
    fn phases_survive_persistence() {
        let p = Phase::Rebooting {
            job: job(),
            attempts: 1,
        };
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Phase>(&text).unwrap(), p);
    }
}
