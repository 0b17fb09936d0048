#!/usr/bin/env bash
# Leader handover on SIGTERM in a cluster of BENCH_NODES (3 or 5) release nodes with the default
# Raft timing (`make bench-handover`). Each round stops the leader with SIGTERM while a steady
# stream of new PUTs runs through every other node, records the longest run without a 204
# (`pkraft-bench gaps`) and whether PUTs were refused, restarts the node and waits until the
# cluster has settled again. `make bench` measures the same for 3 nodes as part of its rolling
# restart; this script adds 5 nodes, where the handover also waits out the other voters' leader
# lease (docs/OPERATIONS.md, "Shutdown").
#
# Env: BENCH_NODES (default 5), BENCH_ROUNDS (leader stops, default 5), BENCH_BIN (dir with
# pkraft and pkraft-bench, default target/release).
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/lib/pkraft.sh
# The writers all come from 127.0.0.1: the per-client PUT limit would refuse them (429).
PKRAFT_EXTRA_TOML=$(limits_off_toml)

nodes=${BENCH_NODES:-5} rounds=${BENCH_ROUNDS:-5} bin=${BENCH_BIN:-target/release}
writers=4 seconds=3
case "$nodes" in 3 | 5) ;; *) echo "handover: BENCH_NODES must be 3 or 5" >&2; exit 2 ;; esac
need_bins handover "$bin"

work=$(mktemp -d)
# shellcheck disable=SC2034  # filled by cluster_up
declare -A node_pid node_http node_dns node_admin
cleanup() { cluster_down "$work/cluster"; rm -rf "$work"; }
trap cleanup EXIT
log() { echo "handover: $*" >&2; }
fail() { log "$*"; print_log_tails "$work"; exit 1; }

cluster_up "$bin" "$work/cluster" "$nodes" handover-bench-secret-not-for-production ||
  fail "the cluster of $nodes nodes did not start"
"$bin/pkraft-bench" gen --keys 100000 --versions 1 --out "$work/data.bin" >/dev/null

: >"$work/results.jsonl"
first_key=0
for r in $(seq 1 "$rounds"); do
  leader=""
  for _ in $(seq 1 300); do
    leader=$(cluster_leader 1)
    [ -n "$leader" ] && break
    sleep 0.1
  done
  [ -n "$leader" ] || fail "no leader known"
  wait_for_voters "$bin/pkraft" "${node_admin[$leader]}" "$nodes" 60 || fail "round $r: the cluster did not settle"
  urls=(); for m in $(seq 1 "$nodes"); do [ "$m" = "$leader" ] || urls+=(--url "${node_http[$m]}"); done
  log "round $r/$rounds: SIGTERM leader node $leader under writes through the other $((nodes - 1))"
  "$bin/pkraft-bench" gaps --data "$work/data.bin" --version 0 --first-key "$first_key" \
    "${urls[@]}" --concurrency "$writers" --seconds "$seconds" >"$work/gaps.json" &
  gaps_pid=$!
  sleep 1
  kill -TERM "${node_pid[$leader]}"
  wait_exited "${node_pid[$leader]}" || fail "node $leader did not exit within 30 s of SIGTERM"
  wait "$gaps_pid" || fail "round $r: the write stream failed"
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["leader"]=int(sys.argv[2]); print(json.dumps(d))' \
    "$work/gaps.json" "$leader" | tee -a "$work/results.jsonl" >&2
  first_key=$((first_key + $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["keys_used"])' "$work/gaps.json")))
  cluster_start_node "$leader" || fail "node $leader did not restart"
done

python3 - "$work/results.jsonl" "$nodes" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
gaps = [d["longest_gap_ms"] for d in runs]
refused = sum(sum(d["refused"].values()) for d in runs)
acked = sum(d["acknowledged"] for d in runs)
print(f"{sys.argv[2]} nodes, {len(runs)} leader stops (SIGTERM) under writes through the others:")
print(f"  longest run without a 204: median {statistics.median(gaps):.0f} ms, "
      f"max {max(gaps):.0f} ms (each: {', '.join(f'{g:.0f}' for g in gaps)})")
print(f"  PUTs acknowledged {acked}, not acknowledged {refused}")
# The writers pinned to one node: with more than 3 voters, one of them is silenced during the
# handover, and a PUT through it waits until it has applied the entry (about the lease).
worst = [max(d["longest_gap_ms_by_url"].values()) for d in runs]
print(f"  the slowest node's own writers: median {statistics.median(worst):.0f} ms, "
      f"max {max(worst):.0f} ms")
PY
