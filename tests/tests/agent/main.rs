//! The real `fleetwave-agent` binary on file-backed slots against the real service,
//! PostgreSQL, Mosquitto and the S3 server: a full update, a crash at every persisted step
//! and mid-write, refusals that leave the device unchanged, a failed health check that
//! rolls back, and a download that resumes after a broken connection.

mod hostile;
mod install;
mod tls;
mod tryboot;

use std::time::Duration;

use fleetwave_artifacts::{
    HardwareId, MANIFEST_FORMAT, Manifest, Product, SecretKey, Sha256, SignedManifest, Timestamp,
};
use fleetwave_tests::harness::app::{Backend, Options, TestApp};
use fleetwave_tests::harness::s3::TestBucket;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// An image of `len` bytes from `seed`.
pub fn image(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) as u8)
        .collect()
}

/// A manifest for `image`, valid from a minute ago for `until` seconds.
pub fn manifest(image: &[u8], version: &str, until: i64) -> Manifest {
    let now = Timestamp::now().unix() as i64;
    Manifest {
        format: MANIFEST_FORMAT,
        product: Product::parse("gateway-os").unwrap(),
        version: version.parse().unwrap(),
        hardware: vec![HardwareId::parse("rpi4").unwrap()],
        size: image.len() as u64,
        sha256: Sha256::of(image),
        min_version: None,
        security_floor: None,
        created_at: Timestamp::from_unix((now - 60) as u64),
        expires_at: Timestamp::from_unix((now + until) as u64),
        delta_base: None,
    }
}

/// A service with a bucket on the S3 server, trusting `key`, and a release of `image`.
pub struct World {
    pub app: TestApp,
    pub key: SecretKey,
    pub release: String,
    pub image: Vec<u8>,
}

impl World {
    pub async fn new(image_len: usize) -> World {
        World::with(image_len, Options::new(Backend::Postgres)).await
    }

    /// As [`World::new`], with the service set up by `options` (e.g. on another broker).
    pub async fn with(image_len: usize, mut options: Options) -> World {
        let key = SecretKey::generate().unwrap();
        options.trusted_keys = vec![key.public()];
        options.s3 = Some(TestBucket::new().await.unwrap());
        let app = TestApp::spawn_with(options).await.unwrap();
        let image = image(image_len, 7);
        let signed = SignedManifest::sign(manifest(&image, "2.0.0", 86_400), &[&key]).unwrap();
        let form = reqwest::multipart::Form::new()
            .part("manifest", reqwest::multipart::Part::text(signed.to_json()))
            .part("image", reqwest::multipart::Part::bytes(image.clone()));
        let response = app
            .request(Method::POST, "/v1/releases", Some(&app.admin_token))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let release: Value = response.json().await.unwrap();
        World {
            release: release["id"].as_str().unwrap().to_owned(),
            app,
            key,
            image,
        }
    }

    /// A job installing the release on `device`; returns its id.
    pub async fn job(&self, device: &str) -> String {
        let (status, job) = self
            .app
            .call(
                Method::POST,
                "/v1/jobs",
                Some(json!({"release": self.release, "device": device})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{job}");
        job["id"].as_str().unwrap().to_owned()
    }

    /// The device's execution of `job`.
    pub async fn execution(&self, job: &str, device: &str) -> Value {
        self.app
            .call(
                Method::GET,
                &format!("/v1/jobs/{job}/executions/{device}"),
                None,
            )
            .await
            .1
    }

    /// Waits until the execution reaches a final state; returns it.
    pub async fn finished(&self, job: &str, device: &str, log: impl Fn() -> String) -> Value {
        for _ in 0..600 {
            let e = self.execution(job, device).await;
            if matches!(
                e["state"].as_str(),
                Some("SUCCEEDED" | "FAILED" | "REJECTED" | "TIMED_OUT")
            ) {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{job} on {device} did not finish: {}\nagent log:\n{}",
            self.execution(job, device).await,
            log()
        );
    }

    /// The device as the registry has it.
    pub async fn registry(&self, device: &str) -> Value {
        self.app
            .call(Method::GET, &format!("/v1/devices/{device}"), None)
            .await
            .1
    }
}

/// A unique device id for this run (client ids are global on the broker).
pub fn device_id(name: &str) -> String {
    format!("{name}-{}", fleetwave_tests::harness::unique_id())
}
