//! Device shadow documents with AWS IoT Device Shadow semantics, as pure functions over
//! JSON: no IO, no clock (the time is passed in), so every rule is unit-tested here and the
//! MQTT and HTTP edges only move bytes.
//!
//! - `desired` and `reported` merge into the document: nested objects merge, `null` deletes
//!   a field (or a whole section), arrays and scalars replace what was there. Arrays may not
//!   contain `null`; documents nest at most [`MAX_DEPTH`] levels.
//! - `version` starts at 1 and rises by one on every accepted update; an update that names
//!   a version other than the current one is refused with 409.
//! - `metadata` mirrors the state with `{"timestamp": unix seconds}` at each leaf it set.
//! - `delta` holds the desired fields that reported does not match.
//! - `clientToken` (at most 64 bytes) is echoed in every answer.

use serde_json::{Map, Value, json};

/// Deepest nesting of `desired` or `reported`.
pub const MAX_DEPTH: usize = 8;
/// Largest stored document (state and metadata), in bytes of JSON.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024;
/// Longest `clientToken`.
pub const MAX_CLIENT_TOKEN: usize = 64;

type Object = Map<String, Value>;

/// A stored shadow.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Shadow {
    /// Desired state (absent: no desired section).
    pub desired: Option<Object>,
    /// Reported state.
    pub reported: Option<Object>,
    /// Timestamps of desired fields, mirroring their structure.
    pub desired_meta: Object,
    /// Timestamps of reported fields.
    pub reported_meta: Object,
    /// Rises by one on every accepted update; 0 before the first.
    pub version: u64,
}

/// A refused request: an HTTP-like code and a message, as AWS IoT answers on `/rejected`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    /// 400 bad request, 404 no shadow, 409 version conflict, 413 too large.
    pub code: u16,
    /// What was wrong.
    pub message: String,
}

impl Rejection {
    fn bad(message: impl Into<String>) -> Self {
        Rejection {
            code: 400,
            message: message.into(),
        }
    }

    /// The `/rejected` document.
    pub fn document(&self, now: u64, client_token: Option<&str>) -> Value {
        with_token(
            json!({"code": self.code, "message": self.message, "timestamp": now}),
            client_token,
        )
    }
}

/// What an accepted update produced, ready to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct Updated {
    /// The new shadow, to store.
    pub shadow: Shadow,
    /// The `/update/accepted` document.
    pub accepted: Value,
    /// The `/update/documents` document (previous and current).
    pub documents: Value,
    /// The `/update/delta` document, when the update changed desired state that reported
    /// does not match.
    pub delta: Option<Value>,
}

/// The `clientToken` of a request, checked (also to echo it in a rejection).
pub fn client_token(request: &Value) -> Result<Option<&str>, Rejection> {
    match request.get("clientToken") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(t)) if t.len() <= MAX_CLIENT_TOKEN => Ok(Some(t)),
        Some(Value::String(_)) => Err(Rejection::bad(format!(
            "clientToken is longer than {MAX_CLIENT_TOKEN} bytes"
        ))),
        Some(_) => Err(Rejection::bad("clientToken must be a string")),
    }
}

