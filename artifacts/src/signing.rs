//! Release keys and signatures: ed25519 keys and their key files, the signed-manifest envelope
//! with one or more detached signatures, and k-of-n verification against a trusted key set.
//!
//! # Key files
//! Text files, one key per line, `#` comments and blank lines ignored:
//! - secret key (`NAME.key`, created mode 0600): `ed25519-secret <64 hex digits: the seed>`
//! - public key (`NAME.pub`): `ed25519-public <64 hex digits>`
//!
//! A trusted-keys file is any number of public-key lines; a directory of `*.pub` files is
//! read as their union. A key's id is the hex SHA-256 of its 32 public-key bytes.
//!
//! # Envelope
//! `{"manifest":<canonical manifest>,"signatures":[{"key_id":"<hex>","sig":"<128 hex>"}]}`.
//! Each signature covers [`SIGNING_CONTEXT`] followed by the canonical manifest bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::Error;
use crate::manifest::{MAX_DOCUMENT_BYTES, Manifest, Sha256};

/// Domain separation: a fleetwave manifest signature can never be replayed as a signature over
/// anything else.
pub const SIGNING_CONTEXT: &[u8] = b"fleetwave/manifest/v1\n";

/// No envelope carries more signatures than this.
pub const MAX_SIGNATURES: usize = 16;

const SECRET_TAG: &str = "ed25519-secret";
const PUBLIC_TAG: &str = "ed25519-public";

/// The id of a release key: SHA-256 of its public key bytes, shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(Sha256);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

impl FromStr for KeyId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        s.parse()
            .map(KeyId)
            .map_err(|reason| Error::MalformedKey { reason })
    }
}

/// A release public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// The key's id.
    pub fn id(&self) -> KeyId {
        KeyId(Sha256::of(self.0.as_bytes()))
    }

    /// The key as one line of a key file.
    pub fn to_line(&self) -> String {
        format!("{PUBLIC_TAG} {}", hex::encode(self.0.as_bytes()))
    }

    fn from_hex(hex_key: &str) -> Result<Self, Error> {
        let bytes = decode_32(hex_key)?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|e| Error::MalformedKey {
                reason: format!("not an ed25519 public key: {e}"),
            })
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

/// A release signing key. Its `Debug` never shows the secret.
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Io(std::io::Error::other(e)))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// The key from its 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(seed))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Parses a secret key file's text.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut lines = key_lines(text);
        let Some((tag, value)) = lines.next() else {
            return Err(Error::MalformedKey {
                reason: "no key in secret key file".to_owned(),
            });
        };
        if tag != SECRET_TAG {
            return Err(Error::MalformedKey {
                reason: format!("expected `{SECRET_TAG} <hex>`, found `{tag}`"),
            });
        }
        if lines.next().is_some() {
            return Err(Error::MalformedKey {
                reason: "a secret key file holds exactly one key".to_owned(),
            });
        }
        Ok(SecretKey::from_seed(&decode_32(value)?))
    }

    /// Reads a secret key file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        Self::parse(&read_small(path)?)
    }

    /// The secret key file's text.
    pub fn to_file_text(&self) -> String {
        format!(
            "# fleetwave release secret key {}\n# Keep offline. Anyone holding this file can sign releases.\n{SECRET_TAG} {}\n",
            self.public().id(),
            hex::encode(self.0.to_bytes())
        )
    }

    /// Writes the key to a new file, readable by its owner only (mode 0600 on Unix).
    /// Refuses to overwrite an existing file.
    pub fn write_new(&self, path: &Path) -> Result<(), Error> {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path)?;
        file.write_all(self.to_file_text().as_bytes())?;
        file.sync_all()?;
        Ok(())
    }

    /// A detached signature over `manifest`'s canonical bytes.
    pub fn sign(&self, manifest: &Manifest) -> ManifestSignature {
        let sig = self.0.sign(&signed_message(&manifest.canonical_bytes()));
        ManifestSignature {
            key_id: self.public().id(),
            sig: hex::encode(sig.to_bytes()),
        }
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}, secret redacted)", self.public().id())
    }
}

/// One detached signature in an envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSignature {
    /// Which key signed.
    pub key_id: KeyId,
    /// The ed25519 signature, 128 hex digits.
    pub sig: String,
}

/// A manifest with its signatures, as it travels: in a file, an upload, a job document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedManifest {
    manifest: Manifest,
    signatures: Vec<ManifestSignature>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    #[serde(borrow)]
    manifest: &'a RawValue,
    signatures: Vec<ManifestSignature>,
}

impl SignedManifest {
    /// Signs `manifest` with each key (at least one).
    pub fn sign(manifest: Manifest, keys: &[&SecretKey]) -> Result<Self, Error> {
        manifest.validate()?;
        let mut signed = SignedManifest {
            manifest,
            signatures: Vec::new(),
        };
        for key in keys {
            signed.add_signature(key)?;
        }
        Ok(signed)
    }

    /// Adds one more signature (co-signing for a k-of-n threshold). A key that already signed
    /// is not added twice.
    pub fn add_signature(&mut self, key: &SecretKey) -> Result<(), Error> {
        let id = key.public().id();
        if self.signatures.iter().any(|s| s.key_id == id) {
            return Ok(());
        }
        if self.signatures.len() >= MAX_SIGNATURES {
            return Err(Error::InvalidField {
                field: "signatures",
                reason: format!("at most {MAX_SIGNATURES} signatures"),
            });
        }
        self.signatures.push(key.sign(&self.manifest));
        Ok(())
    }

