#!/usr/bin/env bash
# Linearizable GETs at once through the followers, against local GETs at the same load
# (`make bench-linearizable`; docs/BENCHMARKS.md, "Linearizable reads at once").
#
# A 3-node release cluster, limits off, BENCH_LIN_KEYS packets stored through the leader. Then
# BENCH_LIN_ROUNDS interleaved rounds of the same GET load through the two followers, once local
# (the default) and once `?consistency=linearizable`: BENCH_LIN_CONNECTIONS keep-alive
# connections (split over the two followers; all from 127.0.0.1, so the per-client connection
# cap is raised) sending BENCH_LIN_REQUESTS GETs of stored keys as fast as they are answered. Each run prints one JSON line: its latencies and statuses, the
# read-index rounds the followers ran during it and the reads they carried
# (`pkraft_raft_read_index_batch`), and the leader changes. At the end, the medians of each mode
# and the ratio of their p99s.
#
# usage: tests/bench/linearizable.sh BIN_DIR   (BIN_DIR holds release pkraft and pkraft-bench)
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh

bin=${1:?usage: linearizable.sh BIN_DIR}
need_bins linearizable.sh "$bin"
export PKRAFT_BENCH=$bin/pkraft-bench
rounds=${BENCH_LIN_ROUNDS:-3}
connections=${BENCH_LIN_CONNECTIONS:-512}
requests=${BENCH_LIN_REQUESTS:-6000}
keys=${BENCH_LIN_KEYS:-2000}
work=$(mktemp -d)
declare -A node_pid node_http node_dns node_admin node_https
cleanup() { cluster_down "$work/cluster"; rm -rf "$work"; }
trap cleanup EXIT
log() { echo "linearizable: $(date +%T) $*" >&2; }

pkraft_bench cluster up --pkraft "$bin/pkraft" --work "$work/cluster" --nodes 3 \
  --secret linearizable-bench-secret-0123456789 --taken "$(ports_taken)" --limits-off \
  --set http.max_connections_per_client=4096 \
  >"$work/nodes.txt" || { log "the cluster did not start"; exit 1; }
cluster_read_nodes <"$work/nodes.txt"
leader=$(cluster_leader 1)
[ -n "$leader" ] || { log "no leader"; exit 1; }
followers=()
for id in 1 2 3; do [ "$id" = "$leader" ] || followers+=("$id"); done
admins=("${node_admin[@]}")

"$bin/pkraft-bench" gen --keys "$keys" --versions 1 --seed 49 --out "$work/data.bin" 2>/dev/null
"$bin/pkraft-bench" put --data "$work/data.bin" --version 0 --url "${node_http[$leader]}" \
  --concurrency 32 >"$work/put.json"
python3 -c '
import json, sys
put = json.load(open(sys.argv[1]))
if put["status"].get("204", 0) != int(sys.argv[2]):
    sys.exit(f"linearizable: storing the keys: {put}")' "$work/put.json" "$keys"

# "<rounds> <reads>": the read-index rounds the followers ran, and the reads they carried.
read_index() {
  local id metrics=
  for id in "${followers[@]}"; do
    metrics+=$(curl -sf "http://${node_admin[$id]}/metrics") || { log "node $id's metrics"; exit 1; }
    metrics+=$'\n'
  done
  awk '
    $1 == "pkraft_raft_read_index_batch_count" { rounds += $2 }
    $1 == "pkraft_raft_read_index_batch_sum" { reads += $2 }
    END { printf "%d %d\n", rounds, reads }' <<<"$metrics"
}

results=$work/runs.jsonl
for round in $(seq "$rounds"); do
  # Each mode goes first in every other round, so neither always meets the warmer cluster.
  modes=(local linearizable)
  [ $((round % 2)) = 0 ] && modes=(linearizable local)
  for mode in "${modes[@]}"; do
    flag=()
    [ "$mode" = linearizable ] && flag=(--linearizable)
    changes=$(leader_changes_total "${admins[@]}")
    counts=$(read_index)
    read -r rounds_before reads_before <<<"$counts"
    "$bin/pkraft-bench" get --data "$work/data.bin" --url "${node_http[${followers[0]}]}" \
      --url "${node_http[${followers[1]}]}" --concurrency "$connections" \
      --requests "$requests" "${flag[@]}" >"$work/run.json"
    counts=$(read_index)
    read -r rounds_after reads_after <<<"$counts"
    changes=$(($(leader_changes_total "${admins[@]}") - changes))
    python3 -c '
import json, sys
run = json.load(open(sys.argv[1]))
mode, round_, rounds, reads, changes = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
print(json.dumps({"mode": mode, "round": round_, "p50_ms": run["p50_ms"], "p99_ms": run["p99_ms"],
    "max_ms": run["max_ms"], "rps": round(run["rps"]), "status": run["status"], "errors": run["errors"],
    "read_index_rounds": rounds, "read_index_reads": reads, "leader_changes": changes}))' \
      "$work/run.json" "$mode" "$round" "$((rounds_after - rounds_before))" \
      "$((reads_after - reads_before))" "$changes" | tee -a "$results"
  done
done

python3 -c '
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
median = lambda mode, key: statistics.median(r[key] for r in runs if r["mode"] == mode)
summary = {"connections": int(sys.argv[2]), "requests": int(sys.argv[3]), "rounds": int(sys.argv[4])}
for mode in ("local", "linearizable"):
    for key in ("p50_ms", "p99_ms", "rps", "read_index_rounds", "read_index_reads", "leader_changes"):
        summary[f"{mode}_{key}"] = median(mode, key)
summary["p99_ratio"] = round(summary["linearizable_p99_ms"] / summary["local_p99_ms"], 2)
summary["non_200"] = sum(n for r in runs for s, n in r["status"].items() if s != "200") + sum(r["errors"] for r in runs)
print(json.dumps(summary))' "$results" "$connections" "$requests" "$rounds"
