//! Raspberry Pi tryboot: `autoboot.txt` on the boot partition with `tryboot_a_b=1` names the
//! default boot partition under `[all]` and the trial one under `[tryboot]`; a reboot with
//! the argument `0 tryboot` boots the trial once, and the firmware says so in the device
//! tree (`chosen/bootloader/tryboot`, with the partition booted in
//! `chosen/bootloader/partition`, both 4-byte big-endian). A plain reboot goes back to the
//! default. Every rewrite of `autoboot.txt` is crash-safe (temp file, fsync, rename).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use fleetwave_artifacts::file::write_atomic;

use super::Bootloader;
use crate::config::Slots;
use crate::state::machine::Slot;

/// The tryboot backend.
pub struct Tryboot {
    a: PathBuf,
    b: PathBuf,
    boot_dir: PathBuf,
    device_tree: PathBuf,
    reboot: Vec<String>,
}

/// The partition number at the end of a device path (`/dev/mmcblk0p3` → 3).
fn partition_of(path: &Path) -> Result<u32> {
    let name = path.to_string_lossy();
    let digits: String = name
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits
        .parse()
        .with_context(|| format!("{name} does not end in a partition number"))
}

fn read_be_u32(path: &Path) -> Result<u32> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let four: [u8; 4] = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{} holds fewer than 4 bytes", path.display()))?;
    Ok(u32::from_be_bytes(four))
}

impl Tryboot {
    /// From the `[slots]` configuration.
    pub fn new(slots: &Slots) -> Result<Self> {
        let boot_dir = slots
            .boot_dir
            .clone()
            .context("slots.boot_dir is required")?;
        let device_tree = slots
            .device_tree_dir
            .clone()
            .context("slots.device_tree_dir is required")?;
        partition_of(&slots.a)?;
        partition_of(&slots.b)?;
        if slots.reboot_command.is_empty() {
            bail!("slots.reboot_command is required");
        }
        Ok(Tryboot {
            a: slots.a.clone(),
            b: slots.b.clone(),
            boot_dir,
            device_tree,
            reboot: slots.reboot_command.clone(),
        })
    }

    fn partition(&self, slot: Slot) -> u32 {
        partition_of(&self.slot_path(slot)).expect("checked at construction")
    }

    fn write_autoboot(&self, default: Slot, trial: Slot) -> Result<()> {
        let text = format!(
            "# Written by fleetwave-agent: the default slot under [all], the trial under [tryboot].\n\
             [all]\ntryboot_a_b=1\nboot_partition={}\n[tryboot]\nboot_partition={}\n",
            self.partition(default),
            self.partition(trial)
        );
        write_atomic(&self.boot_dir.join("autoboot.txt"), text.as_bytes())
            .context("rewriting autoboot.txt")
    }

    /// The slot `autoboot.txt` boots by default (A when it names none).
    pub fn default_slot(&self) -> Result<Slot> {
        let path = self.boot_dir.join("autoboot.txt");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Slot::A),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut section = String::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.to_owned();
            } else if section == "[all]" {
                if let Some(p) = line.strip_prefix("boot_partition=") {
                    let p: u32 = p.trim().parse().context("boot_partition in autoboot.txt")?;
                    return self.slot_of(p);
                }
            }
        }
        Ok(Slot::A)
    }

    fn slot_of(&self, partition: u32) -> Result<Slot> {
        if partition == self.partition(Slot::A) {
            Ok(Slot::A)
        } else if partition == self.partition(Slot::B) {
            Ok(Slot::B)
        } else {
            bail!("partition {partition} is neither slot")
        }
    }
}

impl Bootloader for Tryboot {
    fn booted(&mut self) -> Result<(Slot, bool)> {
        let chosen = self.device_tree.join("chosen/bootloader");
        let trial = match read_be_u32(&chosen.join("tryboot")) {
            Ok(v) => v != 0,
            Err(_) if !chosen.join("tryboot").exists() => false,
            Err(e) => return Err(e),
        };
        let slot = match read_be_u32(&chosen.join("partition")) {
            Ok(p) => self.slot_of(p)?,
            // Older firmware does not say: the trial partition on a trial, else the default.
            Err(_) => {
                let default = self.default_slot()?;
                if trial { default.other() } else { default }
            }
        };
        Ok((slot, trial))
    }

    fn slot_path(&self, slot: Slot) -> PathBuf {
        match slot {
            Slot::A => self.a.clone(),
            Slot::B => self.b.clone(),
        }
    }

    fn arm_trial(&mut self, slot: Slot) -> Result<()> {
        let default = self.default_slot()?;
        if default == slot {
            bail!("slot {slot:?} is already the default; nothing to try");
        }
        self.write_autoboot(default, slot)
    }

    fn commit(&mut self, slot: Slot) -> Result<()> {
        self.write_autoboot(slot, slot.other())
    }

    fn reboot(&mut self, trial: bool) -> Result<()> {
        let (program, args) = self.reboot.split_first().context("no reboot command")?;
        let mut cmd = std::process::Command::new(program);
        cmd.args(args);
        if trial {
            cmd.arg("0 tryboot");
        }
        let status = cmd
            .status()
            .with_context(|| format!("running the reboot command {program}"))?;
        if !status.success() {
            bail!("the reboot command {program} failed: {status}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_come_from_device_names() {
        assert_eq!(partition_of(Path::new("/dev/mmcblk0p3")).unwrap(), 3);
        assert_eq!(partition_of(Path::new("/dev/sda12")).unwrap(), 12);
        assert!(partition_of(Path::new("/dev/root")).is_err());
    }
}
