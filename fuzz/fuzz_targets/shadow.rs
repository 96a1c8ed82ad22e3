//! A shadow update as a device publishes it on `…/shadow/update`: any bytes are refused
//! with a status, or accepted into a document within its bounds, which a second update of
//! the same request then merges into (the stored-shadow path).

#![no_main]

use fleetwave::shadow::document::{self, MAX_DOCUMENT_BYTES, Shadow};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = document::client_token(&request);
    let Ok(first) = document::update(None, &request, 1_700_000_000) else {
        return;
    };
    check(&first.shadow);
    assert_eq!(first.shadow.version, 1);
    if let Ok(second) = document::update(Some(&first.shadow), &request, 1_700_000_001) {
        check(&second.shadow);
        assert_eq!(second.shadow.version, 2);
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
