//! Releases: a signed image enters the fleet here. The upload streams straight into the
//! object store while the service recomputes size and SHA-256; the signature threshold,
//! expiry and uniqueness are checked before a byte is stored, and the multipart upload is
//! completed only once everything matched, so a refused upload leaves nothing behind.

use std::fmt::Display;

use bytes::Bytes;
use fleetwave_artifacts::digest::ImageHasher;
use fleetwave_artifacts::{SignedManifest, Timestamp, TrustedKeys, rules};
use futures::{Stream, StreamExt};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::audit::{self, Actor, Event};
use crate::registry::devices::Page;
use crate::registry::entities::releases;
use crate::registry::{is_unique_violation, version_key};
use crate::storage::Storage;

/// The release keys uploads are verified against.
#[derive(Clone, Debug)]
pub struct Trust {
    /// Trusted keys.
    pub keys: TrustedKeys,
    /// Distinct trusted signatures required.
    pub threshold: usize,
}

/// Why a release operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest or image broke the artifact contract (bad signature, digest, ...).
    #[error(transparent)]
    Contract(#[from] fleetwave_artifacts::Error),
    /// That product and version exist already.
    #[error("{product} {version} has been uploaded already")]
    Duplicate {
        /// Product.
        product: String,
        /// Version.
        version: String,
    },
    /// The service has no trusted keys, so it accepts no release.
    #[error("no trusted release keys are configured (releases.trusted_keys)")]
    NoTrustedKeys,
    /// The upload lacks a part, or has them out of order.
    #[error("{0}")]
    BadUpload(String),
    /// A list query with a bad parameter.
    #[error("{0}")]
    InvalidQuery(String),
    /// No such release.
    #[error("release {0} not found")]
    NotFound(String),
    /// The object store failed.
    #[error("object store error")]
    Storage(#[from] object_store::Error),
    /// The database failed.
    #[error("database error")]
    Db(#[from] DbErr),
}

/// A release as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Release {
    /// Release id (UUIDv7: ordered by upload time).
    pub id: String,
    /// Product.
    pub product: String,
    /// Version.
    pub version: String,
    /// SHA-256 of the image.
    pub sha256: String,
    /// Image size in bytes.
    pub size: u64,
    /// Content-addressed object key.
    pub object_key: String,
    /// Token id of the uploader.
    pub uploaded_by: String,
    /// Upload time.
    pub uploaded_at: chrono::DateTime<chrono::Utc>,
    /// The signed manifest exactly as uploaded, for anyone to verify again.
    #[schema(value_type = Object)]
    pub signed_manifest: Box<RawValue>,
}

impl From<releases::Model> for Release {
    fn from(m: releases::Model) -> Self {
        let envelope = format!(
            r#"{{"manifest":{},"signatures":{}}}"#,
            m.manifest, m.signatures
        );
        Release {
            id: m.id,
            product: m.product,
            version: m.version,
            sha256: m.sha256,
            size: u64::try_from(m.size).unwrap_or(0),
            object_key: m.object_key,
            uploaded_by: m.uploaded_by,
            uploaded_at: m.uploaded_at,
            signed_manifest: RawValue::from_string(envelope).unwrap_or_else(|_| {
                RawValue::from_string("null".to_owned()).expect("null is JSON")
            }),
        }
    }
}

/// Verifies `manifest`, streams `image` into the store while hashing it, and records the
/// release. Nothing is stored unless everything matches.
pub async fn upload<S, E>(
    db: &DatabaseConnection,
    storage: &Storage,
    trust: Option<&Trust>,
    actor: &Actor,
    manifest: &[u8],
    mut image: S,
) -> Result<Release, Error>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Display,
{
    let trust = trust.ok_or(Error::NoTrustedKeys)?;
    let signed = SignedManifest::parse(manifest)?;
    let verified = trust.keys.verify(&signed, trust.threshold)?;
    rules::check_unexpired(&verified, Timestamp::now())?;
    let m = verified.manifest();
    let (product, version) = (m.product.to_string(), m.version.to_string());
    if find(db, &product, &version).await?.is_some() {
        return Err(Error::Duplicate { product, version });
    }

    let key = Storage::image_key(&m.sha256);
    let mut upload = storage.start_upload(&key).await?;
    let mut hasher = ImageHasher::new(m.size);
    let streamed: Result<(), Error> = async {
        while let Some(chunk) = image.next().await {
            let chunk =
                chunk.map_err(|e| Error::BadUpload(format!("the image stream failed: {e}")))?;
            hasher.update(&chunk)?;
            upload.write(&chunk).await?;
        }
        hasher.finish(&m.sha256)?;
        Ok(())
    }
    .await;
    if let Err(e) = streamed {
        if let Err(abort) = upload.abort().await {
            tracing::warn!(error.message = %abort, "aborting a refused upload");
        }
        return Err(e);
    }
    upload.finish().await?;

    let now = crate::db::now();
    let row = releases::Model {
        id: uuid::Uuid::now_v7().to_string(),
        product: product.clone(),
        version: version.clone(),
        version_key: version_key::of(&m.version),
        manifest: String::from_utf8(m.canonical_bytes()).expect("serde_json writes UTF-8"),
        signatures: serde_json::to_string(signed.signatures()).expect("signatures serialise"),
        sha256: m.sha256.to_string(),
        size: i64::try_from(m.size).unwrap_or(i64::MAX),
        object_key: key.to_string(),
        uploaded_by: actor.id.clone(),
        uploaded_at: now,
    };
    let recorded: Result<(), DbErr> = async {
        let txn = db.begin().await?;
        releases::Entity::insert(releases::ActiveModel::from(row.clone()))
            .exec_without_returning(&txn)
            .await?;
        audit::append(
            &txn,
            actor,
            Event {
                action: "release.upload",
                subject: format!("release:{}", row.id),
                details: serde_json::json!({
                    "product": product, "version": version, "sha256": row.sha256, "size": m.size,
                    "signers": verified.signers(),
                }),
            },
        )
        .await?;
        txn.commit().await
    }
    .await;
    if let Err(e) = recorded {
        remove_if_unreferenced(db, storage, &row.object_key).await;
        return Err(if is_unique_violation(&e) {
            Error::Duplicate { product, version }
        } else {
            Error::Db(e)
        });
    }
    Ok(row.into())
}

/// Deletes an object no release refers to (after a failed insert). Failures are logged:
/// an orphaned object wastes space but breaks nothing.
async fn remove_if_unreferenced(db: &DatabaseConnection, storage: &Storage, object_key: &str) {
    let referenced = releases::Entity::find()
        .filter(releases::Column::ObjectKey.eq(object_key))
        .count(db)
        .await;
    if matches!(referenced, Ok(0)) {
        if let Err(e) = storage.delete(&object_key.into()).await {
            tracing::warn!(error.message = %e, object.key = object_key, "removing an unrecorded object");
        }
    }
}

async fn find(
    db: &impl ConnectionTrait,
    product: &str,
    version: &str,
) -> Result<Option<releases::Model>, DbErr> {
    releases::Entity::find()
        .filter(releases::Column::Product.eq(product))
        .filter(releases::Column::Version.eq(version))
        .one(db)
        .await
}

/// Reads one release.
pub async fn get(db: &impl ConnectionTrait, id: &str) -> Result<Release, Error> {
    releases::Entity::find_by_id(id.to_owned())
        .one(db)
        .await?
        .map(Release::from)
        .ok_or_else(|| Error::NotFound(id.to_owned()))
}

/// Which releases to list.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this product.
    pub product: Option<String>,
    /// Continue after this cursor.
    pub cursor: Option<String>,
    /// Page size (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
}

/// Releases in upload order, a page at a time.
pub async fn list(db: &impl ConnectionTrait, query: &ListQuery) -> Result<Page<Release>, Error> {
    let limit = crate::registry::devices::page_limit(query.limit)
        .map_err(|e| Error::InvalidQuery(e.to_string()))?;
    let mut select = releases::Entity::find().order_by_asc(releases::Column::Id);
    if let Some(cursor) = &query.cursor {
        select = select.filter(releases::Column::Id.gt(cursor.as_str()));
    }
    if let Some(product) = &query.product {
        select = select.filter(releases::Column::Product.eq(product.as_str()));
    }
    let rows = select.limit(limit + 1).all(db).await?;
    Ok(Page::from_rows(rows, limit, |r| r.id.clone()))
}
