//! A shadow update as a device publishes it on `…/shadow/update`: any bytes are refused
//! with a status, or accepted into a document within its bounds, which a second update of
//! the same request then merges into (the stored-shadow path), as it does into three stored
//! shadows (one 78 bytes short of the limit, one in the earlier storage layout), each read
//! from its text as a row holds it; a refused update leaves the shadow as it was, and an
//! accepted one leaves the text the shadow serialises to.

#![no_main]

use fleetwave::shadow::document::{self, MAX_DOCUMENT_BYTES, Shadow, Stored};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = document::client_token(&request);
    let mut shadow = Stored::default();
    if document::update(&mut shadow, &request, 1_700_000_000).is_err() {
        assert_eq!(
            shadow.shadow(),
            &Shadow::default(),
            "a refused update changed nothing"
        );
        return;
    }
    check(&shadow);
    assert_eq!(shadow.shadow().version, 1);
    let first = shadow.shadow().clone();
    match document::update(&mut shadow, &request, 1_700_000_001) {
        Ok(_) => {
            check(&shadow);
            assert_eq!(shadow.shadow().version, 2);
        }
        Err(_) => assert_eq!(shadow.shadow(), &first, "a refused update changed nothing"),
    }
    // The same request merged into stored shadows: one with floats, nested objects and a
    // key named `timestamp`, one 78 bytes short of the limit (a request that grows it by
    // more is refused after the merge, which puts the shadow back), and the first again as
    // a row in the earlier layout holds it (its next update writes it as a document).
    for (seed, text, expected) in seeds() {
        let mut shadow = Stored::read(text.clone()).unwrap();
        match document::update(&mut shadow, &request, 1_700_000_002) {
            Ok(_) => {
                check(&shadow);
                assert_eq!(shadow.shadow().version, seed.version + 1);
            }
            Err(_) => {
                assert_eq!(shadow.shadow(), seed, "a refused update changed nothing");
                assert_eq!(&shadow.take_document(), expected);
            }
        }
    }
});

/// The stored shadows every input is also merged into, each with its text as a row holds
/// it and the document it serialises to (both serialised once; the same text but for the
/// earlier layout's row).
fn seeds() -> &'static [(Shadow, String, String)] {
    static SEEDS: OnceLock<Vec<(Shadow, String, String)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let rich = serde_json::json!({"state": {
            "desired": {"fw": "2.0.0", "cfg": {"timestamp": 0.1, "list": [1.5, "x", {"a": true}]}},
            "reported": {"fw": "1.0.0", "cfg": {"timestamp": {"b": -0.0}}, "f": 150e55}}});
        let mut shadow = Stored::default();
        document::update(&mut shadow, &rich, 1_700_000_000).expect("the rich seed");
        let mut full = shadow.clone();
        let room = MAX_DOCUMENT_BYTES - full.take_document().len();
        let blob = "z".repeat(room.checked_sub(120).expect("the rich seed leaves room"));
        let blob = serde_json::json!({"state": {"reported": {"blob": blob}}});
        document::update(&mut full, &blob, 1_700_000_001).expect("the full seed");
        let left = MAX_DOCUMENT_BYTES - full.take_document().len();
        assert_eq!(left, 78, "the full seed's room");
        let mut seeds: Vec<_> = [shadow, full]
            .into_iter()
            .map(|mut stored| {
                let text = stored.take_document();
                (stored.into_shadow(), text.clone(), text)
            })
            .collect();
        let (first, _, text) = seeds[0].clone();
        let earlier = serde_json::json!({
            "desired": first.desired, "reported": first.reported,
            "desired_meta": first.desired_meta, "reported_meta": first.reported_meta,
            "version": first.version,
        });
        seeds.push((first, earlier.to_string(), text));
        seeds
    })
}

/// A stored shadow stays within its size bound, its metadata mirrors its state (a stamp at
/// each leaf, an object for each object), its text is what it serialises to, and it reads
/// back from that text as it was.
fn check(stored: &Stored) {
    let shadow = stored.shadow();
    for (state, meta) in [
        (&shadow.desired, &shadow.desired_meta),
        (&shadow.reported, &shadow.reported_meta),
    ] {
        mirrors(state.as_ref().unwrap_or(&Map::new()), meta);
    }
    let text = stored.clone().take_document();
    assert_eq!(
        text,
        serde_json::to_string(shadow).expect("a shadow serialises")
    );
    assert!(
        text.len() <= MAX_DOCUMENT_BYTES,
        "stored shadow of {} bytes",
        text.len()
    );
    let back = Stored::read(text).expect("a stored shadow reads back");
    assert_eq!(back.shadow(), shadow);
    let _ = shadow.delta();
    let _ = shadow.document();
}

/// Asserts that `meta` has `{"timestamp": n}` at every leaf of `state` and nothing else.
fn mirrors(state: &Map<String, Value>, meta: &Map<String, Value>) {
    assert_eq!(
        state.len(),
        meta.len(),
        "metadata {meta:?} for state {state:?}"
    );
    for (key, value) in state {
        match (value, meta.get(key)) {
            (Value::Object(inner), Some(Value::Object(m))) => mirrors(inner, m),
            (_, Some(Value::Object(m))) => {
                assert!(m.len() == 1 && m["timestamp"].is_u64(), "stamp {m:?}")
            }
            (_, m) => panic!("metadata {m:?} for {key}"),
        }
    }
}
