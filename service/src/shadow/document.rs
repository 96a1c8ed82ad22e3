//! Device shadow documents with AWS IoT Device Shadow semantics, as pure functions over
//! JSON: no IO, no clock (the time is passed in; `update` edits the shadow it is given in
//! place), so every rule is unit-tested here and the MQTT and HTTP edges only move bytes.
//!
//! - `desired` and `reported` merge into the document: nested objects merge, `null` deletes
//!   a field (or a whole section), arrays and scalars replace what was there. Arrays may not
//!   contain `null`; documents nest at most [`MAX_DEPTH`] levels.
//! - `version` starts at 1 and rises by one on every accepted update; an update that names
//!   a version other than the current one is refused with 409.
//! - `metadata` mirrors the state with `{"timestamp": unix seconds}` at each leaf it set.
//! - `delta` holds the desired fields that reported does not match.
//! - `clientToken` (at most 64 bytes) is echoed in every answer.

use std::io::Write;

use serde_json::{Map, Value, json};

/// Deepest nesting of `desired` or `reported`.
pub const MAX_DEPTH: usize = 8;
/// Largest document (`{"metadata", "state", "version"}`), in bytes of JSON.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024;
/// Bytes of the documents answer besides the two documents and the token: its keys,
/// `null` for no previous document and the timestamp take under 80 (a token with
/// characters to escape may take more: the buffer then grows once).
const DOCUMENTS_ENVELOPE: usize = 100;
/// Longest `clientToken`.
pub const MAX_CLIENT_TOKEN: usize = 64;

type Object = Map<String, Value>;

/// A shadow's state, metadata and version; it serialises as its document,
/// `{"metadata": {...}, "state": {...}, "version": n}`, the form it is stored in.
#[derive(Clone, Debug, Default, PartialEq)]
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

/// A shadow with its document as JSON, as stored. [`update`] serialises a shadow's document
/// once: that text is the `current` of its answer, what is written back, and the
/// `previous` of the next update's answer, so the stored text (read with the row) is never
/// serialised again.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    shadow: Shadow,
    /// The shadow's document (`serde_json::to_string(&shadow)`); None when not serialised
    /// yet, and always for no shadow (version 0).
    document: Option<String>,
}

impl From<Shadow> for Stored {
    fn from(shadow: Shadow) -> Self {
        Stored {
            shadow,
            document: None,
        }
    }
}

impl Stored {
    /// A shadow as stored (at version 1 or more: version 0 stands for none): its document
    /// as this module serialised it (the text is kept as it is, and is the `previous`
    /// document of the next update's answer), or the earlier storage format (the fields of
    /// [`Shadow`], rewritten as a document on the shadow's next update).
    pub fn read(text: String) -> serde_json::Result<Stored> {
        /// The storage format before documents: `Shadow`'s fields, named as in Rust.
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Earlier {
            desired: Option<Object>,
            reported: Option<Object>,
            desired_meta: Object,
            reported_meta: Object,
            version: u64,
        }
        let stored = match serde_json::from_str::<Shadow>(&text) {
            Ok(shadow) => Stored {
                shadow,
                document: Some(text),
            },
            Err(as_document) => match serde_json::from_str::<Earlier>(&text) {
                Ok(earlier) => Stored::from(Shadow {
                    desired: earlier.desired,
                    reported: earlier.reported,
                    desired_meta: earlier.desired_meta,
                    reported_meta: earlier.reported_meta,
                    version: earlier.version,
                }),
                Err(as_earlier) => {
                    return Err(serde::de::Error::custom(format_args!(
                        "neither a document ({as_document}) nor the earlier format ({as_earlier})"
                    )));
                }
            },
        };
        if stored.shadow.version == 0 {
            return Err(serde::de::Error::custom(
                "a stored shadow is at version 1 or more",
            ));
        }
        Ok(stored)
    }

    /// The shadow.
    pub fn shadow(&self) -> &Shadow {
        &self.shadow
    }

    /// The shadow, without its text.
    pub fn into_shadow(self) -> Shadow {
        self.shadow
    }

    /// The shadow's document as JSON, to store (serialised now unless it is already); the
    /// next update serialises it again.
    pub fn take_document(&mut self) -> String {
        self.document
            .take()
            .unwrap_or_else(|| serialise(&self.shadow))
    }
}

/// A shadow's document as JSON.
fn serialise(shadow: &Shadow) -> String {
    serialise_within(shadow, 512)
}

