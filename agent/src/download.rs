//! Streaming an image from its (presigned) URL straight into a slot: bounded memory whatever
//! the size, `Range` to resume from the last durable byte, a hard stop past the signed size,
//! and a low-speed timeout. Every [`CHUNK`] bytes the slot is synced and the caller records
//! the durable length, so a break re-fetches less than one chunk.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// Bytes between syncs of the slot (and persisted progress).
pub const CHUNK: u64 = 1 << 20;
/// No byte for this long ends the attempt.
pub const LOW_SPEED_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a download attempt stopped.
#[derive(Debug, thiserror::Error)]
pub enum Stop {
    /// The URL is refused (expired or tampered): ask the service for a fresh one.
    #[error("the download URL was refused ({0}); it may have expired")]
    UrlRefused(StatusCode),
    /// The server sent more than the signed size.
    #[error("the server sent more than the signed {0} bytes")]
    TooLarge(u64),
    /// The server answered with an error.
    #[error("the server answered {0}")]
    Status(StatusCode),
    /// The connection broke or stalled; resume from the last durable byte.
    #[error("the transfer broke off: {0}")]
    Broken(String),
    /// Writing the slot failed.
    #[error("writing the slot: {0}")]
    Io(#[from] std::io::Error),
}

/// Progress of one attempt.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// Bytes durably in the slot (synced), from its start.
    pub durable: u64,
    /// Bytes received over HTTP in this attempt.
    pub fetched: u64,
}

/// Fetches `url` into `slot` from byte `from` up to `size`, calling `synced` after each sync
/// with the durable length. Returns when all `size` bytes are durable.
pub async fn fetch(
    http: &reqwest::Client,
    url: &str,
    slot: &Path,
    from: u64,
    size: u64,
    mut synced: impl FnMut(Progress),
) -> Result<Progress, Stop> {
    let mut progress = Progress {
        durable: from,
        fetched: 0,
    };
    if from >= size {
        return Ok(progress);
    }
    let mut request = http.get(url);
    if from > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
    }
    let response = request
        .send()
        .await
        .map_err(|e| Stop::Broken(e.to_string()))?;
    let status = response.status();
    // Bytes of the body to skip: a server that ignores Range starts at byte 0.
    let mut skip = match status {
        StatusCode::PARTIAL_CONTENT => 0,
        StatusCode::OK => from,
        // S3 answers 403 to an expired or tampered presigned URL (400 from some stores).
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST => {
            return Err(Stop::UrlRefused(status));
        }
        s => return Err(Stop::Status(s)),
    };
    // A declared length past the signed size is refused before a byte is written.
    if let Some(len) = response.content_length() {
        let end = if skip == 0 { from + len } else { len };
        if end > size {
            return Err(Stop::TooLarge(size));
        }
    }
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(slot)
        .await?;
    file.seek(std::io::SeekFrom::Start(from)).await?;
    let mut written = from;
    let mut stream = response.bytes_stream();
    loop {
        let next = tokio::time::timeout(LOW_SPEED_TIMEOUT, stream.next())
            .await
            .map_err(|_| Stop::Broken(format!("no data for {LOW_SPEED_TIMEOUT:?}")))?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| Stop::Broken(e.to_string()))?;
        progress.fetched += chunk.len() as u64;
        let mut bytes = &chunk[..];
        if skip > 0 {
            let n = (skip as usize).min(bytes.len());
            bytes = &bytes[n..];
            skip -= n as u64;
        }
        if written + bytes.len() as u64 > size {
            return Err(Stop::TooLarge(size));
        }
        // Sync at each chunk boundary crossed, so the durable length stays a chunk behind
        // at most.
        while !bytes.is_empty() {
            let boundary = (written / CHUNK + 1) * CHUNK;
            let take = ((boundary - written) as usize).min(bytes.len());
            file.write_all(&bytes[..take]).await?;
            written += take as u64;
            bytes = &bytes[take..];
            if written % CHUNK == 0 || written == size {
                file.sync_data().await?;
                progress.durable = written;
                synced(progress);
            }
        }
    }
    file.sync_data().await?;
    progress.durable = written;
    if written < size {
        synced(progress);
        return Err(Stop::Broken(format!(
            "the body ended at byte {written} of {size}"
        )));
    }
    Ok(progress)
}