/// Applies an `update` request to `current` (None: no shadow yet) at time `now`.
pub fn update(current: Option<&Shadow>, request: &Value, now: u64) -> Result<Updated, Rejection> {
    let Value::Object(req) = request else {
        return Err(Rejection::bad("the request must be a JSON object"));
    };
    if let Some(key) = req
        .keys()
        .find(|k| !matches!(k.as_str(), "state" | "version" | "clientToken"))
    {
        return Err(Rejection::bad(format!("unknown field `{key}`")));
    }
    let token = client_token(request)?;
    let Some(Value::Object(state)) = req.get("state") else {
        return Err(Rejection::bad("missing required node: state (an object)"));
    };
    if state.is_empty() {
        return Err(Rejection::bad("state must contain desired and/or reported"));
    }
    if let Some(key) = state
        .keys()
        .find(|k| !matches!(k.as_str(), "desired" | "reported"))
    {
        return Err(Rejection::bad(format!(
            "state may hold desired and reported only, not `{key}`"
        )));
    }
    for (section, value) in state {
        if !matches!(value, Value::Object(_) | Value::Null) {
            return Err(Rejection::bad(format!(
                "state.{section} must be an object or null"
            )));
        }
        check_value(value, section, 0)?;
    }
    let previous = current.cloned().unwrap_or_default();
    match req.get("version") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let Some(v) = v.as_u64() else {
                return Err(Rejection::bad("version must be a non-negative integer"));
            };
            if v != previous.version {
                return Err(Rejection {
                    code: 409,
                    message: format!(
                        "version conflict: the shadow is at version {}",
                        previous.version
                    ),
                });
            }
        }
    }

    let mut next = previous.clone();
    let mut accepted_meta = Object::new();
    for (section, value) in state {
        let (data, meta) = match section.as_str() {
            "desired" => (&mut next.desired, &mut next.desired_meta),
            _ => (&mut next.reported, &mut next.reported_meta),
        };
        match value {
            Value::Object(patch) => {
                let mut target = data.take().unwrap_or_default();
                merge(&mut target, meta, patch, now);
                *data = (!target.is_empty()).then_some(target);
                accepted_meta.insert(section.clone(), Value::Object(stamp(patch, now)));
            }
            _ => {
                *data = None;
                meta.clear();
            }
        }
    }
    next.version = previous.version + 1;
    let stored = serde_json::to_vec(&next.state_and_metadata()).map_or(usize::MAX, |b| b.len());
    if stored > MAX_DOCUMENT_BYTES {
        return Err(Rejection {
            code: 413,
            message: format!(
                "the shadow would be {stored} bytes; the limit is {MAX_DOCUMENT_BYTES}"
            ),
        });
    }

    let accepted = with_token(
        json!({"state": state, "metadata": accepted_meta, "version": next.version, "timestamp": now}),
        token,
    );
    let documents = with_token(
        json!({
            "previous": (previous.version > 0).then(|| previous.document()),
            "current": next.document(),
            "timestamp": now,
        }),
        token,
    );
    let delta = if state.contains_key("desired") {
        next.delta().map(|(delta, meta)| {
            with_token(
                json!({"state": delta, "metadata": meta, "version": next.version, "timestamp": now}),
                token,
            )
        })
    } else {
        None
    };
    Ok(Updated {
        shadow: next,
        accepted,
        documents,
        delta,
    })
}

impl Shadow {
    /// The `/get/accepted` document: state with its delta, metadata, version.
    pub fn get_document(&self, now: u64, client_token: Option<&str>) -> Value {
        let mut doc = self.document();
        if let Some((delta, _)) = self.delta() {
            doc["state"]["delta"] = Value::Object(delta);
        }
        doc["timestamp"] = now.into();
        with_token(doc, client_token)
    }

    /// `{"state": {...}, "metadata": {...}, "version": n}`.
    pub fn document(&self) -> Value {
        let mut doc = self.state_and_metadata();
        doc["version"] = self.version.into();
        doc
    }

    fn state_and_metadata(&self) -> Value {
        let mut state = Object::new();
        let mut metadata = Object::new();
        if let Some(d) = &self.desired {
            state.insert("desired".into(), Value::Object(d.clone()));
            metadata.insert("desired".into(), Value::Object(self.desired_meta.clone()));
        }
        if let Some(r) = &self.reported {
            state.insert("reported".into(), Value::Object(r.clone()));
            metadata.insert("reported".into(), Value::Object(self.reported_meta.clone()));
        }
        json!({"state": state, "metadata": metadata})
    }

    /// The desired fields reported does not match, with their desired metadata.
    pub fn delta(&self) -> Option<(Object, Object)> {
        let desired = self.desired.as_ref()?;
        let empty = Object::new();
        let delta = diff(desired, self.reported.as_ref().unwrap_or(&empty));
        (!delta.is_empty()).then(|| {
            let meta = pick(&self.desired_meta, &delta);
            (delta, meta)
        })
    }
}

/// The `/delete/accepted` document.
pub fn deleted_document(version: u64, now: u64, client_token: Option<&str>) -> Value {
    with_token(json!({"version": version, "timestamp": now}), client_token)
}

fn with_token(mut doc: Value, token: Option<&str>) -> Value {
    if let Some(t) = token {
        doc["clientToken"] = t.into();
    }
    doc
}

/// Refuses nulls inside arrays and nesting deeper than [`MAX_DEPTH`].
fn check_value(value: &Value, path: &str, depth: usize) -> Result<(), Rejection> {
    if depth > MAX_DEPTH {
        return Err(Rejection::bad(format!(
            "{path} nests deeper than {MAX_DEPTH} levels"
        )));
    }
    match value {
        // PostgreSQL text cannot hold NUL, and no device needs it.
        Value::String(s) if s.contains('\0') => Err(Rejection::bad(format!(
            "{path}: strings may not contain NUL (\\u0000)"
        ))),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            if k.contains('\0') {
                return Err(Rejection::bad(format!(
                    "{path}: keys may not contain NUL (\\u0000)"
                )));
            }
            check_value(v, &format!("{path}.{k}"), depth + 1)
        }),
        Value::Array(items) => items.iter().enumerate().try_for_each(|(i, v)| {
            if v.is_null() {
                Err(Rejection::bad(format!(
                    "{path}[{i}]: arrays may not contain null"
                )))
            } else {
                check_value(v, &format!("{path}[{i}]"), depth + 1)
            }
        }),
        _ => Ok(()),
    }
}

