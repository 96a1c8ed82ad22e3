# shellcheck shell=bash
# Starts or installs the real services fleetwave's tests talk to. Sourced by scripts/test.sh.
#   ensure_postgres   PostgreSQL on 127.0.0.1:5432 with trust auth (reused when running)
#   ensure_mosquitto  Mosquitto on 127.0.0.1:1883 (reused when running)
#   start_s3          s3s-fs, the S3-compatible server, on a free port for this run only;
#                     exports FLEETWAVE_TEST_S3_* and stops it (and deletes its data) on exit.
#   start_services    all three, and exports FLEETWAVE_TEST_DATABASE_URL and _MQTT_URL.

# s3s-fs 0.14.1 (newer releases need a newer rustc than 1.95), built from vendor/s3s-fs: the
# release as published with one change, its GET bodies read in 64 KiB chunks (vendor/README.md).
S3S_FS_VERSION=0.14.1
S3S_FS_SOURCE="$(CDPATH= cd -- "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/vendor/s3s-fs"

log() { printf 'services: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() { # host port seconds what
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    port_open "$1" "$2" && return 0
    sleep 0.1
  done
  log "$4 did not come up on $1:$2 within $3 s"
  return 1
}

apt_install() {
  log "installing $* from Debian's packages"
  if [ -z "${APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    log "PostgreSQL: running on 127.0.0.1:5432"
    return 0
  fi
  if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    apt_install postgresql
    local hba
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
      # Tests connect as postgres over TCP with no password, as on the machines of this project.
      sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
    done
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  log "PostgreSQL: starting cluster $version/main"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || pg_ctlcluster "$version" main start
  wait_port 127.0.0.1 5432 30 PostgreSQL
}

ensure_mosquitto() {
  if port_open 127.0.0.1 1883; then
    log "Mosquitto: running on 127.0.0.1:1883"
    return 0
  fi
  command -v mosquitto >/dev/null || apt_install mosquitto
  log "Mosquitto: starting"
  mosquitto -d -c /etc/mosquitto/mosquitto.conf
  wait_port 127.0.0.1 1883 15 Mosquitto
}

# Installed in a directory named after the vendored source's content: a change to the source
# installs it anew, and every checkout of the same source reuses one install.
s3s_fs_root() {
  local digest
  digest=$(set -o pipefail; CDPATH= cd -- "$S3S_FS_SOURCE" &&
    find . -path ./target -prune -o -type f -print0 |
    LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16) || digest=
  if ! [[ $digest =~ ^[0-9a-f]{16}$ ]]; then
    log "cannot hash the s3s-fs source in $S3S_FS_SOURCE"
    return 1
  fi
  printf '%s/fleetwave/s3s-fs-%s-%s' "${CARGO_HOME:-$HOME/.cargo}" "$S3S_FS_VERSION" "$digest"
}

s3s_fs_bin() { printf '%s/bin/s3s-fs' "${S3S_FS_ROOT:?ensure_s3s_fs sets it}"; }

ensure_s3s_fs() {
  S3S_FS_ROOT=$(s3s_fs_root) || return 1
  local bin
  bin=$(s3s_fs_bin)
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -qx "s3s-fs $S3S_FS_VERSION"; then
    return 0
  fi
  log "installing s3s-fs $S3S_FS_VERSION from vendor/s3s-fs (once; about 2 minutes on two cores)"
  # The build stays beside the install until it succeeds, so an interrupted one resumes.
  cargo install --quiet --locked --path "$S3S_FS_SOURCE" --features binary \
    --root "$S3S_FS_ROOT" --target-dir "$S3S_FS_ROOT.build" || return 1
  rm -rf "$S3S_FS_ROOT.build"
}

free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 40000))
    port_open 127.0.0.1 "$port" || { echo "$port"; return 0; }
  done
}

start_s3() {
  ensure_s3s_fs
  local port data
  port=$(free_port)
  data=$(mktemp -d -t fleetwave-s3.XXXXXX)
  S3_DATA_DIR=$data
  export FLEETWAVE_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
  export FLEETWAVE_TEST_S3_ACCESS_KEY="fleetwave-test"
  FLEETWAVE_TEST_S3_SECRET_KEY="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  export FLEETWAVE_TEST_S3_SECRET_KEY
  export FLEETWAVE_TEST_S3_REGION="us-east-1"
  mkdir -p "$data/root"
  "$(s3s_fs_bin)" --host 127.0.0.1 --port "$port" \
    --access-key "$FLEETWAVE_TEST_S3_ACCESS_KEY" --secret-key "$FLEETWAVE_TEST_S3_SECRET_KEY" \
    "$data/root" >"$data/s3s-fs.log" 2>&1 &
  S3_PID=$!
  trap stop_s3 EXIT
  wait_port 127.0.0.1 "$port" 20 s3s-fs || { cat "$data/s3s-fs.log" >&2; return 1; }
  log "S3 (s3s-fs $S3S_FS_VERSION): $FLEETWAVE_TEST_S3_ENDPOINT, data in $data"
}

stop_s3() {
  if [ -n "${S3_PID:-}" ]; then
    kill "$S3_PID" 2>/dev/null || true
    wait "$S3_PID" 2>/dev/null || true
  fi
  [ -n "${S3_DATA_DIR:-}" ] && rm -rf "$S3_DATA_DIR"
  return 0
}

start_services() {
  ensure_postgres
  ensure_mosquitto
  start_s3
  export FLEETWAVE_TEST_DATABASE_URL="${FLEETWAVE_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
  export FLEETWAVE_TEST_MQTT_URL="${FLEETWAVE_TEST_MQTT_URL:-mqtt://127.0.0.1:1883}"
}
