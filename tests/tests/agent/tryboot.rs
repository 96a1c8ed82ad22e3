//! The boot backends on fake boot trees: Raspberry Pi tryboot (autoboot.txt, the device-tree
//! flags the firmware sets) and U-Boot (an environment behind fake fw_printenv/fw_setenv),
//! each with a reboot command that records its arguments.

use std::path::Path;

use fleetwave_agent::config::{Backend, Slots};
use fleetwave_agent::slots::Bootloader;
use fleetwave_agent::slots::tryboot::Tryboot;
use fleetwave_agent::slots::uboot::Uboot;
use fleetwave_agent::state::machine::Slot;

/// What the firmware says about this boot.
fn firmware(tree: &Path, partition: u32, trial: bool) {
    let dir = tree.join("chosen/bootloader");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("partition"), partition.to_be_bytes()).unwrap();
    std::fs::write(dir.join("tryboot"), u32::from(trial).to_be_bytes()).unwrap();
}

fn autoboot(boot: &Path) -> String {
    std::fs::read_to_string(boot.join("autoboot.txt")).unwrap()
}

#[test]
fn tryboot_switches_detects_the_trial_commits_and_aborts() {
    let tmp = tempfile::tempdir().unwrap();
    let boot = tmp.path().join("boot");
    let tree = tmp.path().join("device-tree");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::write(
        boot.join("autoboot.txt"),
        "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n",
    )
    .unwrap();
    let record = tmp.path().join("reboots");
    let script = tmp.path().join("reboot.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$*\" >> {}\n", record.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let slots = Slots {
        backend: Backend::Tryboot,
        a: "/dev/mmcblk0p2".into(),
        b: "/dev/mmcblk0p3".into(),
        boot_dir: Some(boot.clone()),
        device_tree_dir: Some(tree.clone()),
        reboot_command: vec![script.display().to_string()],
        printenv_command: vec![],
        setenv_command: vec![],
    };
    let mut pi = Tryboot::new(&slots).unwrap();
    firmware(&tree, 2, false);
    assert_eq!(pi.booted().unwrap(), (Slot::A, false));

    // Switch: the trial section names slot B; the reboot asks for tryboot.
    pi.arm_trial(Slot::B).unwrap();
    assert!(
        autoboot(&boot)
            .contains("[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3"),
        "{}",
        autoboot(&boot)
    );
    pi.reboot(true).unwrap();
    assert_eq!(std::fs::read_to_string(&record).unwrap(), "0 tryboot\n");
    // The firmware booted B once, as a trial.
    firmware(&tree, 3, true);
    assert_eq!(pi.booted().unwrap(), (Slot::B, true));
    assert_eq!(
        pi.default_slot().unwrap(),
        Slot::A,
        "the default is still A during the trial"
    );

    // Abort: a plain reboot, the firmware comes back on A.
    pi.reboot(false).unwrap();
    assert_eq!(std::fs::read_to_string(&record).unwrap(), "0 tryboot\n\n");
    firmware(&tree, 2, false);
    assert_eq!(pi.booted().unwrap(), (Slot::A, false));
    assert_eq!(pi.default_slot().unwrap(), Slot::A);

    // Try again and commit: B becomes the default, A the next trial.
    pi.arm_trial(Slot::B).unwrap();
    pi.reboot(true).unwrap();
    firmware(&tree, 3, true);
    pi.commit(Slot::B).unwrap();
    assert_eq!(pi.default_slot().unwrap(), Slot::B);
    assert!(
        autoboot(&boot)
            .contains("[all]\ntryboot_a_b=1\nboot_partition=3\n[tryboot]\nboot_partition=2")
    );
    firmware(&tree, 3, false);
    assert_eq!(pi.booted().unwrap(), (Slot::B, false));
    // No temporary files are left on the boot partition.
    let names: Vec<_> = std::fs::read_dir(&boot)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("autoboot.txt")]);
}

fn script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn uboot_arms_a_trial_commits_and_falls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let env = tmp.path().join("env");
    std::fs::write(&env, "fleetwave_slot=a\nbootlimit=1\n").unwrap();
    // fw_printenv NAME prints NAME=VALUE (failing when unset); fw_setenv NAME VALUE sets it.
    let printenv = tmp.path().join("fw_printenv");
    script(
        &printenv,
        &format!("grep \"^$1=\" {} || exit 1", env.display()),
    );
    let setenv = tmp.path().join("fw_setenv");
    script(
        &setenv,
        &format!(
            "grep -v \"^$1=\" {e} > {e}.new; echo \"$1=$2\" >> {e}.new; mv {e}.new {e}",
            e = env.display()
        ),
    );
    let record = tmp.path().join("reboots");
    let reboot = tmp.path().join("reboot");
    script(&reboot, &format!("echo reboot >> {}", record.display()));
    let slots = Slots {
        backend: Backend::Uboot,
        a: "/dev/mmcblk0p2".into(),
        b: "/dev/mmcblk0p3".into(),
        boot_dir: None,
        device_tree_dir: None,
        reboot_command: vec![reboot.display().to_string()],
        printenv_command: vec![printenv.display().to_string()],
        setenv_command: vec![setenv.display().to_string()],
    };
    let mut board = Uboot::new(&slots).unwrap();
    assert_eq!(board.booted().unwrap(), (Slot::A, false));
    board.arm_trial(Slot::B).unwrap();
    let vars = board.env().unwrap();
    assert_eq!(vars["upgrade_available"], "1");
    assert_eq!(vars["fleetwave_trial"], "b");
    assert_eq!(vars["bootcount"], "0");
    board.reboot(true).unwrap();
    // U-Boot booted the trial: the agent sees it.
    assert_eq!(board.booted().unwrap(), (Slot::B, true));
    // Abort: the trial flag is cleared before the reboot, so the committed slot comes back.
    board.reboot(false).unwrap();
    assert_eq!(board.booted().unwrap(), (Slot::A, false));
    assert_eq!(board.env().unwrap()["fleetwave_slot"], "a");
    // Try again and commit.
    board.arm_trial(Slot::B).unwrap();
    board.commit(Slot::B).unwrap();
    assert_eq!(board.booted().unwrap(), (Slot::B, false));
    let vars = board.env().unwrap();
    assert_eq!(
        (
            vars["fleetwave_slot"].as_str(),
            vars["upgrade_available"].as_str()
        ),
        ("b", "0")
    );
    assert_eq!(
        std::fs::read_to_string(&record).unwrap(),
        "reboot\nreboot\n"
    );
}
