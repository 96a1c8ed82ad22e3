//! A shadow update as a device publishes it on `…/shadow/update`: any bytes are refused
//! with a status, or accepted into a document within its bounds, which a second update of
//! the same request then merges into (the stored-shadow path); a refused update leaves the
//! shadow as it was.

#![no_main]

use fleetwave::shadow::document::{self, MAX_DOCUMENT_BYTES, Shadow};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = document::client_token(&request);
    let mut shadow = Shadow::default();
    if document::update(&mut shadow, &request, 1_700_000_000).is_err() {
        assert_eq!(shadow, Shadow::default(), "a refused update changed nothing");
        return;
    }
    check(&shadow);
    assert_eq!(shadow.version, 1);
    let first = shadow.clone();
    match document::update(&mut shadow, &request, 1_700_000_001) {
        Ok(_) => {
            check(&shadow);
            assert_eq!(shadow.version, 2);
        }
        Err(_) => assert_eq!(shadow, first, "a refused update changed nothing"),
    }
});

/// A stored shadow stays within its size bound and reads back as it was written.
fn check(shadow: &Shadow) {
    let stored = serde_json::to_string(shadow).expect("a shadow serialises");
    assert!(
        stored.len() <= 2 * MAX_DOCUMENT_BYTES,
        "stored shadow of {} bytes",
        stored.len()
    );
    let back: Shadow = serde_json::from_str(&stored).expect("a stored shadow reads back");
    assert_eq!(&back, shadow);
    let _ = shadow.delta();
    let _ = shadow.document();
}
