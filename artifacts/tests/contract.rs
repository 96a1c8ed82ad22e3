//! Property and unit tests of the artifact contract through its public API: sign, parse,
//! verify and hash round-trip, and any single-bit change is caught.

use std::time::Duration;

use fleetwave_artifacts::digest::verify_reader;
use fleetwave_artifacts::signing::ManifestSignature;
use fleetwave_artifacts::{
    Error, HardwareId, MANIFEST_FORMAT, Manifest, Product, SecretKey, Sha256, SignedManifest,
    Timestamp, TrustedKeys,
};
use proptest::prelude::*;
use semver::Version;

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

fn manifest_for(image: &[u8], version: Version, hardware: Vec<String>) -> Manifest {
    let now = Timestamp::from_unix(1_800_000_000);
    Manifest {
        format: MANIFEST_FORMAT,
        product: Product::parse("gateway-os").unwrap(),
        version,
        hardware: hardware
            .iter()
            .map(|h| HardwareId::parse(h).unwrap())
            .collect(),
        size: image.len() as u64,
        sha256: Sha256::of(image),
        min_version: None,
        security_floor: None,
        created_at: now,
        expires_at: now.plus(Duration::from_secs(86_400)),
        delta_base: None,
    }
}

fn arb_version() -> impl Strategy<Value = Version> {
    (0u64..100, 0u64..100, 0u64..100).prop_map(|(a, b, c)| Version::new(a, b, c))
}

