//! The workspace's binaries (`fleetwave`, `fleetwave-agent`) as real processes. Cargo builds
//! them with the tests (`cargo test --workspace`, `cargo nextest run --workspace`) into the
//! target/<profile>/ directory as the test and bench executables.

use std::path::PathBuf;

/// The path of workspace binary `name`, next to the running test executable.
pub fn path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // Tests live in target/<profile>/deps/, bench binaries in target/<profile>/.
    let mut dir = exe.parent().expect("an executable lives in a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps/ has a parent");
    }
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace's binaries (cargo build --workspace) before the tests",
        bin.display()
    );
    bin
}

/// A `Command` for workspace binary `name`, with no FLEETWAVE__ overrides inherited.
pub fn command(name: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(path(name));
    for (key, _) in std::env::vars() {
        if key.starts_with("FLEETWAVE__") {
            cmd.env_remove(key);
        }
    }
    cmd
}
