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

# A Garage cluster of NODES processes on loopback (default 3), every object stored on every node
# (`replication_factor = 3`, one zone per node), as several mirror replicas share one in
# production:
#
#   start_garage_cluster "$WORK/cluster" 3 1G
#     # sets GARAGE_CLUSTER_PIDS (array), GARAGE_CLUSTER_ENDPOINTS (every node's S3 endpoint,
#     # space-separated), GARAGE_CLUSTER_ENDPOINT (node 1), GARAGE_CLUSTER_KEY, GARAGE_CLUSTER_SECRET
#   stop_garage_cluster
#
# Node i has its own rpc and S3 ports and $DIR/node<i>/{meta,data}; all share one rpc_secret.
# Node 1 connects to the others and assigns and applies the layout; the function returns once
# every node sees every other one as healthy and answers S3 requests signed with the key. With
# fewer than 3 nodes the replication factor is the number of nodes.
GARAGE_CLUSTER_PIDS=()
random_hex() { head -c "$1" /dev/urandom | od -An -v -tx1 | tr -d ' \n'; }   # random_hex BYTES
start_garage_cluster() {
  local dir=$1 nodes=${2:-3} capacity=${3:-1G}
  local bin; bin=$(garage_bin)
  [ -x "$bin" ] || { echo "garage is not installed: cargo install garage --version 2.5.0 --locked" >&2; return 1; }
  local factor=$(( nodes < 3 ? nodes : 3 ))
  local secret; secret=$(random_hex 32)
  local i s3_port rpc_port ids=() endpoints=() ports=()
  # Two free ports per node from one process, all held at once, so none repeats.
  read -r -a ports <<<"$(python3 -c '
import socket, sys
s = [socket.socket() for _ in range(2 * int(sys.argv[1]))]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))' "$nodes")"
  GARAGE_CLUSTER_PIDS=()
  for i in $(seq 1 "$nodes"); do
    s3_port=${ports[$((2 * i - 2))]}; rpc_port=${ports[$((2 * i - 1))]}
    mkdir -p "$dir/node$i"
    cat > "$dir/node$i/garage.toml" <<TOML
metadata_dir = "$dir/node$i/meta"
data_dir = "$dir/node$i/data"
db_engine = "${GARAGE_DB_ENGINE:-sqlite}"
replication_factor = $factor
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$secret"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$s3_port"
TOML
    RUST_LOG=warn "$bin" -c "$dir/node$i/garage.toml" server >"$dir/node$i/garage.log" 2>&1 &
    GARAGE_CLUSTER_PIDS+=($!)
    endpoints+=("http://127.0.0.1:$s3_port")
  done
  for i in $(seq 1 "$nodes"); do
    local g=("$bin" -c "$dir/node$i/garage.toml") id=""
    for _ in $(seq 1 100); do id=$("${g[@]}" node id -q 2>/dev/null) && break; sleep 0.1; done
    [ -n "$id" ] || { echo "garage node $i did not start ($dir/node$i/garage.log)" >&2; return 1; }
    ids+=("$id")
  done
  local g1=("$bin" -c "$dir/node1/garage.toml")
  for i in $(seq 2 "$nodes"); do "${g1[@]}" node connect "${ids[$((i - 1))]}" >/dev/null; done
  for i in $(seq 1 "$nodes"); do
    "${g1[@]}" layout assign -z "dc$i" -c "$capacity" "${ids[$((i - 1))]%@*}" >/dev/null
  done
  "${g1[@]}" layout apply --version 1 >/dev/null
  GARAGE_CLUSTER_KEY="GK$(random_hex 12)"
  GARAGE_CLUSTER_SECRET=$(random_hex 32)
  "${g1[@]}" key import --yes -n mirrorctl "$GARAGE_CLUSTER_KEY" "$GARAGE_CLUSTER_SECRET" >/dev/null
  "${g1[@]}" key allow --create-bucket mirrorctl >/dev/null
  GARAGE_CLUSTER_ENDPOINTS="${endpoints[*]}"
  GARAGE_CLUSTER_ENDPOINT=${endpoints[0]}
  # Ready when every node is connected to all the others (a node that has not connected yet
  # answers reads with 503, no quorum) and lists buckets with the key (it has the layout and
  # finds the key).
  local e ok healthy
  for i in $(seq 1 "$nodes"); do
    ok=""
    for _ in $(seq 1 100); do
      healthy=$("$bin" -c "$dir/node$i/garage.toml" status 2>/dev/null \
        | awk '/^==== / {section=$0; next} section ~ /HEALTHY/ && /^[0-9a-f]+ / {n++} section ~ /FAILED/ && /^[0-9a-f]+ / {f++} END {print (f ? -1 : n + 0)}')
      [ "$healthy" = "$nodes" ] && { ok=1; break; }
      sleep 0.1
    done
    [ -n "$ok" ] || { echo "garage cluster: node $i does not see all $nodes nodes ($dir/node$i/garage.log)" >&2; return 1; }
  done
  for e in "${endpoints[@]}"; do
    ok=""
    for _ in $(seq 1 100); do
      [ "$(curl -s -o /dev/null -w '%{http_code}' --aws-sigv4 aws:amz:us-east-1:s3 -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
        --user "$GARAGE_CLUSTER_KEY:$GARAGE_CLUSTER_SECRET" "$e/")" = 200 ] && { ok=1; break; }
      sleep 0.1
    done
    [ -n "$ok" ] || { echo "garage cluster: $e does not answer S3 requests ($dir/node*/garage.log)" >&2; return 1; }
  done
}

stop_garage_cluster() {
  local p
  for p in "${GARAGE_CLUSTER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${GARAGE_CLUSTER_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  GARAGE_CLUSTER_PIDS=()
}
