//! `fleetwave-agent check-config` on real files: a good file-backend configuration passes; a
//! broken one fails with every problem named by its key.

use std::process::Command;

use fleetwave_artifacts::SecretKey;

fn check(dir: &std::path::Path, text: &str) -> (bool, String, String) {
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleetwave-agent"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn good_and_bad_configurations() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("release.pub"),
        SecretKey::generate().unwrap().public().to_line(),
    )
    .unwrap();
    std::fs::create_dir(dir.join("slots")).unwrap();
    let good = format!(
        r#"
device_id = "pi-0001"
hardware = "rpi4"
data_dir = "{d}/state"
version = "1.0.0"
[broker]
url = "mqtt://127.0.0.1:1883"
allow_plaintext = true
[trust]
keys = "{d}/release.pub"
[slots]
backend = "file"
a = "{d}/slots/a.img"
b = "{d}/slots/b.img"
[health]
command = ["true"]
deadline = "30s"
"#,
        d = dir.display()
    );
    let (ok, stdout, stderr) = check(dir, &good);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("configuration OK for pi-0001"), "{stdout}");

    let bad = good
        .replace("pi-0001", "pi/0001")
        .replace("allow_plaintext = true", "")
        .replace("release.pub", "missing.pub")
        .replace("\"true\"", "\"no-such-health-check\"")
        .replace("version = \"1.0.0\"", "version = \"one\"");
    let (ok, _, stderr) = check(dir, &bad);
    assert!(!ok);
    for key in [
        "device_id",
        "version",
        "broker.url",
        "trust.keys",
        "health.command",
    ] {
        assert!(stderr.contains(key), "{key} is named in: {stderr}");
    }

    let (ok, _, stderr) = check(dir, &format!("{good}\ncolour = \"red\""));
    assert!(!ok && stderr.contains("colour"), "{stderr}");

    let tls = good.replace("mqtt://127.0.0.1:1883", "mqtts://broker:8883");
    let (ok, _, stderr) = check(dir, &tls);
    assert!(
        !ok && stderr.contains("broker.ca") && stderr.contains("broker.cert"),
        "{stderr}"
    );
}
