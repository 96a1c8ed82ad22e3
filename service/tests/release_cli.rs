//! The release engineer's offline round trip through the real `fleetwave` binary: generate a
//! key, sign a 64 MiB image, verify it, and see verification refuse a flipped image byte, a
//! flipped manifest byte, an untrusted key and a threshold above what was signed.

use std::path::Path;
use std::process::{Command, Output};

fn fleetwave(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetwave"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the fleetwave binary runs")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = fleetwave(dir, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a verify that must fail; returns (one-line stderr, JSON code).
fn refused(dir: &Path, args: &[&str]) -> (String, String) {
    let out = fleetwave(dir, args);
    assert!(!out.status.success(), "{args:?} unexpectedly succeeded");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one-line reason, got {stderr:?}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], false);
    (stderr, json["code"].as_str().unwrap().to_owned())
}

fn flip(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn sign_verify_round_trip_and_every_tamper_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(dir, &["key", "generate", "--out", "release"]);
    ok(dir, &["key", "generate", "--out", "stranger"]);

    let image: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("image.img"), &image).unwrap();

    let signed = ok(
        dir,
        &[
            "--json",
            "release",
            "sign",
            "image.img",
            "--product",
            "gateway-os",
            "--version",
            "2.0.0",
            "--hardware",
            "rpi4",
            "--hardware",
            "rpi5",
            "--key",
            "release.key",
            "--expires",
            "30d",
            "--security-floor",
            "1.5.0",
            "--out",
            "image.manifest.json",
        ],
    );
    let signed: serde_json::Value = serde_json::from_str(&signed).unwrap();
    assert_eq!(signed["size"], 64u64 << 20);

    let verify = |image, manifest, keys, threshold| {
        [
            "--json",
            "release",
            "verify",
            image,
            "--manifest",
            manifest,
            "--trusted-keys",
            keys,
            "--threshold",
            threshold,
        ]
    };

    let good = verify("image.img", "image.manifest.json", "release.pub", "1");
    let out: serde_json::Value = serde_json::from_str(&ok(dir, &good)).unwrap();
    assert_eq!(out["ok"], true);
    assert_eq!(out["sha256"], signed["sha256"]);

    // One flipped byte of the image.
    std::fs::copy(dir.join("image.img"), dir.join("bad.img")).unwrap();
    flip(&dir.join("bad.img"), 40 << 20);
    let (reason, code) = refused(
        dir,
        &verify("bad.img", "image.manifest.json", "release.pub", "1"),
    );
    assert_eq!(code, "digest_mismatch", "{reason}");

    // One flipped byte of the manifest, inside the signed part (a digit of the version).
    let text = std::fs::read_to_string(dir.join("image.manifest.json")).unwrap();
    std::fs::write(dir.join("bad.manifest.json"), &text).unwrap();
    flip(
        &dir.join("bad.manifest.json"),
        text.find("\"2.0.0\"").unwrap() + 1,
    );
    let (reason, code) = refused(
        dir,
        &verify("image.img", "bad.manifest.json", "release.pub", "1"),
    );
    assert_eq!(code, "bad_signature", "{reason}");

    // A different trusted key.
    let (reason, code) = refused(
        dir,
        &verify("image.img", "image.manifest.json", "stranger.pub", "1"),
    );
    assert_eq!(code, "unknown_key", "{reason}");

    // Both keys trusted, threshold two, one signature: below threshold; after co-signing, OK.
    std::fs::create_dir(dir.join("trusted")).unwrap();
    std::fs::copy(dir.join("release.pub"), dir.join("trusted/release.pub")).unwrap();
    std::fs::copy(dir.join("stranger.pub"), dir.join("trusted/stranger.pub")).unwrap();
    let (reason, code) = refused(
        dir,
        &verify("image.img", "image.manifest.json", "trusted", "2"),
    );
    assert_eq!(code, "below_threshold", "{reason}");
    ok(
        dir,
        &[
            "release",
            "cosign",
            "image.manifest.json",
            "--key",
            "stranger.key",
        ],
    );
    ok(
        dir,
        &verify("image.img", "image.manifest.json", "trusted", "2"),
    );

    // A truncated image.
    std::fs::write(dir.join("short.img"), &image[..image.len() - 1]).unwrap();
    let (reason, code) = refused(
        dir,
        &verify("short.img", "image.manifest.json", "release.pub", "1"),
    );
    assert_eq!(code, "size_mismatch", "{reason}");
}

#[test]
fn bad_input_gets_a_clear_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(dir, &["key", "generate", "--out", "release"]);
    std::fs::write(dir.join("image.img"), b"firmware").unwrap();

    let out = fleetwave(dir, &["key", "generate", "--out", "release"]);
    assert!(
        !out.status.success(),
        "an existing key is never overwritten"
    );

    let (reason, code) = refused(
        dir,
        &[
            "--json",
            "release",
            "sign",
            "image.img",
            "--product",
            "Gateway OS",
            "--version",
            "1.0.0",
            "--hardware",
            "rpi4",
            "--key",
            "release.key",
            "--out",
            "m.json",
        ],
    );
    assert_eq!(code, "invalid_manifest_field", "{reason}");
    assert!(!dir.join("m.json").exists());

    std::fs::write(dir.join("garbage.json"), b"{\"manifest\": 1}").unwrap();
    let (reason, code) = refused(
        dir,
        &[
            "--json",
            "release",
            "verify",
            "image.img",
            "--manifest",
            "garbage.json",
            "--trusted-keys",
            "release.pub",
        ],
    );
    assert_eq!(code, "malformed_manifest", "{reason}");

    let (reason, _) = refused(
        dir,
        &[
            "--json",
            "release",
            "verify",
            "image.img",
            "--manifest",
            "missing.json",
            "--trusted-keys",
            "release.pub",
        ],
    );
    assert!(reason.contains("missing.json"), "{reason}");
}
