#!/usr/bin/env bash
# Guards the one-way, pure-Rust dependency rules of ARCHITECTURE.md:
# - artifacts: no tokio and no workspace crate;
# - agent: no service-side crates (sea-orm, axum), no OpenSSL, and no C build step (cc, cmake,
#   ring, aws-lc), so it cross-compiles for aarch64 with rustc alone.
set -euo pipefail
cd "$(dirname "$0")/.."

check() { # package regex why
  local tree hits
  tree=$(cargo tree --quiet -p "$1" -e normal,build --prefix none --format '{p}')
  hits=$(printf '%s\n' "$tree" | sort -u | grep -E "$2" || true)
  if [ -n "$hits" ]; then
    printf 'check-deps: %s must not depend on %s:\n%s\n' "$1" "$3" "$hits" >&2
    return 1
  fi
}

service_or_c='sea-orm|sea-query|axum|sqlx|openssl|openssl-sys|native-tls|cc|cmake|ring|aws-lc-sys|aws-lc-rs'
check fleetwave-artifacts "^(tokio|fleetwave|fleetwave-migrations|$service_or_c) " "tokio, a workspace crate, service-side or C-built crates"
check fleetwave-agent "^($service_or_c) " "service-side crates, OpenSSL or a C build step"
echo "check-deps: artifacts and agent are pure Rust, free of service crates"