/// [`serialise`] into a buffer of `capacity` bytes from the start ([`to_json_within`]).
fn serialise_within(shadow: &Shadow, capacity: usize) -> String {
    String::from_utf8(to_json_within(shadow, capacity)).expect("serde_json writes UTF-8")
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

/// What an accepted update produced, ready to publish: JSON bytes, serialised once from
/// borrowed views of the request and the shadows (no `Value` trees).
#[derive(Clone, Debug, PartialEq)]
pub struct Updated {
    /// The `/update/accepted` document.
    pub accepted: Vec<u8>,
    /// The `/update/documents` document (previous and current).
    pub documents: Vec<u8>,
    /// The `/update/delta` document, when the update changed desired state that reported
    /// does not match.
    pub delta: Option<Vec<u8>>,
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

/// Applies an `update` request to `stored` (version 0: no shadow yet, the default one) at
/// time `now`, in place: accepted, `stored` is the next shadow, with its document; refused,
/// the shadow is as it was.
pub fn update(stored: &mut Stored, request: &Value, now: u64) -> Result<Updated, Rejection> {
    let Stored { shadow, document } = stored;
    debug_assert!(
        shadow.version > 0 || *shadow == Shadow::default(),
        "a shadow at version 0 is the empty one"
    );
    debug_assert!(
        document.as_ref().is_none_or(|d| *d == serialise(shadow)),
        "a stored shadow's text is its document"
    );
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
        check_value(value, &|| section.clone(), 0)?;
    }
    let previous_version = shadow.version;
    match req.get("version") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let Some(v) = v.as_u64() else {
                return Err(Rejection::bad("version must be a non-negative integer"));
            };
            if v != previous_version {
                return Err(Rejection {
                    code: 409,
                    message: format!(
                        "version conflict: the shadow is at version {previous_version}"
                    ),
                });
            }
        }
    }

    // The previous document (in the documents answer) is the text as stored, or serialised
    // before the shadow is merged into; a merge that grows the shadow past the limit puts it
    // back from that text.
    if previous_version > 0 && document.is_none() {
        *document = Some(serialise(shadow));
    }
    for (section, value) in state {
        let (data, meta) = match section.as_str() {
            "desired" => (&mut shadow.desired, &mut shadow.desired_meta),
            _ => (&mut shadow.reported, &mut shadow.reported_meta),
        };
        match value {
            Value::Object(patch) => {
                let mut target = data.take().unwrap_or_default();
                merge(&mut target, meta, patch, now);
                *data = (!target.is_empty()).then_some(target);
            }
            _ => {
                *data = None;
                meta.clear();
            }
        }
    }
    shadow.version = previous_version + 1;
    // Serialised once, into a buffer a little larger than the previous document: measured
    // against the limit, copied into the documents answer, and kept as the shadow's text.
    let current = serialise_within(shadow, document.as_ref().map_or(512, |d| d.len() + 256));
    if current.len() > MAX_DOCUMENT_BYTES {
        *shadow = match document.as_deref() {
            Some(previous) => serde_json::from_str(previous).expect("a document reads back"),
            None => Shadow::default(),
        };
        return Err(Rejection {
            code: 413,
            message: format!(
                "the shadow would be {} bytes; the limit is {MAX_DOCUMENT_BYTES}",
                current.len()
            ),
        });
    }

    let accepted = to_json(&StateAnswer {
        client_token: token,
        metadata: Stamps { state, now },
        state,
        timestamp: now,
        version: shadow.version,
    });
    let documents = documents_answer(token, &current, document.as_deref(), now);
    *document = Some(current);
    let delta = if state.contains_key("desired") {
        shadow.delta().map(|(delta, meta)| {
            to_json(&StateAnswer {
                client_token: token,
                metadata: &meta,
                state: &delta,
                timestamp: now,
                version: shadow.version,
            })
        })
    } else {
        None
    };
    Ok(Updated {
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
        serde_json::to_value(self).expect("a document serialises")
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

impl serde::Serialize for Shadow {
    /// As its document, borrowed.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        DocumentView {
            metadata: Sections {
                desired: self.desired.as_ref().map(|_| &self.desired_meta),
                reported: self.reported.as_ref().map(|_| &self.reported_meta),
            },
            state: Sections {
                desired: self.desired.as_ref(),
                reported: self.reported.as_ref(),
            },
            version: self.version,
        }
        .serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Shadow {
    /// From its document (a section's metadata is empty when the section is absent: they
    /// are set and removed together).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Owned {
            metadata: OwnedSections,
            state: OwnedSections,
            version: u64,
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct OwnedSections {
            desired: Option<Object>,
            reported: Option<Object>,
        }
        let Owned {
            metadata,
            state,
            version,
        } = Owned::deserialize(deserializer)?;
        Ok(Shadow {
            desired: state.desired,
            reported: state.reported,
            desired_meta: metadata.desired.unwrap_or_default(),
            reported_meta: metadata.reported.unwrap_or_default(),
            version,
        })
    }
}

/// The `/delete/accepted` document.
pub fn deleted_document(version: u64, now: u64, client_token: Option<&str>) -> Value {
    with_token(json!({"version": version, "timestamp": now}), client_token)
}

/// A shadow's state or metadata sections, borrowed (keys in the order a JSON object
/// sorts them, so the bytes are those of the equivalent `Value`).
#[derive(serde::Serialize)]
struct Sections<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    desired: Option<&'a Object>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reported: Option<&'a Object>,
}

