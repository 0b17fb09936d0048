#!/usr/bin/env bash
# A 3-node cluster whose peer links are long (`make bench-latency`): every peer connection goes
# through `pkraft-bench delay-proxy`, which delivers each chunk LATENCY_DELAY_MS ± LATENCY_JITTER_MS
# later in each direction (default 40 ± 10 ms, so about 80 ms per round trip, like nodes in two
# regions; netem is not available on these machines). Reports PUT p50/p99 through all three
# nodes, the leader changes during that load, and the failover time (SIGKILL of the leader →
# first 204 through a survivor), with the default Raft timing unless LATENCY_RAFT_TOML gives a
# [raft] section. Results: JSON lines on stdout and a summary on stderr; docs/OPERATIONS.md,
# "Raft timing", holds the numbers.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh

bin_dir=${1:-target/release}
pkraft=$bin_dir/pkraft bench=$bin_dir/pkraft-bench
delay_ms=${LATENCY_DELAY_MS:-40} jitter_ms=${LATENCY_JITTER_MS:-10}
keys=${LATENCY_KEYS:-2000} runs=${LATENCY_RUNS:-3} trials=${LATENCY_FAILOVER_TRIALS:-10}
PKRAFT_EXTRA_TOML="$LIMITS_OFF_TOML
${LATENCY_RAFT_TOML:-}"
secret=latency-bench-secret-not-for-production

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
log() { echo "latency: $*" >&2; }
fail() {
  log "FAIL: $*"
  print_log_tails "$work"
  exit 1
}

declare -A node_pid node_http node_admin
start_node() {  # $1 = node id; (re)starts it on its config and data dir
  RUST_LOG=warn "$pkraft" serve --config "$work/node$1.toml" >>"$work/node$1.log" 2>&1 &
  node_pid[$1]=$!; pids+=($!)
  disown "$!"
  for _ in $(seq 1 300); do
    curl -sf "${node_http[$1]%/pkarr}/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  fail "node $1 did not answer within 30 s"
}
for n in 1 2 3; do
  http=$(loopback_port) dns=$(loopback_port) peer=$(loopback_port) admin=$(loopback_port)
  proxy=$(loopback_port)
  [ "$n" = 1 ] && { join=""; node1_proxy=$proxy; } || join="127.0.0.1:$node1_proxy"
  cluster_node_config "$work/node$n.toml" "$n" "$work/node$n-data" "127.0.0.1:$http" \
    "127.0.0.1:$dns" "127.0.0.1:$peer" "127.0.0.1:$admin" "$secret" "$join"
  # The other nodes reach this one through its proxy.
  sed -i "s|^peer_listen = .*|&\nadvertise = \"127.0.0.1:$proxy\"|" "$work/node$n.toml"
  "$bench" delay-proxy --listen "127.0.0.1:$proxy" --upstream "127.0.0.1:$peer" \
    --delay-ms "$delay_ms" --jitter-ms "$jitter_ms" >"$work/proxy$n.log" 2>&1 &
  pids+=($!)
  disown "$!"  # killed at the end: no "Killed" job notice from bash
  node_http[$n]="http://127.0.0.1:$http/pkarr"; node_admin[$n]="127.0.0.1:$admin"
  start_node "$n"
done
wait_for_voters "$pkraft" "${node_admin[1]}" 3 60 || fail "the cluster did not form within 60 s"

leader_of() {  # the leader node $1 knows of
  "$pkraft" cluster --admin "${node_admin[$1]}" status --json 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["node"]["leader"] or "")'
}
leader_changes() { leader_changes_total "${node_admin[@]}"; }

"$bench" gen --keys "$keys" --versions $((runs + 2)) --out "$work/data.bin"
urls=(); for n in 1 2 3; do urls+=(--url "${node_http[$n]}"); done
"$bench" put --data "$work/data.bin" --version 0 "${urls[@]}" --concurrency 64 >/dev/null
before=$(leader_changes)
for r in $(seq 1 "$runs"); do
  "$bench" put --data "$work/data.bin" --version "$r" "${urls[@]}" --concurrency 64 |
    python3 -c 'import json,sys; d=json.load(sys.stdin); d["kind"]="put"; print(json.dumps(d))'
done
echo "{\"kind\": \"leader_changes\", \"during_puts\": $(( $(leader_changes) - before ))}"

for t in $(seq 1 "$trials"); do
  leader=""
  for _ in $(seq 1 300); do
    leader=$(leader_of 1 || true)
    [ -n "$leader" ] && wait_for_voters "$pkraft" "${node_admin[$leader]}" 3 1 && break
    sleep 0.1
  done
  [ -n "$leader" ] || fail "no leader before failover trial $t"
  survivor=$(( leader % 3 + 1 ))
  kill -KILL "${node_pid[$leader]}"
  killed_at=$(date +%s%3N)
  "$bench" accept --data "$work/data.bin" --version $((runs + 1)) --key $((t - 1)) \
    --url "${node_http[$survivor]}" --timeout-secs 30 --since-unix-ms "$killed_at" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); d["kind"]="failover"; print(json.dumps(d))' ||
    fail "failover trial $t: no PUT accepted"
  start_node "$leader"
done
