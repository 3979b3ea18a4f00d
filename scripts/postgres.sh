# Sourced by the benchmark scripts: the local PostgreSQL cluster as scripts/test.sh sets it up.
#
#   . scripts/postgres.sh; start_postgres 15
# starts the cluster `VERSION main` when it is not online (and then sets STARTED_PG=VERSION, for
# the caller's cleanup to stop it again), makes sure the role mirrorctl exists, and sets PG_PORT,
# PG_BASE (postgres://mirrorctl:mirrorctl@127.0.0.1:PORT) and PG_ADMIN ($PG_BASE/postgres).
# Needs a `log` function and runs as root or with sudo.

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

start_postgres() {
  local version=$1
  if ! pg_lsclusters -h | grep -q "^$version main .* online"; then
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster "$version" main start
    STARTED_PG=$version
  fi
  PG_PORT=$(pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $3}')
  as_root su postgres -c "psql -q -p $PG_PORT -tc \"SELECT 1 FROM pg_roles WHERE rolname='mirrorctl'\" | grep -q 1 || psql -q -p $PG_PORT -c \"CREATE ROLE mirrorctl LOGIN CREATEDB PASSWORD 'mirrorctl'\""
  PG_BASE="postgres://mirrorctl:mirrorctl@127.0.0.1:$PG_PORT"
  PG_ADMIN="$PG_BASE/postgres"
}
