//! The release engineer's command line against the running service on PostgreSQL and the
//! S3 server: register devices, group them, sign and upload a release with the real
//! `fleetwave` binary, and see a tampered image refused with its code.

use std::path::Path;

use fleetwave_artifacts::SecretKey;
use fleetwave_tests::harness::app::{Backend, Options, TestApp};
use fleetwave_tests::harness::bin;
use fleetwave_tests::harness::s3::TestBucket;
use serde_json::Value;

struct Cli<'a> {
    app: &'a TestApp,
    dir: &'a Path,
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        self.run_as(&self.app.admin_token, args)
    }

    fn run_as(&self, token: &str, args: &[&str]) -> (bool, String, String) {
        let out = bin::command("fleetwave")
            .args(["--server", &self.app.base_url, "--token", token])
            .args(args)
            .current_dir(self.dir)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args);
        assert!(ok, "{args:?}: {stderr}");
        stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }
}

// The CLI runs as a blocking child process while the service answers it from this
// runtime, so the runtime needs threads of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_group_sign_and_upload_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let key_prefix = dir.join("release");
    // The service trusts the key the release engineer generates with the CLI.
    bin::command("fleetwave")
        .args(["key", "generate", "--out"])
        .arg(&key_prefix)
        .status()
        .unwrap();
    let key = SecretKey::load(&dir.join("release.key")).unwrap();
    let mut options = Options::new(Backend::Postgres);
    options.s3 = Some(TestBucket::new().await.unwrap());
    options.trusted_keys = vec![key.public()];
    let app = TestApp::spawn_with(options).await.unwrap();
    let cli = Cli { app: &app, dir };

    for (id, site) in [("pi-1", "sg-1"), ("pi-2", "sg-1"), ("pi-3", "de-2")] {
        cli.ok(&[
            "device",
            "add",
            id,
            "--hardware",
            "rpi4",
            "--attr",
            &format!("site={site}"),
            "--attr",
            "rack=3",
        ]);
    }
    let listed = cli.json(&[
        "device",
        "list",
        "--query",
        r#"attributes.site = "sg-1" and attributes.rack = 3"#,
    ]);
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["pi-1", "pi-2"]);
    cli.ok(&["group", "create", "canary"]);
    cli.ok(&["group", "add", "canary", "pi-3"]);
    cli.ok(&[
        "group",
        "create",
        "singapore",
        "--query",
        r#"attributes.site = "sg-1""#,
    ]);
    let members = cli.json(&["group", "list", "singapore"]);
    assert_eq!(members.as_array().unwrap().len(), 2);
    assert!(cli.ok(&["group", "list"]).contains("dynamic"));

    let image: Vec<u8> = (0..9u32 << 20).map(|i| (i >> 7) as u8).collect();
    std::fs::write(dir.join("os.img"), &image).unwrap();
    cli.ok(&[
        "release",
        "sign",
        "os.img",
        "--product",
        "gateway-os",
        "--version",
        "1.4.0",
        "--hardware",
        "rpi4",
        "--key",
        "release.key",
        "--out",
        "os.manifest.json",
    ]);
    let uploaded = cli.json(&[
        "release",
        "upload",
        "os.img",
        "--manifest",
        "os.manifest.json",
    ]);
    assert_eq!(uploaded["version"], "1.4.0");
    assert_eq!(uploaded["size"], 9 << 20);
    let releases = cli.json(&["release", "list"]);
    assert_eq!(releases.as_array().unwrap().len(), 1);

    // Same size, one byte changed: the service recomputes the digest and refuses it.
    let mut tampered = image.clone();
    tampered[5 << 20] ^= 0xff;
    std::fs::write(dir.join("bad.img"), &tampered).unwrap();
    cli.ok(&[
        "release",
        "sign",
        "os.img",
        "--product",
        "gateway-os",
        "--version",
        "1.5.0",
        "--hardware",
        "rpi4",
        "--key",
        "release.key",
        "--out",
        "v15.manifest.json",
    ]);
    let (ok, stdout, stderr) = cli.run(&[
        "--json",
        "release",
        "upload",
        "bad.img",
        "--manifest",
        "v15.manifest.json",
    ]);
    assert!(!ok);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    let failure: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(failure["code"], "digest_mismatch", "{stderr}");
    assert_eq!(
        cli.json(&["release", "list"]).as_array().unwrap().len(),
        1,
        "nothing recorded"
    );

    let token = cli.json(&[
        "token",
        "create",
        "--role",
        "auditor",
        "--name",
        "audit-team",
    ]);
    assert!(token["secret"].as_str().unwrap().starts_with("fwt_"));
    let (ok, _, stderr) = cli.run_as(
        token["secret"].as_str().unwrap(),
        &["device", "add", "x", "--hardware", "rpi4"],
    );
    assert!(!ok && stderr.contains("forbidden"), "{stderr}");
}
