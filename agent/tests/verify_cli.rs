//! The device-side checks through the real `fleetwave-agent` binary, on a release signed by
//! the artifacts crate: installable when every rule holds, refused with the rule's own code
//! otherwise.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fleetwave_artifacts::{
    HardwareId, MANIFEST_FORMAT, Manifest, Product, SecretKey, Sha256, SignedManifest, Timestamp,
};

fn agent(dir: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "--json",
        "verify",
        "image.img",
        "--manifest",
        "m.json",
        "--trusted-keys",
        "trusted.pub",
        "--hardware",
    ];
    args.extend_from_slice(extra);
    let out = Command::new(env!("CARGO_BIN_EXE_fleetwave-agent"))
        .args(&args)
        .current_dir(dir)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let code = json["code"].as_str().unwrap_or("").to_owned();
    (out.status.success(), code)
}

#[test]
fn each_device_rule_is_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let image = vec![42u8; 300_000];
    std::fs::write(dir.join("image.img"), &image).unwrap();
    let key = SecretKey::generate().unwrap();
    std::fs::write(dir.join("trusted.pub"), key.public().to_line()).unwrap();
    let now = Timestamp::now();
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        product: Product::parse("gateway-os").unwrap(),
        version: "2.0.0".parse().unwrap(),
        hardware: vec![HardwareId::parse("rpi4").unwrap()],
        size: image.len() as u64,
        sha256: Sha256::of(&image),
        min_version: Some("1.5.0".parse().unwrap()),
        security_floor: Some("2.0.0".parse().unwrap()),
        created_at: now,
        expires_at: now.plus(Duration::from_secs(3600)),
        delta_base: None,
    };
    let signed = SignedManifest::sign(manifest, &[&key]).unwrap();
    std::fs::write(dir.join("m.json"), signed.to_json()).unwrap();

    assert_eq!(
        agent(dir, &["rpi4", "--installed", "1.6.0"]),
        (true, String::new())
    );
    assert_eq!(
        agent(dir, &["rpi5", "--installed", "1.6.0"]).1,
        "incompatible_hardware"
    );
    assert_eq!(
        agent(dir, &["rpi4", "--installed", "1.4.0"]).1,
        "minimum_version_not_met"
    );
    assert_eq!(agent(dir, &["rpi4", "--installed", "2.0.0"]).1, "not_newer");
    assert_eq!(
        agent(dir, &["rpi4", "--installed", "2.0.0", "--force"]),
        (true, String::new())
    );
    assert_eq!(
        agent(
            dir,
            &["rpi4", "--installed", "1.6.0", "--security-floor", "2.1.0"]
        )
        .1,
        "below_security_floor"
    );
    let mut tampered = image.clone();
    tampered[123_456] ^= 0x80;
    std::fs::write(dir.join("image.img"), &tampered).unwrap();
    assert_eq!(
        agent(dir, &["rpi4", "--installed", "1.6.0"]).1,
        "digest_mismatch"
    );
    tampered.push(0);
    std::fs::write(dir.join("image.img"), &tampered).unwrap();
    assert_eq!(
        agent(dir, &["rpi4", "--installed", "1.6.0"]).1,
        "exceeds_signed_size"
    );
}
