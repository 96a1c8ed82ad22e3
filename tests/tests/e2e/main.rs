//! End to end with real processes. First the README's first command: `fleetwave demo`, the
//! service on its embedded defaults with in-process agents and a live rollout.

use fleetwave_tests::harness::bin;
use serde_json::Value;

fn demo(args: &[&str]) -> (bool, Value, String) {
    let out = bin::command("fleetwave")
        .args(["--json", "demo"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or(Value::Null);
    (out.status.success(), summary, stderr)
}

#[test]
fn the_demo_rolls_out_to_every_device() {
    let (ok, summary, stderr) = demo(&["--devices", "8", "--image-mib", "2"]);
    assert!(ok, "{stderr}\n{summary}");
    assert_eq!(summary["state"], "COMPLETED", "{summary}");
    let devices = summary["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 8);
    assert!(
        devices
            .iter()
            .all(|d| d["state"] == "SUCCEEDED" && d["version"] == "2.0.0"),
        "{summary}"
    );
    assert!(summary["audit_links"].as_u64().unwrap() > 10);
}

#[test]
fn with_failing_devices_the_demo_rolls_back_and_halts() {
    let (ok, summary, stderr) =
        demo(&["--devices", "10", "--fail-rate", "0.3", "--image-mib", "1"]);
    assert!(
        ok,
        "the demo shows a halt as a success of the product: {stderr}\n{summary}"
    );
    assert_eq!(summary["state"], "HALTED", "{summary}");
    let devices = summary["devices"].as_array().unwrap();
    let failed: Vec<&Value> = devices.iter().filter(|d| d["state"] == "FAILED").collect();
    assert!(!failed.is_empty(), "{summary}");
    for d in &failed {
        assert_eq!(d["version"], "1.0.0", "a failed device rolled back: {d}");
        assert!(d["reason"].as_str().unwrap().contains("exit status"), "{d}");
    }
}

mod fleet;

mod identity;
