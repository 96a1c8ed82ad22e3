//! Where firmware images live: an S3-compatible store (MinIO, AWS S3) or a local directory,
//! both through object_store. Objects are content-addressed (`images/sha256/<hex>`), written
//! as multipart uploads that become visible only when completed, and handed to devices as
//! expiring download URLs: presigned by object_store's S3 signer for the public endpoint, or,
//! for the local directory, HMAC-signed URLs that this service serves itself.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use fleetwave_artifacts::Sha256;
use hmac::{KeyInit, Mac};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{Settings, StorageKind};

/// Part size of multipart uploads (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 8 << 20;
/// Parts in flight at once: with [`PART_SIZE`], at most ~24 MiB of an upload is in memory.
pub const PARTS_IN_FLIGHT: usize = 2;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The object store and how its download URLs are made.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    urls: UrlSigner,
    expiry: Duration,
}

#[derive(Clone)]
enum UrlSigner {
    /// Presigned S3 URLs, signed for the endpoint devices use.
    S3(Arc<AmazonS3>),
    /// `{base}/v1/objects/{key}?expires=…&sig=…`, served by this service.
    Local {
        key: Arc<SecretString>,
        base_url: String,
        root: std::path::PathBuf,
    },
}

/// An expiring download URL.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DownloadUrl {
    /// The URL.
    pub url: String,
    /// Unix time after which it is refused.
    pub expires_at: u64,
}

impl Storage {
    /// Builds the configured store. `base_url` is where this service is reached (for local
    /// download URLs).
    pub fn from_settings(settings: &Settings, base_url: &str) -> Result<Self> {
        let s = &settings.storage;
        let expiry = Duration::from_secs(s.url_expiry_secs);
        match s.kind {
            StorageKind::S3 => {
                let bucket = s
                    .bucket
                    .as_deref()
                    .context("storage.bucket is required for kind = \"s3\"")?;
                let build = |endpoint: Option<&str>| -> Result<AmazonS3> {
                    let mut b = AmazonS3Builder::new()
                        .with_bucket_name(bucket)
                        .with_region(&s.region)
                        .with_allow_http(s.allow_http);
                    if let Some(e) = endpoint {
                        b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
                    }
                    if let (Some(id), Some(secret)) = (&s.access_key_id, &s.secret_access_key) {
                        b = b
                            .with_access_key_id(id)
                            .with_secret_access_key(secret.expose_secret());
                    }
                    b.build().context("configuring the S3 store")
                };
                let store = Arc::new(build(s.endpoint.as_deref())?);
                let public = s.public_endpoint.as_deref().or(s.endpoint.as_deref());
                let signer = Arc::new(build(public)?);
                Ok(Storage {
                    store,
                    urls: UrlSigner::S3(signer),
                    expiry,
                })
            }
            StorageKind::Local => {
                let root = s
                    .path
                    .as_ref()
                    .map(std::path::PathBuf::from)
                    .unwrap_or_else(|| settings.data_dir.join("objects"));
                std::fs::create_dir_all(&root)
                    .with_context(|| format!("creating the object directory {}", root.display()))?;
                let store = LocalFileSystem::new_with_prefix(&root)
                    .with_context(|| format!("opening the object directory {}", root.display()))?;
                let key = match &s.url_signing_key {
                    Some(k) => k.clone(),
                    None => load_or_create_key(&settings.data_dir.join("url-signing.key"))?,
                };
                Ok(Storage {
                    store: Arc::new(store),
                    urls: UrlSigner::Local {
                        key: Arc::new(key),
                        base_url: base_url.trim_end_matches('/').to_owned(),
                        root,
                    },
                    expiry,
                })
            }
        }
    }

    /// The store itself.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The content address of an image.
    pub fn image_key(sha256: &Sha256) -> Path {
        Path::from(format!("images/sha256/{sha256}"))
    }

    /// Starts a multipart upload to `key`; nothing is visible until [`Upload::finish`].
    pub async fn start_upload(&self, key: &Path) -> Result<Upload, object_store::Error> {
        let upload = self.store.put_multipart(key).await?;
        Ok(Upload {
            writer: WriteMultipart::new_with_chunk_size(upload, PART_SIZE),
        })
    }

