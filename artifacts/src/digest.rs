//! Streaming image digests: hash any byte stream in bounded memory, count its bytes, stop at
//! the first byte past the signed size, and check size and SHA-256 at the end.
//!
//! sha2 picks the fastest implementation at run time (SHA-NI on x86-64, the SHA2 extensions
//! on aarch64) through `cpufeatures`; no feature flag is needed.

use std::io::{ErrorKind, Read};

use sha2::Digest;

use crate::error::Error;
use crate::manifest::{Manifest, Sha256};

/// The read buffer for hashing files and streams.
pub const CHUNK: usize = 256 * 1024;

/// Hashes an image as it streams by, bounded by the size the manifest signed.
#[derive(Clone)]
pub struct ImageHasher {
    hasher: sha2::Sha256,
    seen: u64,
    limit: u64,
}

impl ImageHasher {
    /// A hasher that refuses more than `signed_size` bytes.
    pub fn new(signed_size: u64) -> Self {
        ImageHasher {
            hasher: sha2::Sha256::new(),
            seen: 0,
            limit: signed_size,
        }
    }

    /// Absorbs the next chunk. Fails, absorbing nothing, if the chunk would go past the
    /// signed size.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let len = chunk.len() as u64;
        if self.seen.saturating_add(len) > self.limit {
            return Err(Error::ExceedsSignedSize { limit: self.limit });
        }
        self.hasher.update(chunk);
        self.seen += len;
        Ok(())
    }

    /// Bytes absorbed so far.
    pub fn bytes(&self) -> u64 {
        self.seen
    }

    /// Checks that exactly the signed size arrived and that it hashes to `expected`.
    pub fn finish(self, expected: &Sha256) -> Result<(), Error> {
        if self.seen != self.limit {
            return Err(Error::SizeMismatch {
                expected: self.limit,
                actual: self.seen,
            });
        }
        let actual = Sha256(self.hasher.finalize().into());
        if actual != *expected {
            return Err(Error::DigestMismatch {
                expected: *expected,
                actual,
            });
        }
        Ok(())
    }
}

/// Feeds `reader` to `each` one chunk at a time, in bounded memory, until the end.
fn for_each_chunk(
    mut reader: impl Read,
    mut each: impl FnMut(&[u8]) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => each(&buf[..n])?,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Hashes everything `reader` yields, calling `progress` with the running byte count.
pub fn sha256_reader(
    reader: impl Read,
    mut progress: impl FnMut(u64),
) -> Result<(Sha256, u64), Error> {
    let mut hasher = sha2::Sha256::new();
    let mut total = 0u64;
    for_each_chunk(reader, |chunk| {
        hasher.update(chunk);
        total += chunk.len() as u64;
        progress(total);
        Ok(())
    })?;
    Ok((Sha256(hasher.finalize().into()), total))
}

/// Streams `reader` through an [`ImageHasher`] for `manifest`: fails as soon as more than the
/// signed size arrives, and at the end on a size or digest mismatch.
pub fn verify_reader(
    reader: impl Read,
    manifest: &Manifest,
    mut progress: impl FnMut(u64),
) -> Result<(), Error> {
    let mut hasher = ImageHasher::new(manifest.size);
    for_each_chunk(reader, |chunk| {
        hasher.update(chunk)?;
        progress(hasher.bytes());
        Ok(())
    })?;
    hasher.finish(&manifest.sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hasher_checks_size_and_digest() {
        let data = vec![7u8; 1000];
        let digest = Sha256::of(&data);

        let mut h = ImageHasher::new(1000);
        h.update(&data[..400]).unwrap();
        h.update(&data[400..]).unwrap();
        h.finish(&digest).unwrap();

        let mut h = ImageHasher::new(1000);
        h.update(&data[..999]).unwrap();
        assert!(matches!(
            h.finish(&digest),
            Err(Error::SizeMismatch {
                expected: 1000,
                actual: 999
            })
        ));

        let mut h = ImageHasher::new(1000);
        h.update(&data).unwrap();
        assert!(matches!(
            h.update(&[0]),
            Err(Error::ExceedsSignedSize { limit: 1000 })
        ));
        assert_eq!(h.bytes(), 1000);

        let mut h = ImageHasher::new(1000);
        h.update(&[8u8; 1000]).unwrap();
        assert!(matches!(
            h.finish(&digest),
            Err(Error::DigestMismatch { .. })
        ));
    }

    #[test]
    fn reader_stops_past_the_signed_size() {
        /// A reader that never ends: verification must stop on its own.
        struct Endless;
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                buf.fill(1);
                Ok(buf.len())
            }
        }
        let mut m = crate::test_support::sample();
        m.size = 3 * CHUNK as u64 + 5;
        let err = verify_reader(Endless, &m, |_| {}).unwrap_err();
        assert!(matches!(err, Error::ExceedsSignedSize { .. }), "{err}");
    }

    #[test]
    fn sha256_reader_matches_one_shot() {
        let data: Vec<u8> = (0..(CHUNK * 2 + 17)).map(|i| i as u8).collect();
        let mut last = 0;
        let (digest, n) = sha256_reader(&data[..], |p| last = p).unwrap();
        assert_eq!(digest, Sha256::of(&data));
        assert_eq!(n, data.len() as u64);
        assert_eq!(last, n);
    }
}
