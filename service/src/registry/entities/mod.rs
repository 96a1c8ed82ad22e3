//! sea-orm entities, one per table of `fleetwave-migrations`. Plain data: the domain modules
//! (`registry::devices`, `audit`, ...) own the rules.

pub mod api_tokens;
pub mod audit_events;
pub mod devices;
pub mod events;
pub mod execution_history;
pub mod group_members;
pub mod groups;
pub mod job_executions;
pub mod jobs;
pub mod releases;
pub mod rollout_targets;
pub mod rollout_waves;
pub mod rollouts;
pub mod shadows;
pub mod webhook_deliveries;
