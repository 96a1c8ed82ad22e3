#!/usr/bin/env bash
# Runs fleetwave's benchmarks against the real services (started as for the tests), in the
# release profile, and prints their Markdown rows. Each figure is compared with a baseline
# measured in the same run. Usage: scripts/bench.sh [--size-mib N]   (default 1024);
# BENCH_DEVICES sets the fleet size of the rollout benchmark (default 100000),
# BENCH_SCALE_DEVICES that of the memory benchmark (default 1000000).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
source scripts/services.sh

start_services

profile=(--release)
[ "${BENCH_PROFILE:-release}" = dev ] && profile=()
cargo build "${profile[@]}" --quiet -p fleetwave -p fleetwave-agent -p fleetwave-tests --bins
echo "## Release upload: memory stays flat (fleetwave vs object_store straight to S3)"
cargo run "${profile[@]}" --quiet -p fleetwave-tests --bin bench-upload -- "$@"
echo
echo "## Rollout fan-out (P1) and status latency (P4) at 100k devices"
cargo run "${profile[@]}" --quiet -p fleetwave-tests --bin bench-rollout -- --devices "${BENCH_DEVICES:-100000}"
echo
echo "## Ingestion (P2): device updates through Mosquitto into PostgreSQL"
# 100 000 updates (steady state), then 10 000 (a burst, whose raw baseline lasts about 0.1 s).
cargo run "${profile[@]}" --quiet -p fleetwave-tests --bin bench-ingest -- --clients 100 --messages 1000
echo
cargo run "${profile[@]}" --quiet -p fleetwave-tests --bin bench-ingest -- --clients 100 --messages 100
echo
echo "## Agent pipeline (P3): download + sync + read-back sha256"
cargo run "${profile[@]}" --quiet -p fleetwave-tests --bin bench-agent -- --size-mib 64 --size-mib 1024
# The same 64 MiB with the cores kept out of idle (a diagnostic: this VM's wake-ups are slow).
cargo run "${profile[@]}" --quiet -p fleetwave-tests --bin bench-agent -- --size-mib 64 --busy-cores
echo
echo "## Service memory with a large fleet during a rollout (P5)"
cargo run "${profile[@]}" --quiet -p fleetwave-tests --bin bench-scale -- --devices "${BENCH_SCALE_DEVICES:-1000000}"
