//! The fleetwave test harness and end-to-end suite.
//!
//! Every test gets its own slice of each real part, so tests run in parallel without seeing
//! each other:
//! - [`harness::postgres::TestDb`]: a fresh PostgreSQL database named by a UUID, migrations
//!   applied, dropped when the value is dropped;
//! - [`harness::s3::TestBucket`]: its own bucket on the real S3-compatible server;
//! - [`harness::mqtt::TestMqtt`]: its own topic prefix and client ids on the real broker.
//!
//! Where each part lives comes from the environment that `scripts/test.sh` sets up (see
//! [`harness::env`]); a part that is missing is a test failure, never a skip.

pub mod harness;
