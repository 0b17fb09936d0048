#!/usr/bin/env bash
# Silent and one-way partitions beside kills: `make bench-partitions` (also run by `make bench`).
#
# Three release nodes, each in a network namespace of its own, the client in another
# (pkraft-bench partitions; pkraft_testkit::netns). Per trial, on a settled cluster: the leader
# is SIGKILLed, or iptables drops every packet between it and the other nodes (blackhole), or
# only what it receives from them, or only what it sends them; then the time until the first
# PUT of a new packet is accepted (204) through a survivor, from the fault, and the attempts
# refused before it. Then followers cut off for BENCH_REJOIN_SECONDS under a light write load
# and healed: the leader changes all nodes counted and the leader's term, before and after; once
# with PreVote (the default) and once with `raft.pre_vote = false` for comparison.
#
# Needs root, ip and iptables. Env: BENCH_BIN (dir with release pkraft and pkraft-bench),
# BENCH_PARTITION_TRIALS (20: kills and blackholes each), BENCH_ONE_WAY_TRIALS (5 of each
# one-way cut), BENCH_REJOIN_RUNS (3), BENCH_REJOIN_SECONDS (30). Raw results:
# target/bench-results-partitions*.json; a summary on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh

bin=${BENCH_BIN:-target/release}
trials=${BENCH_PARTITION_TRIALS:-20}
one_way=${BENCH_ONE_WAY_TRIALS:-5}
rejoin_runs=${BENCH_REJOIN_RUNS:-3}
rejoin_seconds=${BENCH_REJOIN_SECONDS:-30}
need_bins partitions "$bin"
for tool in ip iptables python3; do
  command -v "$tool" >/dev/null || { echo "partitions: $tool is missing" >&2; exit 2; }
done
[ "$(id -u)" -eq 0 ] || { echo "partitions: network namespaces need root" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log() { echo "partitions: $*" >&2; }
keys=$(( 2 * trials + 2 * one_way + (rejoin_runs + 1) * (rejoin_seconds * 10 + 10) + 100 ))
"$bin/pkraft-bench" gen --keys "$keys" --versions 2 --out "$work/data.bin" >/dev/null
mkdir -p target
log "with PreVote: $trials kills, $trials blackholes, $one_way of each one-way cut, $rejoin_runs rejoins"
"$bin/pkraft-bench" partitions --pkraft "$bin/pkraft" --data "$work/data.bin" --work "$work/on" \
  --trials "$trials" --one-way-trials "$one_way" --rejoin-runs "$rejoin_runs" \
  --rejoin-seconds "$rejoin_seconds" >target/bench-results-partitions.json
log "without PreVote (raft.pre_vote = false): 1 rejoin"
"$bin/pkraft-bench" partitions --pkraft "$bin/pkraft" --data "$work/data.bin" --work "$work/off" \
  --trials 0 --one-way-trials 0 --rejoin-runs 1 --rejoin-seconds "$rejoin_seconds" \
  --raft 'pre_vote = false' >target/bench-results-partitions-off.json

python3 - target/bench-results-partitions.json target/bench-results-partitions-off.json <<'PY'
import json, sys
on = json.load(open(sys.argv[1]))
off = json.load(open(sys.argv[2]))
print("| fault | trials | first 204 through a survivor: median | min | max | trials with a refused attempt |")
print("|---|---|---|---|---|---|")
for kind, s in on["summary"].items():
    print(f"| {kind} | {s['trials']} | {s['median_ms']:.0f} ms | {s['min_ms']:.0f} ms | {s['max_ms']:.0f} ms | {s['trials_with_refused_attempts']} |")
print()
print("| follower cut off, then healed | runs | seconds cut off | leader changes (all nodes) | term before → after | writes accepted / refused |")
print("|---|---|---|---|---|---|")
for name, report in (("PreVote (default)", on), ("raft.pre_vote = false", off)):
    for r in report["rejoins"]:
        print(f"| {name} | 1 | {r['isolated_s']:.1f} | {r['leader_changes']} | {r['term_before']} → {r['term_after']} | {r['writes_accepted']} / {r['writes_refused']} |")
PY
