//! Streaming an image from its (presigned) URL straight into a slot: bounded memory whatever
//! the size, `Range` to resume from the last durable byte, a hard stop past the signed size,
//! and a low-speed timeout. Once [`CHUNK`] bytes were written since the last sync the slot
//! is synced and the caller records the durable length, so a break re-fetches about a chunk
//! at most (plus the pieces queued for the slot).
//!
//! The slot is written on a thread of its own (the [`Writer`]): the download hands it the
//! body's pieces as they arrive (shared, not copied); it writes them, syncs, then reads
//! what it synced back from the slot and hashes it, so the digest a job checks is that of
//! the bytes the slot holds, and the whole image is verified when the last bytes land,
//! with no second pass over it. A resumed download's bytes already in the slot are read
//! back before the request, so the body never waits behind them.

use std::io::{IoSlice, Read, Seek, Write};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use fleetwave_artifacts::digest::ImageHasher;
use futures_util::StreamExt;
use reqwest::StatusCode;

/// Bytes between syncs of the slot (and reported progress). Measured on this project's
/// machine, a sync every MiB cost twice the time per GiB of one every 4 MiB.
pub const CHUNK: u64 = 4 << 20;
/// No byte for this long ends the attempt.
pub const LOW_SPEED_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read back at a time.
const READ_BUFFER: usize = 256 * 1024;
/// Bytes of the body's pieces gathered (shared, not copied) before they are handed to the
/// slot's thread: one wake-up of that thread per batch rather than per piece of a few KiB.
const BATCH: usize = 1 << 20;
/// Batches queued for the slot's thread at most: the download waits when the slot falls
/// behind. With the batch being gathered and the one being written, four batches are held
/// at most, each up to a piece (about 400 KiB) over [`BATCH`]: about 6 MiB.
const QUEUED_BATCHES: usize = 2;
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
    // The slot's bytes already there (a resumed download) are read back and hashed before
    // the request: the body is never held up behind them.
    let (mut writer, hashed) = Writer::start(slot, from, size)?;
    // An error (the thread stopped) comes out of `finish`.
    if from >= size || hashed.await.is_err() {
        let readback = writer.finish(&mut progress, &mut synced).await?;
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
    let mut written = from;
    let mut stream = response.bytes_stream();
    let mut largest = 0;
    let ended = loop {
        let next = match tokio::time::timeout(LOW_SPEED_TIMEOUT, stream.next()).await {
            Ok(next) => next,
            Err(_) => break Err(Stop::Broken(format!("no data for {LOW_SPEED_TIMEOUT:?}"))),
        };
        let Some(chunk) = next else { break Ok(()) };
        let mut chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => break Err(Stop::Broken(e.to_string())),
        };
        progress.fetched += chunk.len() as u64;
        let len = chunk.len();
        if skip > 0 {
            let n = (skip as usize).min(chunk.len());
            chunk = chunk.slice(n..);
            skip -= n as u64;
        }
        if written + chunk.len() as u64 > size {
            break Err(Stop::TooLarge(size));
        }
        written += chunk.len() as u64;
        if !chunk.is_empty() && !writer.write(chunk).await {
            // Its error comes out of `finish` below.
            break Err(Stop::Io(std::io::Error::other("the slot's writer stopped")));
        }
        writer.report(&mut progress, &mut synced);
        if drained(len, largest) && written < size {
            tokio::time::sleep(COALESCE_WAIT).await;
        }
        largest = largest.max(len);
    };
    // Whatever ended the attempt, what was written becomes durable and counted.
    let readback = writer.finish(&mut progress, &mut synced).await?;
    ended?;
    if written < size {
        return Err(Stop::Broken(format!(
            "the body ended at byte {written} of {size}"
        )));
    }
    Ok(Fetched { progress, readback })
}

/// The slot's thread: writes the pieces the download hands it, syncs once [`CHUNK`] bytes
/// were written since the last sync (and at the end), and reads back and hashes what each
/// sync made durable.
struct Writer {
    batches: tokio::sync::mpsc::Sender<Vec<Bytes>>,
    /// The batch being gathered.
    gathered: Vec<Bytes>,
    /// Its length in bytes.
    gathered_len: usize,
    durable: tokio::sync::mpsc::UnboundedReceiver<u64>,
    thread: std::thread::JoinHandle<std::io::Result<ImageHasher>>,
}

