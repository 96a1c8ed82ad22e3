//! The agent's install state: the pure machine ([`machine`]); the persisted store and the
//! executor that drives it build on it.

pub mod machine;
