//! Handlers of `/v1`, one module per resource.

pub mod audit;
pub mod devices;
pub mod groups;
pub mod jobs;
pub mod releases;
pub mod rollouts;
pub mod tokens;
