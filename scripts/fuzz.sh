#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for a bounded time: `scripts/fuzz.sh [seconds]`
# (default 30 each). Installs cargo-fuzz when missing. libFuzzer's coverage instrumentation
# needs no nightly compiler; the sanitizer is off (the targets are safe Rust), so a crash is
# a panic: a failed assertion, an unwrap, an overflow (debug assertions are on) or a stack
# overflow. New inputs go to a scratch corpus seeded from fuzz/seeds; a crashing input is
# kept in fuzz/artifacts/<target>/ and the run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (once)"
  cargo install cargo-fuzz --locked --quiet
fi
# The instrumented build is kept between runs (rebuilt when missing).
export CARGO_TARGET_DIR="${FLEETWAVE_FUZZ_TARGET_DIR:-$HOME/.cache/fleetwave/fuzz-target}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
targets=(manifest shadow job_update group_query)
if ! cargo fuzz build --sanitizer none --dev >"$scratch/build.log" 2>&1; then
  tail -40 "$scratch/build.log" >&2
  exit 1
fi
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  echo "fuzz: $t for ${seconds}s"
  rc=0
  cargo fuzz run --sanitizer none --dev "$t" "$scratch/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$seconds" -max_len=20000 -timeout=10 -rss_limit_mb=1024 \
    -print_final_stats=1 >"$scratch/$t.log" 2>&1 || rc=$?
  grep -E "^stat::(number_of_executed_units|peak_rss_mb)|^#[0-9]+ +DONE" "$scratch/$t.log" || true
  if [ "$rc" -ne 0 ]; then
    grep -E -A20 "panicked|ERROR|SUMMARY|Test unit written" "$scratch/$t.log" | head -60 >&2 || true
    echo "fuzz: $t crashed; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
