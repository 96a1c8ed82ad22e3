//! The workspace's binaries (`fleetwave`, `fleetwave-agent`) as real processes. Cargo builds
//! them with the tests (`cargo test --workspace`, `cargo nextest run --workspace`) into the
//! same directory as the test executables' parent.

use std::path::PathBuf;

/// The path of workspace binary `name`, next to the running test executable.
pub fn path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executables live in target/<profile>/deps");
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
