//! A release envelope as the service's upload and the agent's job document carry it: any
//! bytes either parse into a manifest that survives its own round trip, or fail cleanly.

#![no_main]

use fleetwave_artifacts::{Manifest, SignedManifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(signed) = SignedManifest::parse(data) {
        let again = SignedManifest::parse(signed.to_json().as_bytes())
            .expect("a parsed envelope serialises into one that parses");
        assert_eq!(again.manifest(), signed.manifest());
        assert_eq!(again.signatures(), signed.signatures());
    }
    if let Ok(manifest) = Manifest::parse_canonical(data) {
        let again =
            Manifest::parse_canonical(&manifest.canonical_bytes()).expect("canonical bytes parse");
        assert_eq!(again, manifest);
    }
});
