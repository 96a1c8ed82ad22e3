//! The service's HTTP API against real databases: each test runs on PostgreSQL and on the
//! embedded SQLite default.

mod audit;
mod auth;
mod bridge;
mod cli;
mod devices;
mod groups;
mod jobs;
mod notices;
mod outage;
mod releases;
mod replicas;
mod rollouts;
mod serve;
mod shadows;

/// Runs an async test body once per backend.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn postgres() {
                ($body)(fleetwave_tests::harness::app::Backend::Postgres).await
            }

            #[tokio::test]
            async fn sqlite() {
                ($body)(fleetwave_tests::harness::app::Backend::Sqlite).await
            }
        }
    };
}
