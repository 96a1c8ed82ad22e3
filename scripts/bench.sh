#!/usr/bin/env bash
# Runs fleetwave's benchmarks against the real services (started as for the tests), in the
# release profile, and prints their Markdown rows. Each figure is compared with a baseline
# measured in the same run. Usage: scripts/bench.sh [--size-mib N]   (default 1024)
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
