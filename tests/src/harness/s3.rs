//! A bucket of its own per test on the real S3-compatible server (s3s-fs in CI, MinIO or AWS
//! in production), reached through object_store exactly as the service reaches it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::{Method, Signer};

use super::env::{S3Server, s3_server};
use super::{init, unique_id};

/// One test's bucket.
#[derive(Clone, Debug)]
pub struct TestBucket {
    /// The store, bound to the bucket.
    pub store: Arc<AmazonS3>,
    /// The bucket's name, `fw-test-<16 hex>`.
    pub name: String,
    /// The server it lives on.
    pub server: S3Server,
}

impl TestBucket {
    /// Creates a fresh bucket on the server of this run.
    pub async fn new() -> Result<Self> {
        init();
        let server = s3_server();
        let name = format!("fw-test-{}", unique_id());
        let store = Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(&server.endpoint)
                .with_bucket_name(&name)
                .with_access_key_id(&server.access_key)
                .with_secret_access_key(&server.secret_key)
                .with_region(&server.region)
                .with_allow_http(true)
                .with_virtual_hosted_style_request(false)
                .build()
                .context("configuring the S3 client")?,
        );
        // object_store has no create-bucket call: presign a PUT on the bucket itself.
        let url = store
            .signed_url(Method::PUT, &Path::from(""), Duration::from_secs(60))
            .await
            .context("presigning CreateBucket")?;
        let response = reqwest::Client::new()
            .put(url)
            .send()
            .await
            .with_context(|| format!("creating bucket {name} at {}", server.endpoint))?;
        let status = response.status();
        ensure!(
            status.is_success(),
            "creating bucket {name}: {status}: {}",
            response.text().await.unwrap_or_default()
        );
        Ok(TestBucket {
            store,
            name,
            server,
        })
    }
}
