# Sourced by the test and benchmark scripts: starts a single-node Garage S3 server on loopback.
#
#   . scripts/garage.sh
#   start_garage "$WORK/garage" 20G    # sets GARAGE_PID GARAGE_ENDPOINT GARAGE_KEY GARAGE_SECRET
#
# Needs the `garage` binary (PATH or ~/.cargo/bin; `cargo install garage --version 2.5.0 --locked`).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

garage_bin() { command -v garage || echo "$HOME/.cargo/bin/garage"; }

start_garage() {
  local dir=$1 capacity=${2:-1G}
  local bin; bin=$(garage_bin)
  [ -x "$bin" ] || { echo "garage is not installed: cargo install garage --version 2.5.0 --locked" >&2; return 1; }
  local s3_port rpc_port; s3_port=$(free_port); rpc_port=$(free_port)
  mkdir -p "$dir"
  cat > "$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "${GARAGE_DB_ENGINE:-sqlite}"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$s3_port"
TOML
  RUST_LOG=warn "$bin" -c "$dir/garage.toml" server >"$dir/garage.log" 2>&1 &
  GARAGE_PID=$!
  local g=("$bin" -c "$dir/garage.toml")
  for _ in $(seq 1 100); do "${g[@]}" status >/dev/null 2>&1 && break; sleep 0.1; done
  local node; node=$("${g[@]}" node id -q 2>/dev/null | cut -d@ -f1)
  "${g[@]}" layout assign -z dc1 -c "$capacity" "$node" >/dev/null
  "${g[@]}" layout apply --version 1 >/dev/null
  GARAGE_KEY="GK$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
  GARAGE_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  "${g[@]}" key import --yes -n mirrorctl "$GARAGE_KEY" "$GARAGE_SECRET" >/dev/null
  "${g[@]}" key allow --create-bucket mirrorctl >/dev/null
  GARAGE_ENDPOINT="http://127.0.0.1:$s3_port"
}
