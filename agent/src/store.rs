//! The agent's persisted state: the install phase, the job document it is working on, the
//! version in each slot, the security floor and the jobs already finished. Saved with
//! [`write_atomic`] (temp file, fsync, rename, fsync the directory) before every step that
//! crosses IO or a reboot, so a power cut leaves either the old or the new state, never a
//! torn one.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fleetwave_artifacts::file::write_atomic;
use serde::{Deserialize, Serialize};

use crate::state::machine::{Phase, Slot};

/// Jobs remembered as finished (the oldest are forgotten first).
const REMEMBERED: usize = 64;

/// The job document being worked on, as received (the manifest verbatim).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Work {
    /// Job id.
    pub job: String,
    /// Execution number.
    pub execution: u64,
    /// The signed manifest envelope, verbatim.
    pub manifest: String,
    /// Where to download the image.
    pub url: String,
    /// Bytes fetched over HTTP for this job, including any fetched again after a break.
    #[serde(default)]
    pub fetched: u64,
}

/// Everything that survives a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The install phase.
    pub phase: Phase,
    /// The job being worked on.
    pub work: Option<Work>,
    /// The version in slot A, if known.
    pub version_a: Option<String>,
    /// The version in slot B, if known.
    pub version_b: Option<String>,
    /// The highest security floor of any committed release.
    pub security_floor: Option<String>,
    /// Finished (job, execution number) pairs, newest last.
    pub finished: Vec<(String, u64)>,
}

impl State {
    /// The version in `slot`.
    pub fn version(&self, slot: Slot) -> Option<&str> {
        match slot {
            Slot::A => self.version_a.as_deref(),
            Slot::B => self.version_b.as_deref(),
        }
    }

    /// Records the version now in `slot`.
    pub fn set_version(&mut self, slot: Slot, version: Option<String>) {
        match slot {
            Slot::A => self.version_a = version,
            Slot::B => self.version_b = version,
        }
    }

    /// Whether (job, execution) was already run to its end.
    pub fn is_finished(&self, job: &str, execution: u64) -> bool {
        self.finished
            .iter()
            .any(|(j, n)| j == job && *n >= execution)
    }

    /// Remembers (job, execution) as finished.
    pub fn finish(&mut self, job: &str, execution: u64) {
        self.finished.retain(|(j, _)| j != job);
        self.finished.push((job.to_owned(), execution));
        if self.finished.len() > REMEMBERED {
            self.finished.remove(0);
        }
    }
}

/// The state file in the data directory.
pub struct Store {
    path: PathBuf,
}

impl Store {
    /// The store under `data_dir` (created if missing).
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
        Ok(Store {
            path: data_dir.join("state.json"),
        })
    }

    /// The saved state, or a fresh one (Idle, the booted slot running `version`).
    pub fn load(&self, booted: Slot, version: &str) -> Result<State> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not an agent state", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut state = State {
                    phase: Phase::Idle,
                    work: None,
                    version_a: None,
                    version_b: None,
                    security_floor: None,
                    finished: Vec::new(),
                };
                state.set_version(booted, Some(version.to_owned()));
                Ok(state)
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    /// Saves `state` crash-safely.
    pub fn save(&self, state: &State) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(state).expect("the state serialises");
        write_atomic(&self.path, &bytes).with_context(|| format!("saving {}", self.path.display()))
    }
}
