#!/usr/bin/env bash
# Raft beside reads that wait on the disk (`make bench-cold-reads`, issue 49): a 3-node release
# cluster holding BENCH_COLD_READS_KEYS packets (default 1,000,000) takes a steady stream of new
# PUTs through all its nodes while every node is loaded with GETs of stored keys (64 at a time)
# and DNS-over-TCP queries for them (dnsperf -m tcp, 20 clients). Phases of BENCH_PHASE_SECONDS
# (default 20), BENCH_ROUNDS (3) times each:
#   warm  every state.redb read into the page cache first (`cat`), no memory cap;
#   cold  each node moved into a cgroup v1 memory cgroup of BENCH_COLD_READS_MEM_MIB (160) and
#         the page cache dropped, so that nearly every read of state.redb is a disk read
#         (redb's own cache is set to 16 MiB, far below the store, for the same reason).
# Each phase reports the leader changes (pkraft_raft_leader_changes_total summed over the
# nodes), the PUTs acknowledged with their p50/p99 latency, and the GETs and TCP queries
# answered. Targets: 0 leader changes in a cold phase, and cold PUT p99 within 2x of warm.
# With BENCH_BASE_BIN (a dir with another pkraft build, e.g. from before the Raft runtime was
# split off) the same runs for it after BENCH_BIN's, each on a cluster of its own.
#
# Env: BENCH_BIN (dir with pkraft and pkraft-bench, default target/release), BENCH_BASE_BIN,
# BENCH_COLD_READS_KEYS, BENCH_COLD_READS_MEM_MIB, BENCH_PHASE_SECONDS, BENCH_ROUNDS. Needs root
# (cgroups, drop_caches) and dnsperf. About 6 minutes per build at the defaults, and 2-7 GB of
# disk per build while it runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/lib/pkraft.sh
PKRAFT_EXTRA_TOML=$(limits_off_toml)

