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
bench=$bin_dir/pkraft-bench
delay_ms=${LATENCY_DELAY_MS:-40} jitter_ms=${LATENCY_JITTER_MS:-10}
keys=${LATENCY_KEYS:-2000} runs=${LATENCY_RUNS:-3} trials=${LATENCY_FAILOVER_TRIALS:-10}
PKRAFT_EXTRA_TOML="$(limits_off_toml)
${LATENCY_RAFT_TOML:-}"
secret=latency-bench-secret-not-for-production

work=$(mktemp -d)
cleanup() {
  cluster_down "$work/cluster"
  rm -rf "$work"
}
trap cleanup EXIT
log() { echo "latency: $*" >&2; }
fail() {
  log "FAIL: $*"
  print_log_tails "$work"
  exit 1
}

# Every node's peer listener behind a `pkraft-bench delay-proxy`: the nodes advertise their
# proxy and join through node 1's, so every peer request and answer is delayed.
# shellcheck disable=SC2034  # filled by cluster_up
declare -A node_pid node_http node_dns node_admin
RUST_LOG=warn cluster_up "$bin_dir" "$work/cluster" 3 "$secret" \
  --peer-delay-ms "$delay_ms" --peer-jitter-ms "$jitter_ms" || fail "the cluster did not form"
start_node() {  # $1 = node id; restarts it on its config and data dir
  RUST_LOG=warn cluster_start_node "$1" || fail "node $1 did not restart"
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
  leader=$(pkraft_bench cluster settled --admin "${node_admin[1]}" --voters 3 --timeout-secs 30) ||
    fail "no settled cluster before failover trial $t"
  survivor=$(( leader % 3 + 1 ))
  kill -KILL "${node_pid[$leader]}"
  killed_at=$(date +%s%3N)
  "$bench" accept --data "$work/data.bin" --version $((runs + 1)) --key $((t - 1)) \
    --url "${node_http[$survivor]}" --timeout-secs 30 --since-unix-ms "$killed_at" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); d["kind"]="failover"; print(json.dumps(d))' ||
    fail "failover trial $t: no PUT accepted"
  start_node "$leader"
done