/// `{"metadata", "state", "version"}` of a shadow, borrowed.
#[derive(serde::Serialize)]
struct DocumentView<'a> {
    metadata: Sections<'a>,
    state: Sections<'a>,
    version: u64,
}

/// The `/update/accepted` and `/update/delta` documents.
#[derive(serde::Serialize)]
struct StateAnswer<'a, M: serde::Serialize> {
    #[serde(rename = "clientToken", skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
    metadata: M,
    state: &'a Object,
    timestamp: u64,
    version: u64,
}

/// The `/update/documents` document, around the two documents' JSON as it is (keys in
/// sorted order, as the other answers have them).
fn documents_answer(
    token: Option<&str>,
    current: &str,
    previous: Option<&str>,
    now: u64,
) -> Vec<u8> {
    let capacity = current.len()
        + previous.map_or(0, str::len)
        + token.map_or(0, str::len)
        + DOCUMENTS_ENVELOPE;
    let mut bytes = Vec::with_capacity(capacity);
    bytes.push(b'{');
    if let Some(token) = token {
        bytes.extend_from_slice(br#""clientToken":"#);
        serde_json::to_writer(&mut bytes, token).expect("a string serialises");
        bytes.push(b',');
    }
    bytes.extend_from_slice(br#""current":"#);
    bytes.extend_from_slice(current.as_bytes());
    bytes.extend_from_slice(br#","previous":"#);
    bytes.extend_from_slice(previous.unwrap_or("null").as_bytes());
    write!(bytes, r#","timestamp":{now}}}"#).expect("a Vec takes every byte");
    bytes
}

/// The metadata of an update's accepted sections: `{"timestamp": now}` at every field the
/// request sets, mirroring its objects (a section set to `null` has none).
struct Stamps<'a> {
    state: &'a Object,
    now: u64,
}

impl serde::Serialize for Stamps<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        for (section, value) in self.state {
            if let Value::Object(patch) = value {
                map.serialize_entry(
                    section,
                    &Stamped {
                        patch,
                        now: self.now,
                    },
                )?;
            }
        }
        map.end()
    }
}

/// [`Stamps`] of one object.
struct Stamped<'a> {
    patch: &'a Object,
    now: u64,
}

impl serde::Serialize for Stamped<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        #[derive(serde::Serialize)]
        struct Timestamp {
            timestamp: u64,
        }
        let mut map = serializer.serialize_map(Some(self.patch.len()))?;
        for (key, value) in self.patch {
            match value {
                Value::Object(patch) => map.serialize_entry(
                    key,
                    &Stamped {
                        patch,
                        now: self.now,
                    },
                )?,
                _ => map.serialize_entry(
                    key,
                    &Timestamp {
                        timestamp: self.now,
                    },
                )?,
            }
        }
        map.end()
    }
}

/// `value` as JSON bytes (a document always serialises: its keys are strings).
pub(crate) fn to_json(value: &impl serde::Serialize) -> Vec<u8> {
    to_json_within(value, 512)
}

/// [`to_json`] into a buffer of `capacity` bytes from the start: one grown from
/// serde_json's default 128 bytes is copied at every doubling.
fn to_json_within(value: &impl serde::Serialize, capacity: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut bytes, value).expect("a document serialises");
    bytes
}

fn with_token(mut doc: Value, token: Option<&str>) -> Value {
    if let Some(t) = token {
        doc["clientToken"] = t.into();
    }
    doc
}

