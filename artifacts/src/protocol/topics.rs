//! Topic names of the MQTT protocol, built and parsed in one place. Every topic sits under
//! a configurable prefix (`fleetwave` by default):
//!
//! | topic (after the prefix) | from → to | what |
//! |---|---|---|
//! | `things/{thing}/shadow/update`, `…/get`, `…/delete` | device → service | shadow requests |
//! | `things/{thing}/shadow/{op}/accepted`, `…/rejected` | service → device | their answers |
//! | `things/{thing}/shadow/update/delta`, `…/documents` | service → device | what changed |
//! | `groups/{group}/jobs/notify` (retained) | service → group | a wave notice |
//! | `things/{thing}/jobs/notify-next` | service → device | a targeted job |
//! | `things/{thing}/jobs/start-next`, `things/{thing}/jobs/{job}/get` | device → service | ask for a job with a fresh URL |
//! | `…/start-next/accepted`, `…/rejected`, `…/{job}/get/accepted`, `…/rejected` | service → device | their answers |

use crate::device::DeviceId;
use crate::error::Error;

/// The three shadow requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowOp {
    /// Change desired or reported state.
    Update,
    /// Read the document.
    Get,
    /// Delete the document.
    Delete,
}

impl ShadowOp {
    fn as_str(self) -> &'static str {
        match self {
            ShadowOp::Update => "update",
            ShadowOp::Get => "get",
            ShadowOp::Delete => "delete",
        }
    }
}

/// How a request was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Done.
    Accepted,
    /// Refused, with an error document.
    Rejected,
}

impl Reply {
    fn as_str(self) -> &'static str {
        match self {
            Reply::Accepted => "accepted",
            Reply::Rejected => "rejected",
        }
    }
}

/// A request a device sent, as the service reads it from the topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `shadow/update|get|delete`
    Shadow(ShadowOp),
    /// `jobs/start-next`
    StartNext,
    /// `jobs/{job}/get`
    JobGet(String),
}

