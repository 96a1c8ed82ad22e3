//! Boot slots behind one trait: which slot runs and whether this boot is a one-shot trial,
//! where each slot's bytes go, arming a trial, committing, and rebooting. `tryboot` drives a
//! Raspberry Pi's firmware; `uboot` the U-Boot environment; `file` simulates the same semantics with slot image files for
//! tests and the demo.

pub mod file;
pub mod tryboot;
pub mod uboot;

use std::path::PathBuf;

use anyhow::Result;

use crate::config::{Backend, Config};
use crate::state::machine::Slot;

/// What the agent needs from a bootloader.
pub trait Bootloader: Send + Sync {
    /// The slot running now, and whether this boot is a one-shot trial.
    fn booted(&mut self) -> Result<(Slot, bool)>;
    /// Where `slot`'s image is written (a block device or a file).
    fn slot_path(&self, slot: Slot) -> PathBuf;
    /// Makes the next boot (only) a trial of `slot`.
    fn arm_trial(&mut self, slot: Slot) -> Result<()>;
    /// Makes `slot` the default for every boot.
    fn commit(&mut self, slot: Slot) -> Result<()>;
    /// Reboots, into the armed trial when `trial`, otherwise into the default slot. With
    /// the file backend this returns and the process must exit (see [`REBOOT_EXIT`]).
    fn reboot(&mut self, trial: bool) -> Result<()>;
}

/// The exit status by which the file backend's "reboot" asks its supervisor to start the
/// agent again (EX_TEMPFAIL).
pub const REBOOT_EXIT: i32 = 75;

/// The configured backend.
pub fn open(config: &Config) -> Result<Box<dyn Bootloader>> {
    Ok(match config.slots.backend {
        Backend::File => Box::new(file::FileSlots::new(
            config.slots.a.clone(),
            config.slots.b.clone(),
            config.data_dir.join("bootloader.json"),
        )),
        Backend::Tryboot => Box::new(tryboot::Tryboot::new(&config.slots)?),
        Backend::Uboot => Box::new(uboot::Uboot::new(&config.slots)?),
    })
}