    /// Whether an object exists.
    pub async fn exists(&self, key: &Path) -> Result<bool, object_store::Error> {
        match self.store.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes an object (absent is fine).
    pub async fn delete(&self, key: &Path) -> Result<(), object_store::Error> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// An expiring GET URL for `key`.
    pub async fn download_url(&self, key: &Path) -> Result<DownloadUrl> {
        let expires_at = unix_now() + self.expiry.as_secs();
        let url = match &self.urls {
            UrlSigner::S3(signer) => signer
                .signed_url(Method::GET, key, self.expiry)
                .await
                .context("presigning the download")?
                .to_string(),
            UrlSigner::Local {
                key: secret,
                base_url,
                ..
            } => {
                let sig = local_signature(secret, key.as_ref(), expires_at);
                format!("{base_url}/v1/objects/{key}?expires={expires_at}&sig={sig}")
            }
        };
        Ok(DownloadUrl { url, expires_at })
    }

    /// Checks a local download URL's signature and expiry. Only the local store makes them.
    pub fn check_local_url(&self, key: &str, expires: u64, sig: &str) -> Result<(), LocalUrlError> {
        let UrlSigner::Local { key: secret, .. } = &self.urls else {
            return Err(LocalUrlError::NotLocal);
        };
        let mut mac = HmacSha256::new_from_slice(secret.expose_secret().as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(&signed_text(key, expires));
        let given = hex::decode(sig).map_err(|_| LocalUrlError::BadSignature)?;
        mac.verify_slice(&given)
            .map_err(|_| LocalUrlError::BadSignature)?;
        if unix_now() >= expires {
            return Err(LocalUrlError::Expired);
        }
        Ok(())
    }

    /// The file behind a local object key, for serving it (with Range support). Only content
    /// addresses (`images/sha256/<64 hex>`) are ever served.
    pub fn local_file(&self, key: &str) -> Option<std::path::PathBuf> {
        let UrlSigner::Local { root, .. } = &self.urls else {
            return None;
        };
        let hex = key.strip_prefix("images/sha256/")?;
        hex.parse::<Sha256>().ok()?;
        Some(root.join("images").join("sha256").join(hex))
    }
}

/// Why a local download URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocalUrlError {
    /// The signature does not match.
    #[error("the URL's signature does not match")]
    BadSignature,
    /// It was valid once.
    #[error("the URL has expired")]
    Expired,
    /// This service's store makes presigned S3 URLs instead.
    #[error("this service does not serve objects itself")]
    NotLocal,
}

/// A multipart upload in progress, with bounded memory.
pub struct Upload {
    writer: WriteMultipart,
}

impl Upload {
    /// Adds bytes, waiting while too many parts are in flight.
    pub async fn write(&mut self, chunk: &Bytes) -> Result<(), object_store::Error> {
        self.writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        self.writer.write(chunk);
        Ok(())
    }

    /// Completes the upload: only now does the object appear.
    pub async fn finish(self) -> Result<(), object_store::Error> {
        self.writer.finish().await.map(|_| ())
    }

    /// Abandons the upload: nothing is left behind.
    pub async fn abort(self) -> Result<(), object_store::Error> {
        self.writer.abort().await
    }
}

fn signed_text(key: &str, expires: u64) -> Vec<u8> {
    format!("GET\n{key}\n{expires}").into_bytes()
}

fn local_signature(secret: &SecretString, key: &str, expires: u64) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(&signed_text(key, expires));
    hex::encode(mac.finalize().into_bytes())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads the URL-signing key from `path`, or creates it (32 random bytes, hex, mode 0600).
fn load_or_create_key(path: &std::path::Path) -> Result<SecretString> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let key = text.trim();
        if key.len() < 32 {
            bail!("{} holds a key shorter than 32 characters", path.display());
        }
        return Ok(SecretString::from(key.to_owned()));
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).context("no randomness for the URL-signing key")?;
    let key = hex::encode(bytes);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            use std::io::Write;
            file.write_all(key.as_bytes())?;
            file.sync_all()?;
            Ok(SecretString::from(key))
        }
        // Another replica on the same data directory won the race: use its key.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_key(path),
        Err(e) => Err(e).with_context(|| format!("writing {}", path.display())),
    }
}
