#!/usr/bin/env bash
# The test command: installs and starts what the tests need (PostgreSQL from the distribution,
# a single-node Garage S3 server and a 3-node Garage cluster, Python readers for interop tests),
# runs the whole suite, and stops what it started. Works on a fresh Debian machine; reuses what
# is already installed.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -E 'test(drift)'  # extra arguments go to cargo nextest
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=$(mktemp -d /tmp/mirrorctl-test.XXXXXX)
STARTED_PG=""
GARAGE_PID=""

log() { printf '== %s\n' "$*" >&2; }

cleanup() {
  [ -n "$GARAGE_PID" ] && kill "$GARAGE_PID" 2>/dev/null || true
  declare -F stop_garage_cluster >/dev/null && stop_garage_cluster
  [ -n "$STARTED_PG" ] && pg_ctlcluster "$STARTED_PG" main stop 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

APT_UPDATED=""
apt_install() {
  [ -n "$APT_UPDATED" ] || { as_root apt-get update -qq >/dev/null; APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# --- PostgreSQL ------------------------------------------------------------------------------
if ! command -v pg_ctlcluster >/dev/null || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  log "installing PostgreSQL"
  apt_install postgresql
fi
PG_VERSION=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h 2>/dev/null | grep -q "^$PG_VERSION main"; then
  as_root pg_createcluster "$PG_VERSION" main >/dev/null
fi
. scripts/postgres.sh
start_postgres "$PG_VERSION"
as_root su postgres -c "psql -q -p $PG_PORT -tc \"SELECT 1 FROM pg_database WHERE datname='mirrorctl_test'\" | grep -q 1 || psql -q -p $PG_PORT -c 'CREATE DATABASE mirrorctl_test OWNER mirrorctl'"
export MIRRORCTL_TEST_DATABASE_URL="$PG_BASE/mirrorctl_test"

# --- Garage (an independent S3 implementation, out of process) --------------------------------
. scripts/garage.sh
if [ ! -x "$(garage_bin)" ]; then
  log "installing Garage (cargo install, ~13 min on 2 cores)"
  cargo install garage --version 2.5.0 --locked --quiet
fi
start_garage "$WORK/garage" 1G
log "Garage on $GARAGE_ENDPOINT"
export MIRRORCTL_TEST_GARAGE_ENDPOINT="$GARAGE_ENDPOINT"
export MIRRORCTL_TEST_GARAGE_KEY="$GARAGE_KEY"
export MIRRORCTL_TEST_GARAGE_SECRET="$GARAGE_SECRET"
# ...and a 3-node cluster (every object on every node) for the tests of several serve replicas.
start_garage_cluster "$WORK/garage-cluster" 3 1G
log "Garage cluster on $GARAGE_CLUSTER_ENDPOINTS"
export MIRRORCTL_TEST_GARAGE_CLUSTER_ENDPOINT="$GARAGE_CLUSTER_ENDPOINT"
export MIRRORCTL_TEST_GARAGE_CLUSTER_ENDPOINTS="$GARAGE_CLUSTER_ENDPOINTS"
export MIRRORCTL_TEST_GARAGE_CLUSTER_KEY="$GARAGE_CLUSTER_KEY"
export MIRRORCTL_TEST_GARAGE_CLUSTER_SECRET="$GARAGE_CLUSTER_SECRET"
export MIRRORCTL_REQUIRE_SERVERS=1

# --- Python readers for the archive interop test ----------------------------------------------
if ! python3 -c 'import pyarrow' 2>/dev/null; then
  log "installing pyarrow"
  python3 -m pip install -q pyarrow >/dev/null 2>&1 || log "pyarrow not installed: the interop test will fail"
fi

# --- rclone, the reference for the drift difference set ---------------------------------------
if ! command -v rclone >/dev/null; then
  log "installing rclone"
  apt_install rclone
fi

# --- promtool, the linter of the alerting rules and of both metric expositions ------------------
command -v promtool >/dev/null || apt_install prometheus

# --- The aws CLI, a real client of the S3 front ------------------------------------------------
if ! command -v aws >/dev/null; then
  log "installing the aws CLI"
  python3 -m pip install -q awscli >/dev/null 2>&1 || log "aws CLI not installed: the S3 front's CLI test will fail"
fi

# --- The terminal UI, end to end in tmux, on the real binary and a fresh demo -----------------
command -v tmux >/dev/null || apt_install tmux
log "terminal UI end to end (tmux)"
cargo build --quiet
scripts/tui-e2e.sh

# --- README's "Your own mirror", command by command: its own Garage, this PostgreSQL, SQLite ----
log "README: your own mirror (scripts/first-mirror.sh)"
scripts/first-mirror.sh

# --- The suite ---------------------------------------------------------------------------------
log "running the tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
