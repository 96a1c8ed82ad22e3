//! A bucket of its own per test on the real S3-compatible server (s3s-fs in CI, MinIO or AWS
//! in production), reached through object_store exactly as the service reaches it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use object_store::ObjectStoreExt;
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

    /// Uploads the file at `path` as object `key`, streamed in the service's part size with
    /// as many parts in flight as the service keeps.
    pub async fn upload_file(&self, key: &str, path: &std::path::Path) -> Result<()> {
        use futures::StreamExt;
        let upload = self.store.put_multipart(&Path::from(key)).await?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(
            upload,
            fleetwave::storage::PART_SIZE,
        );
        let mut file = tokio_util::io::ReaderStream::with_capacity(
            tokio::fs::File::open(path).await?,
            256 << 10,
        );
        while let Some(chunk) = file.next().await {
            writer
                .wait_for_capacity(fleetwave::storage::PARTS_IN_FLIGHT)
                .await?;
            writer.write(&chunk?);
        }
        writer.finish().await?;
        Ok(())
    }

    /// A presigned GET of object `key`, valid for `expiry`.
    pub async fn presigned_get(&self, key: &str, expiry: Duration) -> Result<String> {
        Ok(self
            .store
            .signed_url(Method::GET, &Path::from(key), expiry)
            .await?
            .to_string())
    }
}
