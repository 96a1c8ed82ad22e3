#!/usr/bin/env bash
# Runs schemathesis (from PyPI, in a cached virtualenv it creates when missing) against the
# service's own OpenAPI document: every operation with generated valid and invalid input,
# as the admin, checking that no response is a server error and that every response matches
# the documented status codes, content types and schemas. The service runs as a process on a
# fresh PostgreSQL database and the machine's Mosquitto (scripts/services.sh starts both);
# releases go to a local directory. Extra arguments go to `schemathesis run`.
set -euo pipefail
cd "$(dirname "$0")/.."
SCHEMATHESIS_VERSION=4.32.5
venv="$HOME/.cache/fleetwave/schemathesis-$SCHEMATHESIS_VERSION"
if ! "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
  echo "schemathesis: installing $SCHEMATHESIS_VERSION (once)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
admin_url="${FLEETWAVE_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
id="$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
db="fw_schemathesis_$id"
work="$(mktemp -d)"
service=""
cleanup() {
  if [ -n "$service" ]; then
    kill "$service" 2>/dev/null || true
    wait "$service" 2>/dev/null || true
  fi
  psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  rm -rf "$work"
}
trap cleanup EXIT
psql -q "$admin_url" -c "CREATE DATABASE $db"
cargo build --quiet -p fleetwave --bin fleetwave
FLEETWAVE__DATA_DIR="$work" \
FLEETWAVE__SERVER__LISTEN=127.0.0.1:0 \
FLEETWAVE__DATABASE__URL="${admin_url%/*}/$db" \
FLEETWAVE__MQTT__URL="${FLEETWAVE_TEST_MQTT_URL:-mqtt://127.0.0.1:1883}" \
FLEETWAVE__MQTT__PREFIX="fw-schemathesis-$id/fleetwave" \
FLEETWAVE__MQTT__CLIENT_ID="fw-schemathesis-$id" \
RUST_LOG=warn \
  "${CARGO_TARGET_DIR:-target}/debug/fleetwave" --json serve >"$work/out" 2>"$work/service.log" &
service=$!
url=""
for _ in $(seq 1 300); do
  if [ -s "$work/out" ]; then
    url="$(head -n 1 "$work/out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')"
    break
  fi
  sleep 0.1
done
if [ -z "$url" ]; then
  echo "schemathesis: the service did not start:" >&2
  cat "$work/service.log" >&2
  exit 1
fi
token="$(cat "$work/admin.token")"
rc=0
"$venv/bin/schemathesis" run "$url/v1/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance,response_headers_conformance \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-20}" \
  --seed 1 --no-color "$@" || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "schemathesis: failures above; the service's log:" >&2
  grep -E "ERROR|panicked" "$work/service.log" | tail -20 >&2 || true
fi
exit "$rc"