bin=${BENCH_BIN:-target/release} base_bin=${BENCH_BASE_BIN:-}
keys=${BENCH_COLD_READS_KEYS:-1000000} mem_mib=${BENCH_COLD_READS_MEM_MIB:-160}
seconds=${BENCH_PHASE_SECONDS:-20} rounds=${BENCH_ROUNDS:-3}
writers=16
need_bins cold-reads "$bin"
[ -z "$base_bin" ] || need_bins cold-reads "$base_bin"
command -v dnsperf >/dev/null || { echo "cold-reads: dnsperf is missing (Debian package dnsperf)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "cold-reads: needs root (memory cgroups, drop_caches)" >&2; exit 2; }
cgroup_root=/sys/fs/cgroup/memory
[ -d "$cgroup_root" ] || { echo "cold-reads: needs cgroup v1's memory controller at $cgroup_root" >&2; exit 2; }

work=$(mktemp -d)
# shellcheck disable=SC2034  # filled by cluster_up
declare -A node_pid node_http node_dns node_admin
loads=() cgroups=()
stop_loads() {
  local p
  for p in "${loads[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${loads[@]}"; do wait "$p" 2>/dev/null || true; done
  loads=()
}
remove_cgroups() {
  local group
  for group in "${cgroups[@]}"; do
    # Its processes back to the root first: a cgroup with members cannot be removed.
    while read -r pid; do echo "$pid" >"$cgroup_root/cgroup.procs" 2>/dev/null || true; done \
      <"$group/cgroup.procs" 2>/dev/null || true
    rmdir "$group" 2>/dev/null || true
  done
  cgroups=()
}
cleanup() { stop_loads; cluster_down "$work/cluster" || true; remove_cgroups; rm -rf "$work"; }
trap cleanup EXIT
log() { echo "cold-reads: $*" >&2; }
fail() { log "$*"; print_log_tails "$work"; exit 1; }

log "generating $keys stored keys and the PUT stream's keys"
"$bin/pkraft-bench" gen --keys "$keys" --versions 1 --out "$work/store.bin" >/dev/null
"$bin/pkraft-bench" gen --keys $((2 * rounds * seconds * 2000 + 10000)) --versions 1 --seed 4242 \
  --out "$work/writes.bin" >/dev/null
"$bin/pkraft-bench" queries --data "$work/store.bin" --origin pkarr.test --queries "$work/queries.txt" \
  --zone "$work/zone.txt" >/dev/null

# records N: the packets node N holds.
records() {
  curl -sf "http://${node_admin[$1]}/metrics" | awk '/^pkraft_store_records / {print $2}'
}

# phase BUILD KIND ROUND: the load for BENCH_PHASE_SECONDS; one JSON line into results.jsonl.
phase() {
  local build=$1 kind=$2 round=$3 n before after end
  local urls=() ; for n in 1 2 3; do urls+=(--url "${node_http[$n]}"); done
  before=$(leader_changes_total "${node_admin[@]}")
  end=$((SECONDS + seconds))
  for n in 1 2 3; do
    ( while [ "$SECONDS" -lt "$end" ]; do
        "$bin/pkraft-bench" get --data "$work/store.bin" --url "${node_http[$n]}" \
          --concurrency 64 --requests 5000 >>"$work/get-$n.jsonl" 2>/dev/null || true
      done ) &
    loads+=($!)
    dnsperf -m tcp -s 127.0.0.1 -p "${node_dns[$n]}" -d "$work/queries.txt" -c 20 \
      -l "$seconds" >"$work/dnsperf-$n.txt" 2>&1 &
    loads+=($!)
  done
  "$bin/pkraft-bench" gaps --data "$work/writes.bin" --version 0 --first-key "$first_key" \
    "${urls[@]}" --concurrency "$writers" --seconds "$seconds" >"$work/gaps.json" ||
    fail "$build $kind: the write stream failed"
  stop_loads
  after=$(leader_changes_total "${node_admin[@]}")
  first_key=$((first_key + $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["keys_used"])' "$work/gaps.json")))
  python3 - "$work" "$build" "$kind" "$round" "$((after - before))" "$seconds" <<'PY' | tee -a "$work/results.jsonl" >&2
import glob, json, re, sys
work, build, kind, rnd, changes, seconds = sys.argv[1:]
gaps = json.load(open(f"{work}/gaps.json"))
gets = 0
for path in glob.glob(f"{work}/get-*.jsonl"):
    for line in open(path):
        try:
            d = json.loads(line)
        except ValueError:
            continue
        gets += d.get("status", {}).get("200", 0)
tcp = 0
for path in glob.glob(f"{work}/dnsperf-*.txt"):
    m = re.search(r"Queries completed:\s+(\d+)", open(path).read())
    tcp += int(m.group(1)) if m else 0
print(json.dumps({"build": build, "phase": kind, "round": int(rnd), "leader_changes": int(changes),
                  "puts": gaps["acknowledged"], "put_p50_ms": gaps["put_p50_ms"],
                  "put_p99_ms": gaps["put_p99_ms"], "longest_gap_ms": gaps["longest_gap_ms"],
                  "gets_per_s": gets / float(seconds), "tcp_queries_per_s": tcp / float(seconds)}))
PY
  rm -f "$work"/get-*.jsonl "$work"/dnsperf-*.txt
}

warm() {
  remove_cgroups
  find "$work/cluster" -name state.redb -exec cat {} + >/dev/null
}

cold() {
  local n group
  for n in 1 2 3; do
    group="$cgroup_root/pkraft-cold-reads-$$-$n"
    mkdir -p "$group"
    cgroups+=("$group")
    echo $((mem_mib * 1024 * 1024)) >"$group/memory.limit_in_bytes"
    echo "${node_pid[$n]}" >"$group/cgroup.procs"
  done
  sync
  echo 3 >/proc/sys/vm/drop_caches
}

run_build() {
  local build=$1 build_bin=$2 n round
  cluster_bin=$build_bin
  rm -rf "$work/cluster"
  cluster_up "$build_bin" "$work/cluster" 3 cold-reads-bench-secret-not-for-production \
    --set raft.state_cache_mib=16 || fail "$build: the cluster did not start"
  log "$build: storing $keys packets"
  "$build_bin/pkraft-bench" put --data "$work/store.bin" --version 0 --concurrency 64 \
    --url "${node_http[1]}" --url "${node_http[2]}" --url "${node_http[3]}" >"$work/load.json" ||
    fail "$build: the load failed"
  # The packets acknowledged (a few PUTs may be refused, 503, while a snapshot is built).
  stored=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["status"].get("204", 0))' "$work/load.json")
  [ "$stored" -ge $((keys * 99 / 100)) ] || fail "$build: only $stored of $keys PUTs acknowledged"
  for n in 1 2 3; do
    for _ in $(seq 1 600); do
      [ "$(records "$n")" -ge "$stored" ] && break
      sleep 0.5
    done
    [ "$(records "$n")" -ge "$stored" ] || fail "$build: node $n holds $(records "$n") of $stored packets"
  done
  log "$build: state.redb sizes: $(find "$work/cluster" -name state.redb -printf '%s ' )"
  first_key=0
  for round in $(seq 1 "$rounds"); do
    warm
    phase "$build" warm "$round"
    cold
    phase "$build" cold "$round"
  done
  remove_cgroups
  cluster_down "$work/cluster"
}

: >"$work/results.jsonl"
run_build new "$bin"
[ -z "$base_bin" ] || run_build base "$base_bin"

python3 - "$work/results.jsonl" "$keys" "$mem_mib" "$seconds" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"3 nodes, {sys.argv[2]} packets, cold = {sys.argv[3]} MiB memory cgroup per node, "
      f"{sys.argv[4]} s phases; medians over rounds (leader changes: the sum)")
print(f"{'build':6} {'phase':5} {'leader changes':>15} {'PUT/s':>7} {'PUT p50 ms':>11} {'PUT p99 ms':>11} "
      f"{'longest gap ms':>15} {'GET/s':>8} {'TCP q/s':>8}")
p99 = {}
for build in dict.fromkeys(r["build"] for r in rows):
    for phase in ("warm", "cold"):
        rs = [r for r in rows if r["build"] == build and r["phase"] == phase]
        if not rs:
            continue
        med = lambda k: statistics.median(r[k] for r in rs)
        p99[(build, phase)] = med("put_p99_ms")
        print(f"{build:6} {phase:5} {sum(r['leader_changes'] for r in rs):15} "
              f"{med('puts') / float(sys.argv[4]):7.0f} {med('put_p50_ms'):11.1f} {med('put_p99_ms'):11.1f} "
              f"{med('longest_gap_ms'):15.0f} {med('gets_per_s'):8.0f} {med('tcp_queries_per_s'):8.0f}")
    if (build, "warm") in p99 and p99[(build, "warm")] > 0:
        print(f"{build}: cold PUT p99 / warm PUT p99 = {p99[(build, 'cold')] / p99[(build, 'warm')]:.2f}")
PY
