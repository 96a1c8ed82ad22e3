//! Slot image files and a simulated bootloader with the firmware's one-shot trial
//! semantics, kept in `bootloader.json`: a reboot boots the armed trial slot once (and
//! disarms it) or else the default slot. A reboot is a restart of the agent process.

use std::path::PathBuf;

use anyhow::{Context, Result};
use fleetwave_artifacts::file::write_atomic;
use serde::{Deserialize, Serialize};

use super::Bootloader;
use crate::state::machine::Slot;

/// The simulated firmware's memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firmware {
    /// The slot booted by default.
    pub default: Slot,
    /// A slot to boot once, on the next boot.
    pub trial: Option<Slot>,
    /// What the current boot is: the slot, and whether it is the one-shot trial.
    pub booted: Slot,
    /// Whether the current boot is a trial.
    pub booted_trial: bool,
}

/// File-backed slots.
pub struct FileSlots {
    a: PathBuf,
    b: PathBuf,
    state: PathBuf,
}

impl FileSlots {
    /// Slots `a` and `b`, the firmware's memory in `state`.
    pub fn new(a: PathBuf, b: PathBuf, state: PathBuf) -> Self {
        FileSlots { a, b, state }
    }

    /// The simulated firmware's memory (a fresh device boots A).
    pub fn firmware(&self) -> Result<Firmware> {
        match std::fs::read(&self.state) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a bootloader state", self.state.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Firmware {
                default: Slot::A,
                trial: None,
                booted: Slot::A,
                booted_trial: false,
            }),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.state.display())),
        }
    }

    fn save(&self, f: &Firmware) -> Result<()> {
        write_atomic(&self.state, &serde_json::to_vec(f).expect("serialises"))
            .with_context(|| format!("writing {}", self.state.display()))
    }
}

impl Bootloader for FileSlots {
    fn booted(&mut self) -> Result<(Slot, bool)> {
        let f = self.firmware()?;
        Ok((f.booted, f.booted_trial))
    }

    fn slot_path(&self, slot: Slot) -> PathBuf {
        match slot {
            Slot::A => self.a.clone(),
            Slot::B => self.b.clone(),
        }
    }

    fn arm_trial(&mut self, slot: Slot) -> Result<()> {
        let mut f = self.firmware()?;
        f.trial = Some(slot);
        self.save(&f)
    }

    fn commit(&mut self, slot: Slot) -> Result<()> {
        let mut f = self.firmware()?;
        f.default = slot;
        self.save(&f)
    }

    fn reboot(&mut self, trial: bool) -> Result<()> {
        let mut f = self.firmware()?;
        // What the firmware does on the next boot: the armed trial once, else the default.
        match f.trial.take().filter(|_| trial) {
            Some(slot) => {
                f.booted = slot;
                f.booted_trial = true;
            }
            None => {
                f.booted = f.default;
                f.booted_trial = false;
            }
        }
        self.save(&f)
    }
}