    /// Parses an envelope strictly. Nothing is verified yet: call [`TrustedKeys::verify`].
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(Error::DocumentTooLarge {
                size: bytes.len(),
                limit: MAX_DOCUMENT_BYTES,
            });
        }
        let envelope: Envelope<'_> =
            serde_json::from_slice(bytes).map_err(|e| Error::MalformedManifest {
                reason: e.to_string(),
            })?;
        if envelope.signatures.len() > MAX_SIGNATURES {
            return Err(Error::InvalidField {
                field: "signatures",
                reason: format!("at most {MAX_SIGNATURES} signatures"),
            });
        }
        let manifest = Manifest::parse_canonical(envelope.manifest.get().as_bytes())?;
        Ok(SignedManifest {
            manifest,
            signatures: envelope.signatures,
        })
    }

    /// Reads and parses an envelope file (bounded in size before it is read whole).
    pub fn load(path: &Path) -> Result<Self, Error> {
        Self::parse(read_small(path)?.as_bytes())
    }

    /// The envelope as compact JSON.
    pub fn to_json(&self) -> String {
        let manifest =
            String::from_utf8(self.manifest.canonical_bytes()).expect("serde_json writes UTF-8");
        let signatures =
            serde_json::to_string(&self.signatures).expect("signatures always serialise");
        format!(r#"{{"manifest":{manifest},"signatures":{signatures}}}"#)
    }

    /// The manifest, not yet verified.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The signatures as carried.
    pub fn signatures(&self) -> &[ManifestSignature] {
        &self.signatures
    }
}

impl Serialize for SignedManifest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw = RawValue::from_string(self.to_json()).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SignedManifest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <Box<RawValue>>::deserialize(d)?;
        SignedManifest::parse(raw.get().as_bytes()).map_err(serde::de::Error::custom)
    }
}

/// A manifest whose signatures met the threshold. Only [`TrustedKeys::verify`] makes one, so
/// holding one is proof of verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedManifest {
    manifest: Manifest,
    signers: Vec<KeyId>,
}

impl VerifiedManifest {
    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The distinct trusted keys whose signatures verified.
    pub fn signers(&self) -> &[KeyId] {
        &self.signers
    }
}

/// The release keys a verifier trusts.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, PublicKey>,
}

impl TrustedKeys {
    /// A key set from keys.
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        TrustedKeys {
            keys: keys.into_iter().map(|k| (k.id(), k)).collect(),
        }
    }

    /// Parses a trusted-keys (or single public key) file's text.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut keys = Vec::new();
        for (tag, value) in key_lines(text) {
            if tag != PUBLIC_TAG {
                return Err(Error::MalformedKey {
                    reason: format!("expected `{PUBLIC_TAG} <hex>`, found `{tag}`"),
                });
            }
            keys.push(PublicKey::from_hex(value)?);
        }
        Ok(TrustedKeys::new(keys))
    }

    /// Reads a trusted-keys file, or every `*.pub` file of a directory.
    pub fn load(path: &Path) -> Result<Self, Error> {
        if !path.is_dir() {
            return Self::parse(&read_small(path)?);
        }
        let mut all = TrustedKeys::default();
        let mut entries = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort();
        for file in entries
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "pub"))
        {
            all.keys.extend(Self::parse(&read_small(file)?)?.keys);
        }
        Ok(all)
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted key ids.
    pub fn ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.keys()
    }

    /// Verifies `signed` against these keys: at least `threshold` distinct trusted keys must
    /// have signed. A signature by a trusted key that does not verify fails the whole envelope
    /// (it was tampered with); signatures by unknown keys are ignored; a key that signed twice
    /// counts once.
    pub fn verify(
        &self,
        signed: &SignedManifest,
        threshold: usize,
    ) -> Result<VerifiedManifest, Error> {
        if threshold == 0 || threshold > self.keys.len() {
            return Err(Error::InvalidThreshold {
                threshold,
                trusted: self.keys.len(),
            });
        }
        let message = signed_message(&signed.manifest.canonical_bytes());
        let mut valid = BTreeSet::new();
        let mut unknown = Vec::new();
        for entry in &signed.signatures {
            let Some(key) = self.keys.get(&entry.key_id) else {
                unknown.push(entry.key_id);
                continue;
            };
            let bad = || Error::BadSignature {
                key_id: entry.key_id,
            };
            let mut bytes = [0u8; 64];
            hex::decode_to_slice(&entry.sig, &mut bytes).map_err(|_| bad())?;
            key.0
                .verify_strict(&message, &Signature::from_bytes(&bytes))
                .map_err(|_| bad())?;
            valid.insert(entry.key_id);
        }
        if valid.is_empty() && !unknown.is_empty() {
            return Err(Error::UnknownKey { key_ids: unknown });
        }
        if valid.len() < threshold {
            return Err(Error::BelowThreshold {
                valid: valid.len(),
                required: threshold,
            });
        }
        Ok(VerifiedManifest {
            manifest: signed.manifest.clone(),
            signers: valid.into_iter().collect(),
        })
    }
}

fn signed_message(canonical: &[u8]) -> Vec<u8> {
    [SIGNING_CONTEXT, canonical].concat()
}

fn decode_32(value: &str) -> Result<[u8; 32], Error> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(value, &mut out).map_err(|e| Error::MalformedKey {
        reason: format!("expected 64 hex digits: {e}"),
    })?;
    Ok(out)
}

/// The `(tag, value)` pairs of a key file, skipping comments and blank lines.
fn key_lines(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_once(char::is_whitespace).unwrap_or((l, "")))
        .map(|(tag, value)| (tag, value.trim()))
}

/// Reads a key or manifest file, refusing anything larger than a manifest may be.
fn read_small(path: &Path) -> Result<String, Error> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let mut text = String::new();
    file.take(MAX_DOCUMENT_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(Error::DocumentTooLarge {
            size: text.len(),
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    Ok(text)
}