/// The topics of one deployment (one prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Topics under `prefix`: one or more levels of `A-Z a-z 0-9 . _ -`, no wildcards, no
    /// empty level.
    pub fn new(prefix: &str) -> Result<Self, Error> {
        let ok = !prefix.is_empty()
            && prefix.split('/').all(|level| {
                !level.is_empty()
                    && level
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            });
        if !ok {
            return Err(Error::InvalidField {
                field: "topic prefix",
                reason: format!("{prefix:?} must be levels of A-Z a-z 0-9 . _ - separated by /"),
            });
        }
        Ok(Topics {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn thing(&self, thing: &DeviceId) -> String {
        format!("{}/things/{thing}", self.prefix)
    }

    /// `things/{thing}/shadow/{op}`: where a device sends a shadow request.
    pub fn shadow(&self, thing: &DeviceId, op: ShadowOp) -> String {
        format!("{}/shadow/{}", self.thing(thing), op.as_str())
    }

    /// `things/{thing}/shadow/{op}/{accepted|rejected}`.
    pub fn shadow_reply(&self, thing: &DeviceId, op: ShadowOp, reply: Reply) -> String {
        format!("{}/{}", self.shadow(thing, op), reply.as_str())
    }

    /// `things/{thing}/shadow/update/delta`: desired state the device has not reported yet.
    pub fn shadow_delta(&self, thing: &DeviceId) -> String {
        format!("{}/delta", self.shadow(thing, ShadowOp::Update))
    }

    /// `things/{thing}/shadow/update/documents`: the document before and after each update.
    pub fn shadow_documents(&self, thing: &DeviceId) -> String {
        format!("{}/documents", self.shadow(thing, ShadowOp::Update))
    }

    /// `groups/{group}/jobs/notify`: the retained wave notice of a group.
    pub fn group_notify(&self, group: &str) -> String {
        format!("{}/groups/{group}/jobs/notify", self.prefix)
    }

    /// `groups/+/jobs/notify`: every group's notices (for a device in several groups).
    pub fn all_group_notices(&self) -> String {
        format!("{}/groups/+/jobs/notify", self.prefix)
    }

    /// `things/{thing}/jobs/notify-next`: a job for this device alone.
    pub fn notify_next(&self, thing: &DeviceId) -> String {
        format!("{}/jobs/notify-next", self.thing(thing))
    }

    /// `things/{thing}/jobs/start-next`: the device asks for its next job.
    pub fn start_next(&self, thing: &DeviceId) -> String {
        format!("{}/jobs/start-next", self.thing(thing))
    }

    /// `things/{thing}/jobs/{job}/get`: the device asks for one job.
    pub fn job_get(&self, thing: &DeviceId, job: &str) -> String {
        format!("{}/jobs/{job}/get", self.thing(thing))
    }

    /// The answer topic of a device request.
    pub fn reply(&self, thing: &DeviceId, request: &Request, reply: Reply) -> String {
        match request {
            Request::Shadow(op) => self.shadow_reply(thing, *op, reply),
            Request::StartNext => format!("{}/{}", self.start_next(thing), reply.as_str()),
            Request::JobGet(job) => format!("{}/{}", self.job_get(thing, job), reply.as_str()),
        }
    }

    /// The filters the service subscribes to: every device request.
    pub fn service_filters(&self) -> [String; 5] {
        let p = &self.prefix;
        [
            format!("{p}/things/+/shadow/update"),
            format!("{p}/things/+/shadow/get"),
            format!("{p}/things/+/shadow/delete"),
            format!("{p}/things/+/jobs/start-next"),
            format!("{p}/things/+/jobs/+/get"),
        ]
    }

    /// Reads a device request from the topic it arrived on; `None` for anything else
    /// (answers, notices, other prefixes, malformed ids).
    pub fn parse_request(&self, topic: &str) -> Option<(DeviceId, Request)> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix("/things/")?;
        let levels: Vec<&str> = rest.split('/').collect();
        let thing = DeviceId::parse(levels.first()?).ok()?;
        let request = match levels[1..] {
            ["shadow", "update"] => Request::Shadow(ShadowOp::Update),
            ["shadow", "get"] => Request::Shadow(ShadowOp::Get),
            ["shadow", "delete"] => Request::Shadow(ShadowOp::Delete),
            ["jobs", "start-next"] => Request::StartNext,
            ["jobs", job, "get"] if is_job_id(job) => Request::JobGet(job.to_owned()),
            _ => return None,
        };
        Some((thing, request))
    }
}

/// Job ids are UUIDs or similar: 1 to 64 of `A-Z a-z 0-9 _ -`, never `start-next`.
pub fn is_job_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s != "start-next"
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_their_topics() {
        let t = Topics::new("fw-test/fleetwave").unwrap();
        let pi = DeviceId::parse("pi-7").unwrap();
        for request in [
            Request::Shadow(ShadowOp::Update),
            Request::Shadow(ShadowOp::Get),
            Request::Shadow(ShadowOp::Delete),
            Request::StartNext,
            Request::JobGet("0b7e-11".into()),
        ] {
            let topic = match &request {
                Request::Shadow(op) => t.shadow(&pi, *op),
                Request::StartNext => t.start_next(&pi),
                Request::JobGet(job) => t.job_get(&pi, job),
            };
            assert_eq!(
                t.parse_request(&topic),
                Some((pi.clone(), request.clone())),
                "{topic}"
            );
            assert_eq!(
                t.parse_request(&t.reply(&pi, &request, Reply::Accepted)),
                None
            );
        }
        assert_eq!(
            t.shadow_delta(&pi),
            "fw-test/fleetwave/things/pi-7/shadow/update/delta"
        );
        assert_eq!(
            t.group_notify("canary"),
            "fw-test/fleetwave/groups/canary/jobs/notify"
        );
        assert_eq!(t.parse_request("other/things/pi-7/shadow/get"), None);
        assert_eq!(
            t.parse_request("fw-test/fleetwave/things/pi+7/shadow/get"),
            None
        );
        assert!(
            Topics::new("a/+/b").is_err()
                && Topics::new("").is_err()
                && Topics::new("a//b").is_err()
        );
    }
}
