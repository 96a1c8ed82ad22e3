//! Fault injection for the crash tests: `FLEETWAVE_AGENT_FAULT=persist:<Phase>` aborts the
//! process right after the phase is first persisted, `write:<bytes>` once at least that many
//! bytes of the slot are durable. Unset (always, outside tests), it does nothing.

use crate::state::machine::Phase;

fn fault() -> Option<String> {
    std::env::var("FLEETWAVE_AGENT_FAULT").ok()
}

/// The name of a phase as fault points spell it.
pub fn phase_name(phase: &Phase) -> &'static str {
    match phase {
        Phase::Idle => "Idle",
        Phase::Downloading { .. } => "Downloading",
        Phase::Verifying { .. } => "Verifying",
        Phase::Switching { .. } => "Switching",
        Phase::Rebooting { .. } => "Rebooting",
        Phase::HealthCheck { .. } => "HealthCheck",
        Phase::Committing { .. } => "Committing",
        Phase::RollingBack { .. } => "RollingBack",
        Phase::Reporting { .. } => "Reporting",
    }
}

/// Called after every persist.
pub fn after_persist(phase: &Phase) {
    if fault().is_some_and(|f| f.strip_prefix("persist:") == Some(phase_name(phase))) {
        eprintln!(
            "fleetwave-agent: fault injected after persisting {}",
            phase_name(phase)
        );
        std::process::abort();
    }
}

/// Called each time more of the slot is durable.
pub fn after_write(durable: u64) {
    if let Some(limit) = fault()
        .and_then(|f| f.strip_prefix("write:").map(str::to_owned))
        .and_then(|n| n.parse::<u64>().ok())
    {
        if durable >= limit {
            eprintln!("fleetwave-agent: fault injected after {durable} durable bytes");
            std::process::abort();
        }
    }
}
