//! U-Boot: the environment, read with `fw_printenv` and written with `fw_setenv`, carries
//! the boot decision. fleetwave's variables, for the board's boot script:
//!
//! - `fleetwave_slot` (`a` or `b`): the committed slot, booted by default;
//! - `fleetwave_trial`: the slot to try;
//! - `upgrade_available` (`1` during a trial) with U-Boot's own `bootcount`/`bootlimit`: while
//!   it is 1 the script boots `fleetwave_trial`; once `bootcount` passes `bootlimit`,
//!   `altbootcmd` clears `upgrade_available` and boots `fleetwave_slot` (U-Boot's standard
//!   boot-count limit), so a trial that never comes up falls back by itself.
//!
//! ```text
//! if test "${upgrade_available}" = 1; then setenv slot ${fleetwave_trial}; else setenv slot ${fleetwave_slot}; fi
//! altbootcmd=setenv upgrade_available 0; saveenv; setenv slot ${fleetwave_slot}; run bootslot
//! ```
//!
//! The agent arms a trial by writing `fleetwave_trial`, `bootcount=0`, then
//! `upgrade_available=1` last; commits by writing `fleetwave_slot` then clearing
//! `upgrade_available`; aborts by clearing `upgrade_available` and rebooting.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::Bootloader;
use crate::config::Slots;
use crate::state::machine::Slot;

/// The U-Boot backend.
pub struct Uboot {
    a: PathBuf,
    b: PathBuf,
    printenv: Vec<String>,
    setenv: Vec<String>,
    reboot: Vec<String>,
}

fn name(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "a",
        Slot::B => "b",
    }
}

fn parse_slot(value: Option<&String>, default: Slot) -> Result<Slot> {
    match value.map(String::as_str) {
        None | Some("") => Ok(default),
        Some("a") => Ok(Slot::A),
        Some("b") => Ok(Slot::B),
        Some(other) => bail!("the U-Boot environment names slot {other:?}, not a or b"),
    }
}

fn run(command: &[String], args: &[&str]) -> Result<String> {
    let (program, fixed) = command.split_first().context("an empty command")?;
    let out = std::process::Command::new(program)
        .args(fixed)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Uboot {
    /// From the `[slots]` configuration.
    pub fn new(slots: &Slots) -> Result<Self> {
        if slots.reboot_command.is_empty() {
            bail!("slots.reboot_command is required");
        }
        Ok(Uboot {
            a: slots.a.clone(),
            b: slots.b.clone(),
            printenv: slots.printenv_command.clone(),
            setenv: slots.setenv_command.clone(),
            reboot: slots.reboot_command.clone(),
        })
    }

    /// fleetwave's variables as `fw_printenv` shows them (missing ones absent).
    pub fn env(&self) -> Result<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        for var in [
            "fleetwave_slot",
            "fleetwave_trial",
            "upgrade_available",
            "bootcount",
        ] {
            // fw_printenv fails on an unset variable; that is not an error here.
            if let Ok(out) = run(&self.printenv, &[var]) {
                for line in out.lines() {
                    if let Some((k, v)) = line.split_once('=') {
                        env.insert(k.trim().to_owned(), v.trim().to_owned());
                    }
                }
            }
        }
        Ok(env)
    }

    fn set(&self, var: &str, value: &str) -> Result<()> {
        run(&self.setenv, &[var, value]).map(|_| ())
    }
}

impl Bootloader for Uboot {
    fn booted(&mut self) -> Result<(Slot, bool)> {
        let env = self.env()?;
        let committed = parse_slot(env.get("fleetwave_slot"), Slot::A)?;
        if env.get("upgrade_available").map(String::as_str) == Some("1") {
            let trial = parse_slot(env.get("fleetwave_trial"), committed.other())?;
            return Ok((trial, true));
        }
        Ok((committed, false))
    }

    fn slot_path(&self, slot: Slot) -> PathBuf {
        match slot {
            Slot::A => self.a.clone(),
            Slot::B => self.b.clone(),
        }
    }

    fn arm_trial(&mut self, slot: Slot) -> Result<()> {
        self.set("fleetwave_trial", name(slot))?;
        self.set("bootcount", "0")?;
        self.set("upgrade_available", "1")
    }

    fn commit(&mut self, slot: Slot) -> Result<()> {
        self.set("fleetwave_slot", name(slot))?;
        self.set("upgrade_available", "0")?;
        self.set("bootcount", "0")
    }

    fn reboot(&mut self, trial: bool) -> Result<()> {
        if !trial {
            // Back to the committed slot: no trial may be pending.
            self.set("upgrade_available", "0")?;
        }
        run(&self.reboot, &[]).map(|_| ())
    }
}
