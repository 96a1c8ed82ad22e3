//! A job update as a device reports it: the topic it arrives on and the `reported.ota`
//! section of its shadow. Any topic parses or is ignored; any report either fails to parse
//! or is admitted or refused by the execution rules from every stored state, and the states
//! that accept it agree with the transition table.

#![no_main]

use fleetwave::jobs::{self, Change, Refused};
use fleetwave_artifacts::protocol::jobs::{ExecutionState, Step};
use fleetwave_artifacts::protocol::report::OtaReport;
use fleetwave_artifacts::protocol::topics::Topics;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first line is the topic, the rest the report.
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (topic, report) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    if let Ok(topic) = std::str::from_utf8(topic) {
        let topics = Topics::new("fleetwave").expect("a valid prefix");
        if let Some((thing, _request)) = topics.parse_request(topic) {
            assert!(topic.contains(thing.as_str()));
        }
    }
    let Ok(report) = serde_json::from_slice::<OtaReport>(report) else {
        return;
    };
    let change = Change::from(&report);
    for from in ExecutionState::ALL {
        for stored in [
            (None, 0),
            (Some(Step::Downloading), 50),
            (Some(Step::HealthCheck), 100),
        ] {
            match jobs::admit(from, stored, &change) {
                Ok(()) => assert!(from.can_become(change.to)),
                Err(Refused::Illegal { from: f, to }) => {
                    assert_eq!((f, to), (from, change.to));
                    assert!(!from.can_become(to));
                }
                Err(Refused::Stale) => assert_eq!(
                    (from, change.to),
                    (ExecutionState::InProgress, ExecutionState::InProgress)
                ),
                Err(other) => panic!("a pure rule refused with {other}"),
            }
        }
    }
});