/// Merges `patch` into `target`, stamping each field set in `meta`.
fn merge(target: &mut Object, meta: &mut Object, patch: &Object, now: u64) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
                meta.remove(key);
            }
            Value::Object(inner) => {
                let mut sub = match target.remove(key) {
                    Some(Value::Object(existing)) => existing,
                    _ => Object::new(),
                };
                let mut sub_meta = match meta.remove(key) {
                    Some(Value::Object(m)) if !m.contains_key("timestamp") => m,
                    _ => Object::new(),
                };
                merge(&mut sub, &mut sub_meta, inner, now);
                if !sub.is_empty() {
                    target.insert(key.clone(), Value::Object(sub));
                    meta.insert(key.clone(), Value::Object(sub_meta));
                }
            }
            leaf => {
                target.insert(key.clone(), leaf.clone());
                meta.insert(key.clone(), json!({"timestamp": now}));
            }
        }
    }
}

/// Metadata for the fields `patch` sets.
fn stamp(patch: &Object, now: u64) -> Object {
    patch
        .iter()
        .map(|(k, v)| {
            let m = match v {
                Value::Object(inner) => Value::Object(stamp(inner, now)),
                _ => json!({"timestamp": now}),
            };
            (k.clone(), m)
        })
        .collect()
}

/// The fields of `desired` that `reported` does not hold with the same value.
fn diff(desired: &Object, reported: &Object) -> Object {
    let mut out = Object::new();
    for (key, want) in desired {
        match (want, reported.get(key)) {
            (Value::Object(w), Some(Value::Object(r))) => {
                let sub = diff(w, r);
                if !sub.is_empty() {
                    out.insert(key.clone(), Value::Object(sub));
                }
            }
            (w, Some(r)) if w == r => {}
            (w, _) => {
                out.insert(key.clone(), w.clone());
            }
        }
    }
    out
}

