//! Releases through the API on the real parts: streamed, verified uploads into the S3 server
//! (or the local directory), content addresses, download URLs the storage itself enforces,
//! and every refusal with its own code and nothing left behind.

use std::time::Duration;

use fleetwave_artifacts::{
    HardwareId, MANIFEST_FORMAT, Manifest, Product, SecretKey, Sha256, SignedManifest, Timestamp,
};
use fleetwave_tests::harness::app::{Backend, Options, TestApp};
use fleetwave_tests::harness::s3::TestBucket;
use reqwest::multipart::{Form, Part};
use reqwest::{Method, StatusCode};
use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::Value;

pub(crate) fn image(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) as u8)
        .collect()
}

/// A manifest for `image` as `version`, valid from `from` to `until` (seconds from now).
pub(crate) fn manifest(image: &[u8], version: &str, from: i64, until: i64) -> Manifest {
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
        created_at: Timestamp::from_unix((now + from) as u64),
        expires_at: Timestamp::from_unix((now + until) as u64),
        delta_base: None,
    }
}

pub(crate) fn sign(m: Manifest, key: &SecretKey) -> String {
    SignedManifest::sign(m, &[key]).unwrap().to_json()
}

pub(crate) async fn upload(app: &TestApp, manifest: String, image: Vec<u8>) -> (StatusCode, Value) {
    let form = Form::new()
        .part("manifest", Part::text(manifest))
        .part("image", Part::bytes(image));
    let response = app
        .request(Method::POST, "/v1/releases", Some(&app.admin_token))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn release_rows(app: &TestApp) -> u64 {
    fleetwave::registry::entities::releases::Entity::find()
        .count(&app.db)
        .await
        .unwrap()
}

async fn app_with(backend: Backend, s3: bool, key: &SecretKey, expiry: u64) -> TestApp {
    let mut options = Options::new(backend);
    options.trusted_keys = vec![key.public()];
    options.url_expiry_secs = expiry;
    if s3 {
        options.s3 = Some(TestBucket::new().await.unwrap());
    }
    TestApp::spawn_with(options).await.unwrap()
}

#[tokio::test]
async fn s3_upload_is_content_addressed_and_presigned_urls_are_enforced_by_the_server() {
    let key = SecretKey::generate().unwrap();
    let app = app_with(Backend::Postgres, true, &key, 3).await;
    // 20 MiB: three multipart parts.
    let bytes = image(20 << 20, 1);
    let (status, release) = upload(
        &app,
        sign(manifest(&bytes, "1.0.0", -60, 3600), &key),
        bytes.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{release}");
    let sha = Sha256::of(&bytes).to_string();
    assert_eq!(release["object_key"], format!("images/sha256/{sha}"));
    assert_eq!(release["size"], 20 << 20);
    assert!(
        app.storage
            .exists(&format!("images/sha256/{sha}").into())
            .await
            .unwrap(),
        "the object is in the bucket under its content address"
    );
    // The signed manifest comes back verbatim and verifies (read it raw: a JSON value type
    // would reorder its keys).
    let id = release["id"].as_str().unwrap();
    #[derive(serde::Deserialize)]
    struct Raw {
        signed_manifest: Box<serde_json::value::RawValue>,
    }
    let text = app
        .request(
            Method::GET,
            &format!("/v1/releases/{id}"),
            Some(&app.admin_token),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let raw: Raw = serde_json::from_str(&text).unwrap();
    let back = SignedManifest::parse(raw.signed_manifest.get().as_bytes()).unwrap();
    assert_eq!(back.manifest().sha256.to_string(), sha);

    let (status, link) = app
        .call(Method::GET, &format!("/v1/releases/{id}/download"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{link}");
    let url = link["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&app.storage_endpoint()),
        "{url} is presigned for the S3 server"
    );
    let got = app.http.get(&url).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert!(
        got.bytes().await.unwrap() == bytes,
        "the presigned URL downloads the exact bytes"
    );

    let at = url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let flipped = if &url[at..=at] == "0" { "1" } else { "0" };
    let tampered = format!("{}{flipped}{}", &url[..at], &url[at + 1..]);
    let refused = app.http.get(&tampered).send().await.unwrap();
    assert_eq!(
        refused.status(),
        StatusCode::FORBIDDEN,
        "the S3 server refuses a tampered URL"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let expired = app.http.get(&url).send().await.unwrap();
    assert_eq!(
        expired.status(),
        StatusCode::FORBIDDEN,
        "the S3 server refuses an expired URL"
    );
}

async fn refusals(backend: Backend, s3: bool) {
    let key = SecretKey::generate().unwrap();
    let stranger = SecretKey::generate().unwrap();
    let app = app_with(backend, s3, &key, 3600).await;
    let bytes = image(300_000, 2);
    let good = manifest(&bytes, "2.0.0", -60, 3600);

    let mut flipped = bytes.clone();
    flipped[150_000] ^= 1;
    let mut longer = bytes.clone();
    longer.push(0);
    let tampered_manifest = sign(good.clone(), &key).replacen("\"2.0.0\"", "\"2.0.1\"", 1);
    let cases: Vec<(&str, String, Vec<u8>, StatusCode, &str)> = vec![
        (
            "untrusted key",
            sign(good.clone(), &stranger),
            bytes.clone(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_key",
        ),
        (
            "edited manifest",
            tampered_manifest,
            bytes.clone(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_signature",
        ),
        (
            "one bit of the image",
            sign(good.clone(), &key),
            flipped,
            StatusCode::UNPROCESSABLE_ENTITY,
            "digest_mismatch",
        ),
        (
            "truncated image",
            sign(good.clone(), &key),
            bytes[..bytes.len() - 1].to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "size_mismatch",
        ),
        (
            "longer image",
            sign(good.clone(), &key),
            longer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "exceeds_signed_size",
        ),
        (
            "expired manifest",
            sign(manifest(&bytes, "2.0.0", -7200, -3600), &key),
            bytes.clone(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "manifest_expired",
        ),
        (
            "not a manifest",
            "{\"manifest\":1}".to_owned(),
            bytes.clone(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "malformed_manifest",
        ),
    ];
    for (what, manifest, image, status, code) in cases {
        let (got, body) = upload(&app, manifest, image).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{what}: {body}"
        );
    }
    // Parts missing or out of order.
    let form = Form::new().part("image", Part::bytes(bytes.clone()));
    let response = app
        .request(Method::POST, "/v1/releases", Some(&app.admin_token))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.object_count().await, 0, "nothing left in the store");
    assert_eq!(release_rows(&app).await, 0, "nothing left in the database");

    let (status, body) = upload(&app, sign(good.clone(), &key), bytes.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = upload(&app, sign(good, &key), bytes).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("release_exists"))
    );
    assert_eq!(app.object_count().await, 1);
    assert_eq!(release_rows(&app).await, 1);
    let (_, list) = app.call(Method::GET, "/v1/releases", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn refusals_on_postgres_and_s3() {
    refusals(Backend::Postgres, true).await;
}

#[tokio::test]
async fn refusals_on_sqlite_and_local_directory() {
    refusals(Backend::Sqlite, false).await;
}

#[tokio::test]
async fn local_downloads_are_signed_expiring_and_support_ranges() {
    let key = SecretKey::generate().unwrap();
    let app = app_with(Backend::Sqlite, false, &key, 2).await;
    let bytes = image(1 << 20, 3);
    let (status, release) = upload(
        &app,
        sign(manifest(&bytes, "1.0.0", -60, 3600), &key),
        bytes.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{release}");
    let id = release["id"].as_str().unwrap();
    let (_, link) = app
        .call(Method::GET, &format!("/v1/releases/{id}/download"), None)
        .await;
    let url = link["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&app.base_url),
        "{url} is served by the service"
    );

    let whole = app.http.get(&url).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    assert!(whole.bytes().await.unwrap() == bytes);
    let part = app
        .http
        .get(&url)
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert!(part.bytes().await.unwrap() == bytes[1000..2000]);

    let last = url.chars().last().unwrap();
    let tampered = format!(
        "{}{}",
        &url[..url.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    let refused = app.http.get(&tampered).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let other_object = url.replace(&release["sha256"].as_str().unwrap()[..8], "00000000");
    assert_eq!(
        app.http.get(&other_object).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let expired = app.http.get(&url).send().await.unwrap();
    assert_eq!(expired.status(), StatusCode::FORBIDDEN);
    let body: Value = expired.json().await.unwrap();
    assert_eq!(body["error"]["code"], "url_expired");
}

#[tokio::test]
async fn without_trusted_keys_uploads_are_refused() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let key = SecretKey::generate().unwrap();
    let bytes = image(1000, 4);
    let (status, body) = upload(
        &app,
        sign(manifest(&bytes, "1.0.0", -60, 3600), &key),
        bytes,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("no_trusted_keys"))
    );
}

#[tokio::test]
async fn presigned_urls_are_signed_for_the_public_endpoint() {
    let key = SecretKey::generate().unwrap();
    let bucket = TestBucket::new().await.unwrap();
    // Devices reach the same server by another name: the URL must be signed for that name.
    let public = bucket.server.endpoint.replace("127.0.0.1", "localhost");
    let mut options = Options::new(Backend::Sqlite);
    options.trusted_keys = vec![key.public()];
    options.s3 = Some(bucket);
    options.s3_public_endpoint = Some(public.clone());
    let app = TestApp::spawn_with(options).await.unwrap();
    let bytes = image(100_000, 5);
    let (status, release) = upload(
        &app,
        sign(manifest(&bytes, "1.0.0", -60, 3600), &key),
        bytes.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{release}");
    let id = release["id"].as_str().unwrap();
    let (_, link) = app
        .call(Method::GET, &format!("/v1/releases/{id}/download"), None)
        .await;
    let url = link["url"].as_str().unwrap();
    assert!(url.starts_with(&public), "{url} is signed for {public}");
    let got = app.http.get(url).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert!(got.bytes().await.unwrap() == bytes);
    // The same URL through the upload endpoint's host name no longer matches its signature.
    let other_host = url.replace("localhost", "127.0.0.1");
    assert_eq!(
        app.http.get(other_host).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
}