impl Writer {
    /// Starts it on `slot` (created if missing, kept as it is up to `from`), first hashing
    /// the `from` bytes already there (a resumed download), for an image of `size` bytes.
    /// The receiver hears once those are hashed.
    fn start(
        slot: &Path,
        from: u64,
        size: u64,
    ) -> std::io::Result<(Self, tokio::sync::oneshot::Receiver<()>)> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(slot)?;
        file.seek(std::io::SeekFrom::Start(from))?;
        let mut reader = std::fs::File::open(slot)?;
        let (batches, mut arriving) = tokio::sync::mpsc::channel::<Vec<Bytes>>(QUEUED_BATCHES);
        let (done, durable) = tokio::sync::mpsc::unbounded_channel();
        let (hashed, ready) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("slot-writer".into())
            .spawn(move || -> std::io::Result<ImageHasher> {
                let mut hasher = ImageHasher::new(size);
                let mut buf = vec![0u8; READ_BUFFER];
                hash_until(&mut reader, &mut hasher, from.min(size), &mut buf)?;
                let _ = hashed.send(());
                let (mut written, mut synced) = (from, from);
                loop {
                    let batch = arriving.blocking_recv();
                    let open = batch.is_some();
                    let batch = batch.unwrap_or_default();
                    written += write_pieces(&mut file, &batch)?;
                    if written > synced && (written - synced >= CHUNK || !open) {
                        file.sync_data()?;
                        hash_until(&mut reader, &mut hasher, written, &mut buf)?;
                        synced = written;
                        // The download may have ended meanwhile; the hash still counts.
                        let _ = done.send(synced);
                    }
                    if !open {
                        return Ok(hasher);
                    }
                }
            })?;
        let writer = Writer {
            batches,
            gathered: Vec::new(),
            gathered_len: 0,
            durable,
            thread,
        };
        Ok((writer, ready))
    }

    /// Hands `piece` (the next bytes of the image) to the thread, in batches of
    /// [`BATCH`] bytes, waiting while it has [`QUEUED_BATCHES`] queued; false if it stopped
    /// (a write, sync or read failed).
    async fn write(&mut self, piece: Bytes) -> bool {
        self.gathered_len += piece.len();
        self.gathered.push(piece);
        if self.gathered_len < BATCH {
            return true;
        }
        self.hand_over().await
    }

    /// Hands the batch gathered so far to the thread; false if it stopped.
    async fn hand_over(&mut self) -> bool {
        let batch = std::mem::take(&mut self.gathered);
        self.gathered_len = 0;
        batch.is_empty() || self.batches.send(batch).await.is_ok()
    }

    /// Reports every sync made since the last call.
    fn report(&mut self, progress: &mut Progress, synced: &mut impl FnMut(Progress)) {
        while let Ok(durable) = self.durable.try_recv() {
            progress.durable = durable;
            synced(*progress);
        }
    }

    /// Lets the thread write, sync and read back what it was handed, reports every sync and
    /// returns the hasher.
    async fn finish(
        mut self,
        progress: &mut Progress,
        synced: &mut impl FnMut(Progress),
    ) -> std::io::Result<ImageHasher> {
        // A thread that stopped has an error, returned below.
        self.hand_over().await;
        let Writer {
            batches,
            mut durable,
            thread,
            ..
        } = self;
        drop(batches);
        while let Some(at) = durable.recv().await {
            progress.durable = at;
            synced(*progress);
        }
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(std::io::Error::other)?
            .map_err(|_| std::io::Error::other("the slot's writer panicked"))?
    }
}

/// Writes `pieces` to `file` in order, in as few calls as the kernel allows; returns how
/// many bytes that was.
fn write_pieces(file: &mut std::fs::File, pieces: &[Bytes]) -> std::io::Result<u64> {
    let mut slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
    let mut slices = &mut slices[..];
    let mut written = 0;
    while !slices.is_empty() {
        let n = file.write_vectored(slices)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        written += n as u64;
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(written)
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
