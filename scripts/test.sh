#!/usr/bin/env bash
# Runs fleetwave's whole test suite against real services: PostgreSQL and Mosquitto (started
# or installed when missing, reused when running) and an S3-compatible server (s3s-fs,
# installed once, started on a free port for this run), then schemathesis against the API and
# a bounded run of every fuzz target. Extra arguments go to the test runner, e.g.
# `scripts/test.sh -E 'test(smoke)'` with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
source scripts/services.sh

start_services

# The end-to-end tests run the workspace's binaries as real processes.
cargo build --workspace --bins --quiet
cargo test --workspace --doc --quiet
# Smoke runs of the benchmarks, so they never rot (figures come from scripts/bench.sh).
cargo run --quiet -p fleetwave-tests --bin bench-upload -- --size-mib 16
cargo run --quiet -p fleetwave-tests --bin bench-rollout -- --devices 5000 --requests 200 --rounds 2
cargo run --quiet -p fleetwave-tests --bin bench-ingest -- --clients 20 --messages 50 --rounds 2
cargo run --quiet -p fleetwave-tests --bin bench-agent -- --size-mib 16 --rounds 2
cargo run --quiet -p fleetwave-tests --bin bench-scale -- --devices 5000
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
# Hostile input: schemathesis against the OpenAPI document, then each fuzz target briefly
# (longer runs: `scripts/fuzz.sh 600`).
bash scripts/schemathesis.sh
bash scripts/fuzz.sh "${FLEETWAVE_FUZZ_SECONDS:-20}"