fn arb_hardware() -> impl Strategy<Value = Vec<String>> {
    prop::collection::btree_set("[a-z0-9][a-z0-9._-]{0,12}", 1..4)
        .prop_map(|s| s.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sign_parse_verify_round_trip(
        image in prop::collection::vec(any::<u8>(), 1..4096),
        version in arb_version(),
        hardware in arb_hardware(),
    ) {
        let manifest = manifest_for(&image, version, hardware);
        let signed = SignedManifest::sign(manifest.clone(), &[&key(1)]).unwrap();
        let parsed = SignedManifest::parse(signed.to_json().as_bytes()).unwrap();
        prop_assert_eq!(&parsed, &signed);
        let verified = TrustedKeys::new([key(1).public()]).verify(&parsed, 1).unwrap();
        prop_assert_eq!(verified.manifest(), &manifest);
        prop_assert_eq!(verified.signers(), &[key(1).public().id()]);
        verify_reader(&image[..], verified.manifest(), |_| {}).unwrap();
    }

    #[test]
    fn one_bit_flip_in_the_image_fails(
        image in prop::collection::vec(any::<u8>(), 1..4096),
        bit in any::<usize>(),
    ) {
        let manifest = manifest_for(&image, Version::new(1, 0, 0), vec!["rpi4".into()]);
        let mut tampered = image.clone();
        let bit = bit % (image.len() * 8);
        tampered[bit / 8] ^= 1 << (bit % 8);
        let err = verify_reader(&tampered[..], &manifest, |_| {}).unwrap_err();
        prop_assert!(matches!(err, Error::DigestMismatch { .. }), "{}", err);
    }
}

/// Every single-bit change anywhere in the signed manifest object, enumerated, not sampled.
#[test]
fn every_one_bit_flip_in_the_manifest_fails() {
    let image = b"firmware".to_vec();
    let mut manifest = manifest_for(&image, Version::new(1, 0, 0), vec!["rpi4".into()]);
    manifest.security_floor = Some(Version::new(0, 9, 0));
    manifest.min_version = Some(Version::new(0, 5, 0));
    let signed = SignedManifest::sign(manifest, &[&key(1)]).unwrap();
    let json = signed.to_json();
    let start = json.find("{\"format\"").unwrap();
    let end = json.find(",\"signatures\"").unwrap();
    let trusted = TrustedKeys::new([key(1).public()]);
    for bit in start * 8..end * 8 {
        let mut bytes = json.clone().into_bytes();
        bytes[bit / 8] ^= 1 << (bit % 8);
        let outcome = SignedManifest::parse(&bytes).and_then(|s| trusted.verify(&s, 1));
        assert!(
            outcome.is_err(),
            "bit {bit} flipped and the manifest still verified"
        );
    }
}

#[test]
fn a_flipped_signature_bit_is_a_bad_signature() {
    let manifest = manifest_for(b"x", Version::new(1, 0, 0), vec!["rpi4".into()]);
    let signed = SignedManifest::sign(manifest, &[&key(1)]).unwrap();
    let json = signed.to_json();
    let sig = &signed.signatures()[0].sig;
    let mut flipped = sig.clone().into_bytes();
    flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
    let json = json.replace(sig.as_str(), std::str::from_utf8(&flipped).unwrap());
    let parsed = SignedManifest::parse(json.as_bytes()).unwrap();
    let err = TrustedKeys::new([key(1).public()])
        .verify(&parsed, 1)
        .unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
}

#[test]
fn an_untrusted_key_fails() {
    let manifest = manifest_for(b"x", Version::new(1, 0, 0), vec!["rpi4".into()]);
    let signed = SignedManifest::sign(manifest, &[&key(1)]).unwrap();
    let err = TrustedKeys::new([key(2).public()])
        .verify(&signed, 1)
        .unwrap_err();
    match err {
        Error::UnknownKey { key_ids } => assert_eq!(key_ids, vec![key(1).public().id()]),
        other => panic!("expected UnknownKey, got {other}"),
    }
}

#[test]
fn threshold_counts_distinct_trusted_keys() {
    let manifest = manifest_for(b"x", Version::new(1, 0, 0), vec!["rpi4".into()]);
    let trusted = TrustedKeys::new([key(1).public(), key(2).public(), key(3).public()]);

    let one = SignedManifest::sign(manifest.clone(), &[&key(1)]).unwrap();
    assert!(matches!(
        trusted.verify(&one, 2),
        Err(Error::BelowThreshold {
            valid: 1,
            required: 2
        })
    ));

    // The same key's signature twice in the envelope counts once.
    let sig = one.signatures()[0].clone();
    let doubled = envelope_with(&one, vec![sig.clone(), sig]);
    assert!(matches!(
        trusted.verify(&doubled, 2),
        Err(Error::BelowThreshold {
            valid: 1,
            required: 2
        })
    ));

    // An unknown key's signature does not count either.
    let with_unknown = SignedManifest::sign(manifest.clone(), &[&key(1), &key(9)]).unwrap();
    assert!(matches!(
        trusted.verify(&with_unknown, 2),
        Err(Error::BelowThreshold {
            valid: 1,
            required: 2
        })
    ));

    let two = SignedManifest::sign(manifest, &[&key(1), &key(3)]).unwrap();
    let verified = trusted.verify(&two, 2).unwrap();
    assert_eq!(verified.signers().len(), 2);

    assert!(matches!(
        trusted.verify(&two, 0),
        Err(Error::InvalidThreshold { .. })
    ));
    assert!(matches!(
        trusted.verify(&two, 4),
        Err(Error::InvalidThreshold { .. })
    ));
}

#[test]
fn cosigning_adds_each_key_once() {
    let manifest = manifest_for(b"x", Version::new(1, 0, 0), vec!["rpi4".into()]);
    let mut signed = SignedManifest::sign(manifest, &[&key(1)]).unwrap();
    signed.add_signature(&key(2)).unwrap();
    signed.add_signature(&key(2)).unwrap();
    assert_eq!(signed.signatures().len(), 2);
}

#[test]
fn key_files_round_trip_and_secret_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let k = SecretKey::generate().unwrap();
    let path = dir.path().join("release.key");
    k.write_new(&path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        k.write_new(&path).is_err(),
        "an existing key is never overwritten"
    );
    let loaded = SecretKey::load(&path).unwrap();
    assert_eq!(loaded.public(), k.public());
    assert!(!format!("{loaded:?}").contains(&hex_seed(&path)));

    std::fs::write(dir.path().join("a.pub"), k.public().to_line()).unwrap();
    std::fs::write(dir.path().join("b.pub"), key(4).public().to_line()).unwrap();
    let trusted = TrustedKeys::load(dir.path()).unwrap();
    assert_eq!(trusted.len(), 2);

    assert!(matches!(
        TrustedKeys::parse("ed25519-public abc"),
        Err(Error::MalformedKey { .. })
    ));
    assert!(matches!(
        SecretKey::parse("ed25519-public 00"),
        Err(Error::MalformedKey { .. })
    ));
}

fn hex_seed(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .last()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

fn envelope_with(signed: &SignedManifest, signatures: Vec<ManifestSignature>) -> SignedManifest {
    let manifest = String::from_utf8(signed.manifest().canonical_bytes()).unwrap();
    let json = format!(
        r#"{{"manifest":{manifest},"signatures":{}}}"#,
        serde_json::to_string(&signatures).unwrap()
    );
    SignedManifest::parse(json.as_bytes()).unwrap()
}
