#!/usr/bin/env bash
# Runs fleetwave's benchmarks against the real services (started as for the tests), in the
# release profile, and prints their Markdown rows. Each figure is compared with a baseline
# measured in the same run. Usage: scripts/bench.sh [--size-mib N]   (default 1024);
# BENCH_DEVICES sets the fleet size of the rollout benchmark (default 100000).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
source scripts/services.sh

start_services

profile=(--release)
[ "${BENCH_PROFILE:-release}" = dev ] && profile=()
cargo build "${profile[@]}" --quiet -p fleetwave -p fleetwave-tests --bins
echo "## Release upload: memory stays flat (fleetwave vs object_store straight to S3)"
cargo run "${profile[@]}" --quiet -p fleetwave-tests --bin bench-upload -- "$@"
echo
echo "## Rollout fan-out (P1) and status latency (P4) at 100k devices"
cargo run "${profile[@]}" --quiet -p fleetwave-tests --bin bench-rollout -- --devices "${BENCH_DEVICES:-100000}"