/// The part of `meta` that covers the fields of `shape`.
fn pick(meta: &Object, shape: &Object) -> Object {
    shape
        .iter()
        .filter_map(|(k, v)| {
            let m = meta.get(k)?;
            Some((
                k.clone(),
                match (v, m) {
                    (Value::Object(inner), Value::Object(mm)) if !mm.contains_key("timestamp") => {
                        Value::Object(pick(mm, inner))
                    }
                    _ => m.clone(),
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(shadow: Option<&Shadow>, request: Value) -> Result<Updated, Rejection> {
        update(shadow, &request, 1000)
    }

    #[test]
    fn delta_against_a_missing_reported_section() {
        let u = apply(
            None,
            json!({"state": {"desired": {"firmware": "2.0.0", "led": "on"}}}),
        )
        .unwrap();
        assert_eq!(u.shadow.version, 1);
        let delta = u.delta.unwrap();
        assert_eq!(delta["state"], json!({"firmware": "2.0.0", "led": "on"}));
        assert_eq!(delta["metadata"]["led"]["timestamp"], 1000);
        // Reporting one field removes it from the delta, and a report publishes no delta.
        let u2 = apply(
            Some(&u.shadow),
            json!({"state": {"reported": {"led": "on"}}}),
        )
        .unwrap();
        assert!(u2.delta.is_none());
        assert_eq!(
            u2.shadow.delta().unwrap().0,
            json!({"firmware": "2.0.0"}).as_object().unwrap().clone()
        );
        assert_eq!(
            u2.shadow.get_document(5, None)["state"]["delta"],
            json!({"firmware": "2.0.0"})
        );
    }

    #[test]
    fn nested_objects_merge_and_null_deletes() {
        let s = apply(None, json!({"state": {"reported": {"ota": {"job": "j1", "state": "IN_PROGRESS", "step": "downloading"}, "firmware": {"version": "1.0.0", "slot": "a"}}}}))
            .unwrap()
            .shadow;
        let s = update(
            Some(&s),
            &json!({"state": {"reported": {"ota": {"step": "verifying", "progress": 40}}}}),
            2000,
        )
        .unwrap()
        .shadow;
        assert_eq!(
            s.reported.as_ref().unwrap()["ota"],
            json!({"job": "j1", "state": "IN_PROGRESS", "step": "verifying", "progress": 40})
        );
        assert_eq!(s.reported_meta["ota"]["job"]["timestamp"], 1000);
        assert_eq!(s.reported_meta["ota"]["step"]["timestamp"], 2000);
        let s = apply(
            Some(&s),
            json!({"state": {"reported": {"ota": {"progress": null}, "firmware": null}}}),
        )
        .unwrap()
        .shadow;
        assert_eq!(
            s.reported.as_ref().unwrap()["ota"],
            json!({"job": "j1", "state": "IN_PROGRESS", "step": "verifying"})
        );
        assert!(!s.reported.as_ref().unwrap().contains_key("firmware"));
        assert!(!s.reported_meta.contains_key("firmware"));
        // null deletes a whole section.
        let s = apply(Some(&s), json!({"state": {"reported": null}}))
            .unwrap()
            .shadow;
        assert_eq!(s.reported, None);
        assert_eq!(s.version, 4);
    }

    #[test]
    fn arrays_are_whole_values_and_may_not_hold_null() {
        let s = apply(
            None,
            json!({"state": {"desired": {"servers": ["a", "b", "c"]}}}),
        )
        .unwrap()
        .shadow;
        let s = apply(Some(&s), json!({"state": {"desired": {"servers": ["d"]}}}))
            .unwrap()
            .shadow;
        assert_eq!(s.desired.as_ref().unwrap()["servers"], json!(["d"]));
        let err = apply(
            Some(&s),
            json!({"state": {"desired": {"servers": ["x", null]}}}),
        )
        .unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("servers[1]"), "{err}");
    }

    #[test]
    fn versions_rise_and_stale_ones_are_refused() {
        let s = apply(None, json!({"state": {"reported": {"a": 1}}, "version": 0}))
            .unwrap()
            .shadow;
        assert_eq!(s.version, 1);
        let err = apply(
            Some(&s),
            json!({"state": {"reported": {"a": 2}}, "version": 0, "clientToken": "t-1"}),
        )
        .unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(err.document(7, Some("t-1"))["clientToken"], "t-1");
        let ok = apply(
            Some(&s),
            json!({"state": {"reported": {"a": 2}}, "version": 1, "clientToken": "t-2"}),
        )
        .unwrap();
        assert_eq!(ok.shadow.version, 2);
        assert_eq!(ok.accepted["clientToken"], "t-2");
        assert_eq!(ok.accepted["version"], 2);
        assert_eq!(ok.documents["previous"]["state"]["reported"]["a"], 1);
        assert_eq!(ok.documents["current"]["state"]["reported"]["a"], 2);
    }

    /// Found by the `shadow` fuzz target: without exact float parsing, `150e55` was stored
    /// as 1.5000000000000002e57 and read back as 1.5e57.
    #[test]
    fn a_stored_shadow_reads_back_exactly() {
        let request: Value =
            serde_json::from_str(r#"{"state":{"reported":{"f":[150e55,15e-155,3.5]}}}"#).unwrap();
        let stored = update(None, &request, 1).unwrap().shadow;
        let text = serde_json::to_string(&stored).unwrap();
        assert_eq!(serde_json::from_str::<Shadow>(&text).unwrap(), stored);
    }

    #[test]
    fn bad_requests_are_refused_with_400_or_413() {
        let long = "x".repeat(65);
        for (request, what) in [
            (json!([1]), "object"),
            (json!({"version": 1}), "state"),
            (json!({"state": {}}), "desired and/or reported"),
            (json!({"state": {"desire": {}}}), "desire"),
            (json!({"state": {"reported": 5}}), "object or null"),
            (json!({"state": {"reported": {}}, "extra": 1}), "extra"),
            (
                json!({"state": {"reported": {}}, "clientToken": long}),
                "64",
            ),
            (json!({"state": {"reported": {}}, "version": -1}), "version"),
            (
                json!({"state": {"reported": {"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{"i":1}}}}}}}}}}}),
                "deeper",
            ),
            (
                json!({"state": {"reported": {"ota": {"job": "j\u{0}"}}}}),
                "NUL",
            ),
            (json!({"state": {"desired": {"a\u{0}": 1}}}), "NUL"),
        ] {
            let err = apply(None, request.clone()).unwrap_err();
            assert_eq!(err.code, 400, "{request}");
            assert!(err.message.contains(what), "{request}: {err}");
        }
        let big = "y".repeat(MAX_DOCUMENT_BYTES);
        assert_eq!(
            apply(None, json!({"state": {"reported": {"blob": big}}}))
                .unwrap_err()
                .code,
            413
        );
    }

    #[test]
    fn desired_changes_publish_a_delta_only_when_reported_differs() {
        let s = apply(None, json!({"state": {"reported": {"fw": "1.0.0"}}}))
            .unwrap()
            .shadow;
        let same = apply(Some(&s), json!({"state": {"desired": {"fw": "1.0.0"}}})).unwrap();
        assert!(same.delta.is_none(), "desired equals reported");
        let differs = apply(
            Some(&same.shadow),
            json!({"state": {"desired": {"fw": "2.0.0"}}, "clientToken": "c"}),
        )
        .unwrap();
        let delta = differs.delta.unwrap();
        assert_eq!(delta["state"], json!({"fw": "2.0.0"}));
        assert_eq!(delta["clientToken"], "c");
        assert_eq!(delta["version"], 3);
    }
}