/// Refuses nulls inside arrays and nesting deeper than [`MAX_DEPTH`]. The value's path is
/// spelled out only for a refusal.
fn check_value(value: &Value, path: &dyn Fn() -> String, depth: usize) -> Result<(), Rejection> {
    if depth > MAX_DEPTH {
        return Err(Rejection::bad(format!(
            "{} nests deeper than {MAX_DEPTH} levels",
            path()
        )));
    }
    match value {
        // PostgreSQL text cannot hold NUL, and no device needs it.
        Value::String(s) if s.contains('\0') => Err(Rejection::bad(format!(
            "{}: strings may not contain NUL (\\u0000)",
            path()
        ))),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            if k.contains('\0') {
                return Err(Rejection::bad(format!(
                    "{}: keys may not contain NUL (\\u0000)",
                    path()
                )));
            }
            check_value(v, &|| format!("{}.{k}", path()), depth + 1)
        }),
        Value::Array(items) => items.iter().enumerate().try_for_each(|(i, v)| {
            if v.is_null() {
                Err(Rejection::bad(format!(
                    "{}[{i}]: arrays may not contain null",
                    path()
                )))
            } else {
                check_value(v, &|| format!("{}[{i}]", path()), depth + 1)
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
                    Some(Value::Object(m)) if !is_stamp(&m) => m,
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

/// Whether `meta` is a leaf's `{"timestamp": n}` rather than the metadata of an object
/// (which may have a field named `timestamp`: its metadata is an object, never a number).
fn is_stamp(meta: &Object) -> bool {
    meta.get("timestamp").is_some_and(Value::is_number)
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
                    (Value::Object(inner), Value::Object(mm)) if !is_stamp(mm) => {
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

    /// An accepted update: the next shadow and the answers.
    #[derive(Debug)]
    struct Applied {
        shadow: Shadow,
        accepted: Vec<u8>,
        documents: Vec<u8>,
        delta: Option<Vec<u8>>,
    }

    /// [`update`] of a copy of `shadow` (None: no shadow yet), not serialised yet, at `now`.
    fn update_at(shadow: Option<&Shadow>, request: &Value, now: u64) -> Result<Applied, Rejection> {
        let mut next = Stored::from(shadow.cloned().unwrap_or_default());
        let Updated {
            accepted,
            documents,
            delta,
        } = update(&mut next, request, now)?;
        Ok(Applied {
            shadow: next.into_shadow(),
            accepted,
            documents,
            delta,
        })
    }

    fn apply(shadow: Option<&Shadow>, request: Value) -> Result<Applied, Rejection> {
        update_at(shadow, &request, 1000)
    }

    fn parse(document: &[u8]) -> Value {
        serde_json::from_slice(document).unwrap()
    }

    /// The answers to an update, whole: accepted (the request's state with a timestamp at
    /// each field it set, a section set to null without), documents (previous, current),
    /// delta.
    #[test]
    fn an_update_answers_with_whole_documents() {
        let first = apply(
            None,
            json!({"state": {"reported": {"fw": "1.0.0", "net": {"ip": "10.0.0.2"}}}}),
        )
        .unwrap();
        assert_eq!(
            parse(&first.documents),
            json!({"previous": null, "timestamp": 1000, "current": {
                "state": {"reported": {"fw": "1.0.0", "net": {"ip": "10.0.0.2"}}},
                "metadata": {"reported": {"fw": {"timestamp": 1000}, "net": {"ip": {"timestamp": 1000}}}},
                "version": 1}})
        );
        let second = update_at(
            Some(&first.shadow),
            &json!({"state": {"desired": {"fw": "2.0.0", "led": [1, 2]}, "reported": null}, "clientToken": "k"}),
            2000,
        )
        .unwrap();
        assert_eq!(
            parse(&second.accepted),
            json!({"state": {"desired": {"fw": "2.0.0", "led": [1, 2]}, "reported": null},
                "metadata": {"desired": {"fw": {"timestamp": 2000}, "led": {"timestamp": 2000}}},
                "version": 2, "timestamp": 2000, "clientToken": "k"})
        );
        assert_eq!(
            parse(&second.documents),
            json!({"previous": first.shadow.document(), "timestamp": 2000, "clientToken": "k",
                "current": {
                    "state": {"desired": {"fw": "2.0.0", "led": [1, 2]}},
                    "metadata": {"desired": {"fw": {"timestamp": 2000}, "led": {"timestamp": 2000}}},
                    "version": 2}})
        );
        assert_eq!(
            parse(&second.delta.unwrap()),
            json!({"state": {"fw": "2.0.0", "led": [1, 2]},
                "metadata": {"fw": {"timestamp": 2000}, "led": {"timestamp": 2000}},
                "version": 2, "timestamp": 2000, "clientToken": "k"})
        );
        // The bytes are those of the same documents as `Value`s (keys sorted).
        assert_eq!(
            second.accepted,
            serde_json::to_vec(&parse(&second.accepted)).unwrap()
        );
        assert_eq!(
            second.documents,
            serde_json::to_vec(&parse(&second.documents)).unwrap()
        );
        // Also with a token that has characters to escape.
        let token = "q\"uo\\te\u{1}é\u{2028}";
        let third = update_at(
            Some(&second.shadow),
            &json!({"state": {"reported": {"fw": "2.0.0"}}, "clientToken": token}),
            3000,
        )
        .unwrap();
        assert_eq!(parse(&third.documents)["clientToken"], token);
        assert_eq!(
            third.documents,
            serde_json::to_vec(&parse(&third.documents)).unwrap()
        );
    }

    #[test]
    fn delta_against_a_missing_reported_section() {
        let u = apply(
            None,
            json!({"state": {"desired": {"firmware": "2.0.0", "led": "on"}}}),
        )
        .unwrap();
        assert_eq!(u.shadow.version, 1);
        let delta = parse(&u.delta.unwrap());
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
        let s = update_at(
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

    /// A field named `timestamp` is a field like any other: its object keeps the stamps of
    /// its other fields when a later update merges into it.
    #[test]
    fn a_field_named_timestamp_keeps_its_siblings_stamps() {
        let s = apply(
            None,
            json!({"state": {"desired": {"cfg": {"timestamp": 1, "list": [1]}}}}),
        )
        .unwrap()
        .shadow;
        let s = update_at(
            Some(&s),
            &json!({"state": {"desired": {"cfg": {"x": 2}}}}),
            2000,
        )
        .unwrap()
        .shadow;
        assert_eq!(
            Value::Object(s.desired_meta.clone()),
            json!({"cfg": {"timestamp": {"timestamp": 1000}, "list": {"timestamp": 1000},
                "x": {"timestamp": 2000}}})
        );
        let (delta, meta) = s.delta().unwrap();
        assert_eq!(delta["cfg"]["timestamp"], 1);
        assert_eq!(
            Value::Object(meta),
            json!({"cfg": s.desired_meta["cfg"].clone()})
        );
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
        let accepted = parse(&ok.accepted);
        assert_eq!(accepted["clientToken"], "t-2");
        assert_eq!(accepted["version"], 2);
        let documents = parse(&ok.documents);
        assert_eq!(documents["previous"]["state"]["reported"]["a"], 1);
        assert_eq!(documents["current"]["state"]["reported"]["a"], 2);
    }

    /// Found by the `shadow` fuzz target: without exact float parsing, `150e55` was stored
    /// as 1.5000000000000002e57 and read back as 1.5e57.
    #[test]
    fn a_stored_shadow_reads_back_exactly() {
        let request: Value =
            serde_json::from_str(r#"{"state":{"reported":{"f":[150e55,15e-155,3.5]}}}"#).unwrap();
        let stored = update_at(None, &request, 1).unwrap().shadow;
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

    /// An update merges into the shadow in place; one refused after the merge (413) puts
    /// the shadow back as it was, to the last field, from its text, whether that was read
    /// with it or serialised for the update.
    #[test]
    fn a_refused_update_leaves_the_shadow_as_it_was() {
        let before = apply(
            None,
            json!({"state": {"desired": {"fw": "2.0.0", "cfg": {"a": [1.5, "x"], "f": 0.1}},
                "reported": {"fw": "1.0.0", "cfg": {"a": null, "b": true}}}}),
        )
        .unwrap()
        .shadow;
        let text = serde_json::to_string(&before).unwrap();
        let big = "z".repeat(MAX_DOCUMENT_BYTES / 2);
        let request = json!({"state": {"desired": {"cfg": {"a": null, "c": &big}}, "reported": {"d": &big, "fw": null}}});
        let stale = json!({"state": {"reported": {"fw": "1.1.0"}}, "version": 7});
        for mut stored in [
            Stored::read(text.clone()).unwrap(),
            Stored::from(before.clone()),
        ] {
            assert_eq!(update(&mut stored, &request, 2000).unwrap_err().code, 413);
            assert_eq!(stored.shadow(), &before);
            assert_eq!(update(&mut stored, &stale, 2000).unwrap_err().code, 409);
            assert_eq!(stored.shadow(), &before);
            assert_eq!(stored.take_document(), text);
        }
        let mut none = Stored::default();
        let huge = json!({"state": {"reported": {"blob": "y".repeat(MAX_DOCUMENT_BYTES)}}});
        assert_eq!(update(&mut none, &huge, 2000).unwrap_err().code, 413);
        assert_eq!(none.shadow(), &Shadow::default());
    }

    /// A shadow is stored as its document, and an update keeps the text it serialised: a
    /// run of updates of a shadow read from its row answers byte for byte as updates of
    /// the same shadow serialised anew each time, and leaves the text the shadow
    /// serialises to.
    #[test]
    fn a_shadow_read_as_stored_is_updated_as_one_serialised_anew() {
        let first = apply(
            None,
            json!({"state": {"desired": {"fw": "2.0.0"}, "reported": {"fw": "1.0.0", "t": 41.5}}}),
        )
        .unwrap()
        .shadow;
        let text = serde_json::to_string(&first).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            first.document()
        );
        let mut read = Stored::read(text.clone()).unwrap();
        assert_eq!(read.shadow(), &first);
        assert_eq!(
            read.document.as_deref(),
            Some(text.as_str()),
            "the text read is kept"
        );
        let mut anew = first.clone();
        for (k, request) in [
            json!({"state": {"reported": {"t": 42.0}}, "clientToken": "a\"b"}),
            json!({"state": {"reported": {"fw": "2.0.0", "t": null}}}),
            json!({"state": {"desired": {"led": {"on": true}}}, "version": 3}),
        ]
        .iter()
        .enumerate()
        {
            let now = 2000 + k as u64;
            let expected = update_at(Some(&anew), request, now).unwrap();
            let got = update(&mut read, request, now).unwrap();
            assert_eq!(got.accepted, expected.accepted);
            assert_eq!(got.documents, expected.documents);
            assert_eq!(got.delta, expected.delta);
            assert_eq!(read.shadow(), &expected.shadow);
            let current = parse(&got.documents)["current"].to_string();
            assert_eq!(
                read.document.as_deref(),
                Some(current.as_str()),
                "the current document is kept"
            );
            anew = expected.shadow;
        }
        let text = read.take_document();
        assert_eq!(text, serde_json::to_string(&anew).unwrap());
        assert_eq!(
            parse(
                &update_at(Some(&first), &json!({"state": {"reported": {"t": 1}}}), 1)
                    .unwrap()
                    .documents
            )["previous"],
            first.document()
        );
    }

    /// Rows written before shadows were stored as documents hold `Shadow`'s fields; they
    /// read as the same shadow, and their next update writes a document.
    #[test]
    fn a_shadow_in_the_earlier_format_reads_back() {
        let earlier = r#"{"desired":{"fw":"2.0.0"},"reported":null,"desired_meta":{"fw":{"timestamp":5}},"reported_meta":{},"version":4}"#;
        let mut stored = Stored::read(earlier.to_owned()).unwrap();
        assert_eq!(
            stored.shadow(),
            &Shadow {
                desired: Some(json!({"fw": "2.0.0"}).as_object().unwrap().clone()),
                reported: None,
                desired_meta: json!({"fw": {"timestamp": 5}}).as_object().unwrap().clone(),
                reported_meta: Object::new(),
                version: 4,
            }
        );
        let answers = update(
            &mut stored,
            &json!({"state": {"reported": {"fw": "2.0.0"}}}),
            6,
        )
        .unwrap();
        assert_eq!(
            parse(&answers.documents)["previous"],
            json!({"state": {"desired": {"fw": "2.0.0"}}, "metadata": {"desired": {"fw": {"timestamp": 5}}}, "version": 4})
        );
        let text = stored.take_document();
        assert_eq!(Stored::read(text).unwrap().shadow().version, 5);
        for bad in [
            r#"{"state":{}}"#,
            r#"{"desired":{}}"#,
            "[]",
            r#"{"metadata":{},"state":{},"version":1,"x":0}"#,
            r#"{"metadata":{},"state":{},"version":0}"#,
            r#"{"metadata":{},"state":{},"desired_meta":{},"reported_meta":{},"version":1}"#,
        ] {
            assert!(Stored::read(bad.to_owned()).is_err(), "{bad}");
        }
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
        let delta = parse(&differs.delta.unwrap());
        assert_eq!(delta["state"], json!({"fw": "2.0.0"}));
        assert_eq!(delta["clientToken"], "c");
        assert_eq!(delta["version"], 3);
    }
}
