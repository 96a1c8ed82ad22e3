//! Streaming an image from its (presigned) URL straight into a slot: bounded memory whatever
//! the size, `Range` to resume from the last durable byte, a hard stop past the signed size,
//! and a low-speed timeout. Every [`CHUNK`] bytes the slot is synced and the caller records
//! the durable length, so a break re-fetches less than one chunk.
//!
//! The syncs and the hashing happen off the download's path, on a thread of their own (the
//! [`Readback`]): it syncs each chunk the download has written, then reads it back from the
//! slot and hashes it, so the digest a job checks is that of the bytes the slot holds, and
//! the whole image is verified when the last chunk lands, with no second pass over it.

use std::io::{Read, Seek};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use fleetwave_artifacts::digest::ImageHasher;
use futures_util::StreamExt;
use reqwest::StatusCode;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// Bytes between syncs of the slot (and reported progress). Measured on this project's
/// machine, a sync every MiB cost twice the time per GiB of one every 4 MiB.
pub const CHUNK: u64 = 4 << 20;
/// No byte for this long ends the attempt.
pub const LOW_SPEED_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read back at a time.
const READ_BUFFER: usize = 256 * 1024;
/// Bytes of the body gathered before they are written to the slot.
const WRITE_BUFFER: usize = 1 << 20;
/// How long the download waits before reading again once the socket was drained (see
/// [`drained`]): the next read then takes what gathered meanwhile (the kernel buffers it and
/// the TCP window stays open) instead of waking for every few KiB. On this project's machine
/// that let a local S3 server send faster (the agent and the server share two cores); a slow
/// link loses nothing and a Pi wakes less often.
const COALESCE_WAIT: Duration = Duration::from_millis(1);
/// Pieces must have reached this size before a small one counts as drained: over TLS every
/// piece is at most one record (16 KiB) whether or not more is waiting, so a download over
/// TLS never waits.
const COALESCE_LARGEST: usize = 32 * 1024;

/// Whether a piece of `len` bytes, after pieces of up to `largest`, says the read took
/// whatever had arrived on a drained socket: a small part of what one read has taken.
fn drained(len: usize, largest: usize) -> bool {
    largest >= COALESCE_LARGEST && len < largest / 4
}

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

/// A finished download: what it did, and the slot's bytes read back and hashed.
pub struct Fetched {
    /// Progress at the end (every byte durable).
    pub progress: Progress,
    /// Has absorbed the slot's `size` bytes as read back after their sync; check it against
    /// the manifest with [`ImageHasher::finish`].
    pub readback: ImageHasher,
}

/// Fetches `url` into `slot` from byte `from` up to `size`, calling `synced` after each sync
/// with the durable length. Returns when all `size` bytes are durable and read back.
pub async fn fetch(
    http: &reqwest::Client,
    url: &str,
    slot: &Path,
    from: u64,
    size: u64,
    mut synced: impl FnMut(Progress),
) -> Result<Fetched, Stop> {
    let mut progress = Progress {
        durable: from,
        fetched: 0,
    };
    if from >= size {
        let readback = Readback::start(slot, from, size)?;
        let readback = readback.finish(None, &mut progress, &mut synced).await?;
        return Ok(Fetched { progress, readback });
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
    // The body arrives in pieces of a few KiB; each write to a tokio file is a trip to a
    // blocking thread, so they are gathered first.
    let mut file = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut readback = Readback::start(slot, from, size)?;
    let mut written = from;
    let mut stream = response.bytes_stream();
    let mut largest = 0;
    let ended = loop {
        let next = match tokio::time::timeout(LOW_SPEED_TIMEOUT, stream.next()).await {
            Ok(next) => next,
            Err(_) => break Err(Stop::Broken(format!("no data for {LOW_SPEED_TIMEOUT:?}"))),
        };
        let Some(chunk) = next else { break Ok(()) };
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => break Err(Stop::Broken(e.to_string())),
        };
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
        // Hand each chunk boundary crossed to the read-back (after the bytes reached the
        // file), so the durable length stays about a chunk behind.
        while !bytes.is_empty() {
            let boundary = (written / CHUNK + 1) * CHUNK;
            let take = ((boundary - written) as usize).min(bytes.len());
            file.write_all(&bytes[..take]).await?;
            written += take as u64;
            bytes = &bytes[take..];
            if written % CHUNK == 0 && written < size {
                file.flush().await?;
                readback.sync(written);
            }
        }
        readback.report(&mut progress, &mut synced);
        if drained(chunk.len(), largest) && written < size {
            tokio::time::sleep(COALESCE_WAIT).await;
        }
        largest = largest.max(chunk.len());
        if readback.stopped() {
            // Its error comes out of `finish` below.
            break Err(Stop::Io(std::io::Error::other(
                "the slot's read-back stopped",
            )));
        }
    };
    file.flush().await?;
    // Whatever ended the attempt, what was written becomes durable and counted.
    let readback = readback
        .finish(Some(written), &mut progress, &mut synced)
        .await?;
    ended?;
    if written < size {
        return Err(Stop::Broken(format!(
            "the body ended at byte {written} of {size}"
        )));
    }
    Ok(Fetched { progress, readback })
}

/// The thread that syncs the slot chunk by chunk and hashes what it reads back.
struct Readback {
    boundaries: mpsc::Sender<u64>,
    durable: tokio::sync::mpsc::UnboundedReceiver<u64>,
    thread: std::thread::JoinHandle<std::io::Result<ImageHasher>>,
}

impl Readback {
    /// Starts it on `slot`, first hashing the `from` bytes already there (a resumed
    /// download), for an image of `size` bytes.
    fn start(slot: &Path, from: u64, size: u64) -> std::io::Result<Self> {
        let writer = std::fs::OpenOptions::new().write(true).open(slot);
        // A download that never wrote has no slot file yet when nothing is to be fetched.
        let writer = match writer {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && from == 0 => None,
            other => Some(other?),
        };
        let reader = writer
            .as_ref()
            .map(|_| std::fs::File::open(slot))
            .transpose()?;
        let (boundaries, wanted) = mpsc::channel::<u64>();
        let (done, durable) = tokio::sync::mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("slot-readback".into())
            .spawn(move || -> std::io::Result<ImageHasher> {
                let mut hasher = ImageHasher::new(size);
                let (Some(writer), Some(mut reader)) = (writer, reader) else {
                    return Ok(hasher);
                };
                let mut buf = vec![0u8; READ_BUFFER];
                hash_until(&mut reader, &mut hasher, from.min(size), &mut buf)?;
                for boundary in wanted {
                    writer.sync_data()?;
                    hash_until(&mut reader, &mut hasher, boundary, &mut buf)?;
                    if done.send(boundary).is_err() {
                        break;
                    }
                }
                Ok(hasher)
            })?;
        Ok(Readback {
            boundaries,
            durable,
            thread,
        })
    }

    /// Asks for the slot to be synced (and read back) up to `boundary`.
    fn sync(&self, boundary: u64) {
        // A thread that stopped has an error, which `finish` returns.
        let _ = self.boundaries.send(boundary);
    }

    /// Reports every boundary made durable since the last call.
    fn report(&mut self, progress: &mut Progress, synced: &mut impl FnMut(Progress)) {
        while let Ok(durable) = self.durable.try_recv() {
            progress.durable = durable;
            synced(*progress);
        }
    }

    /// Whether the thread ended before it was told to: a sync or a read failed.
    fn stopped(&self) -> bool {
        self.thread.is_finished()
    }

    /// Syncs up to `last` (when given), waits for every sync asked for, reports them and
    /// returns the hasher.
    async fn finish(
        mut self,
        last: Option<u64>,
        progress: &mut Progress,
        synced: &mut impl FnMut(Progress),
    ) -> std::io::Result<ImageHasher> {
        if let Some(last) = last.filter(|&l| l > progress.durable) {
            self.sync(last);
        }
        drop(self.boundaries);
        while let Some(durable) = self.durable.recv().await {
            progress.durable = durable;
            synced(*progress);
        }
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(std::io::Error::other)?
            .map_err(|_| std::io::Error::other("the read-back thread panicked"))?
    }
}

/// Reads `reader` on from where it stands up to byte `end`, into `hasher`.
fn hash_until(
    reader: &mut std::fs::File,
    hasher: &mut ImageHasher,
    end: u64,
    buf: &mut [u8],
) -> std::io::Result<()> {
    let mut at = reader.stream_position()?;
    while at < end {
        let n = usize::try_from(end - at)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        reader.read_exact(&mut buf[..n])?;
        hasher.update(&buf[..n]).map_err(std::io::Error::other)?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_small_piece_after_large_ones_counts_as_drained() {
        // Plain HTTP: reads take what the socket holds, up to hyper's buffer.
        assert!(!drained(8 * 1024, 0), "nothing to compare with yet");
        assert!(drained(16 * 1024, 400 * 1024));
        assert!(!drained(200 * 1024, 400 * 1024));
        // TLS: one record per piece at most, full or not; never a wait.
        assert!(!drained(16 * 1024, 16 * 1024));
        assert!(!drained(512, 16 * 1024));
    }
}
