#!/usr/bin/env bash
# Where a PUT's CPU goes, stage by stage (`make bench-put-budget`; docs/BENCHMARKS.md, "The
# budget of a PUT"). The release binary under `make bench`'s PUT load (pkraft-bench put, 64
# connections), 60,000 keys (BUDGET_KEYS) of one new version a run, so that a profiled run
# lasts seconds; perf at 499 Hz (BUDGET_PERF_HZ):
#   - single node: BUDGET_ROUNDS rounds (default 3), each one measured round (the server's
#     utime + stime over the PUTs acknowledged: CPU per PUT, as `make bench` counts it) and one
#     under `perf record --call-graph dwarf` (the samples' shares by stage:
#     tests/bench/put_budget.py). A stage's µs per PUT is its share times the measured CPU per
#     PUT, so that perf's own cost is not counted.
#   - the 3-node cluster (BUDGET_CLUSTER=1, the default): the same with PUTs through every node,
#     the leader and a follower profiled at once.
# With iroh-dns-server installed (`make bench` installs it; BUDGET_IROH=0 leaves it out), the same
# single-node load and classifier run on it too, after the single node's rounds: the stages both
# servers have (the check, HTTP) side by side, and what its store costs, which commits once a
# second.
# BUDGET_RECORDS=unchanged PUTs the first version's records in every run, under new timestamps
# (iroh's republish of unchanged addresses; `pkraft-bench gen --records`).
# Prints one table per process (the median of the rounds), then the mean wall time of each
# write-path stage over the measured runs (the node's histograms: the PUT, a batch's wait for a
# place in flight and the append slot, the batch, its log append and its apply), and writes the
# rounds' JSON to BUDGET_OUT (default target/bench-put-budget.jsonl).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh

bin=${BENCH_BIN_DIR:-target/release}
rounds=${BUDGET_ROUNDS:-3}
keys=${BUDGET_KEYS:-60000}
hz=${BUDGET_PERF_HZ:-499}
with_cluster=${BUDGET_CLUSTER:-1}
records=${BUDGET_RECORDS:-new-each-version}
iroh_bin=$(iroh_dns_server_bin)
with_iroh=${BUDGET_IROH:-$([ -x "$iroh_bin" ] && echo 1 || echo 0)}
[ -n "${BUDGET_IROH:-}" ] || [ "$with_iroh" = 1 ] ||
  echo "put-budget: no iroh-dns-server at $iroh_bin (make bench installs it): running without it" >&2
[ "$with_iroh" = 0 ] || [ -x "$iroh_bin" ] ||
  { echo "put-budget: BUDGET_IROH=1 but no iroh-dns-server at $iroh_bin (make bench installs it)" >&2; exit 2; }
out=${BUDGET_OUT:-target/bench-put-budget.jsonl}
concurrency=64
need_bins put-budget "$bin"
command -v perf >/dev/null || { echo "put-budget: perf is needed (Debian's linux-perf)" >&2; exit 2; }
export PKRAFT_BENCH=$bin/pkraft-bench
bench=$PKRAFT_BENCH
PKRAFT_EXTRA_TOML=$(limits_off_toml)
export PKRAFT_EXTRA_TOML
ticks_per_s=$(getconf CLK_TCK)
log() { echo "put-budget: $*" >&2; }

work=$(mktemp -d)
single_pid=
iroh_pid=
# shellcheck disable=SC2034  # filled by cluster_up
declare -A node_pid node_http node_dns node_admin
cleanup() {
  [ -z "$single_pid" ] || stop_process_groups "$single_pid"
  [ -z "$iroh_pid" ] || stop_process_groups "$iroh_pid"
  cluster_down "$work/cluster"
  rm -rf "$work"
}
trap cleanup EXIT
fail() { log "FAIL: $*"; print_log_tails "$work"; exit 1; }

# Two PUT runs a round (measured, profiled), each a new version of every key.
"$bench" gen --keys "$keys" --versions $((2 * rounds + 1)) --records "$records" --out "$work/data.bin" >/dev/null

# put_round VERSION URL...: every key's VERSION through the URLs; prints the JSON report.
put_round() {
  local version=$1; shift
  local urls=() u
  for u in "$@"; do urls+=(--url "$u"); done
  "$bench" put --data "$work/data.bin" --version "$version" "${urls[@]}" --concurrency "$concurrency"
}

# Seconds to wait after a run's last PUT before its CPU is counted: iroh-dns-server commits the
# run's last writes up to 1 s after them (its store's open transaction), and that commit is the
# run's. pkraft has nothing pending once its PUTs are answered (wait_idle covers the rest).
after_put=0

# The processes measured now, for wait_idle.
busy_pids=""
busy_ticks() {
  # shellcheck disable=SC2086  # one pid per word
  process_group_ticks $busy_pids
}

# The admin listener of each process measured (pid -> address), for its write-path timings.
declare -A admin_of

# scrape_timings ROLES DIR: each role's /metrics into DIR/<role> (empty for a process with no
# admin listener: iroh-dns-server).
scrape_timings() {
  local roles=$1 dir=$2 role
  mkdir -p "$dir"
  for role in $roles; do
    [ -n "${admin_of[${role#*=}]:-}" ] || { : >"$dir/${role%%=*}"; continue; }
    curl -sf "http://${admin_of[${role#*=}]}/metrics" >"$dir/${role%%=*}" || {
      log "no metrics from ${role%%=*} (${admin_of[${role#*=}]}): its wall times are left out"
      : >"$dir/${role%%=*}"
    }
  done
}

# measure SYSTEM VERSION ROLES URLS: one un-profiled run of VERSION through URLS; ROLES are
# role=pid words (node=123, or leader=… follower=…). Appends {system, version, put_s, acked,
# cpu_us_per_put by role, wall_ms by role} to measured.jsonl: wall_ms holds the mean wall time
# of each write-path stage over the run, from the node's histograms (docs/METRICS.md).
measure() {
  local system=$1 version=$2 roles=$3 urls=$4 role
  local -A before
  busy_pids=$(for role in $roles; do echo "${role#*=}"; done)
  wait_idle busy_ticks || log "the servers are still busy after 10 s; measuring anyway"
  scrape_timings "$roles" "$work/metrics-before"
  for role in $roles; do before[$role]=$(process_group_ticks "${role#*=}"); done
  # shellcheck disable=SC2086  # one URL per word
  put_round "$version" $urls >"$work/run.json"
  sleep "$after_put"
  wait_idle busy_ticks || true
  local ticks=()
  for role in $roles; do
    ticks+=("${role%%=*}=$(($(process_group_ticks "${role#*=}") - before[$role]))")
  done
  scrape_timings "$roles" "$work/metrics-after"
  python3 - "$work/run.json" "$ticks_per_s" "$system" "$version" "$work" "${ticks[@]}" <<'PY' >>"$work/measured.jsonl"
import json, sys
run, hz, system, version, work = json.load(open(sys.argv[1])), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
acked = run["status"].get("204", 0)
cpu = {t.split("=")[0]: int(t.split("=")[1]) * 1e6 / hz / max(acked, 1) for t in sys.argv[6:]}
STAGES = {  # histogram -> what the report calls it (ms, but for the batch size)
    "pkraft_http_put_duration_seconds": "PUT, arrival to answer",
    "pkraft_raft_publish_batch_wait_seconds": "batch: wait to be formed (a place in flight, the append slot)",
    "pkraft_raft_publish_batch_seconds": "batch: formed to answered",
    "pkraft_raft_log_append_seconds": "log append (write + fdatasync)",
    "pkraft_raft_apply_seconds": "apply (one state transaction)",
    "pkraft_raft_batch_packets": "packets per batch",
}
def sums(path):
    found = {}
    for line in open(path):
        name, _, value = line.partition(" ")
        for suffix in ("_sum", "_count"):
            base = name[: -len(suffix)]
            if name.endswith(suffix) and base in STAGES:
                found[(base, suffix)] = float(value)
    return found
wall = {}
for role in cpu:
    before, after = sums(f"{work}/metrics-before/{role}"), sums(f"{work}/metrics-after/{role}")
    means = {}
    for base, label in STAGES.items():
        count = after.get((base, "_count"), 0) - before.get((base, "_count"), 0)
        total = after.get((base, "_sum"), 0) - before.get((base, "_sum"), 0)
        if count > 0:
            means[label] = total / count * (1 if base.endswith("packets") else 1e3)
    wall[role] = means
print(json.dumps({"system": system, "version": version, "put_s": run["rps"], "acked": acked,
                  "cpu_us_per_put": cpu, "wall_ms": wall}))
PY
}

# profile SYSTEM VERSION ROLES URLS: the same run with each role's process under perf; appends
# each role's samples by stage to profiled.jsonl.
profile() {
  local system=$1 version=$2 roles=$3 urls=$4 role perf_pids=() pid
  busy_pids=$(for role in $roles; do echo "${role#*=}"; done)
  wait_idle busy_ticks || log "the servers are still busy after 10 s; profiling anyway"
  for role in $roles; do
    perf record -q -F "$hz" --call-graph dwarf,16384 -p "${role#*=}" \
      -o "$work/perf-${role%%=*}.data" >/dev/null 2>&1 &
    perf_pids+=($!)
  done
  sleep 1
  # shellcheck disable=SC2086  # one URL per word
  put_round "$version" $urls >"$work/run-profiled.json"
  sleep "$after_put"
  kill -INT "${perf_pids[@]}"
  for pid in "${perf_pids[@]}"; do wait "$pid" || true; done
  for role in $roles; do
    perf script -i "$work/perf-${role%%=*}.data" 2>/dev/null |
      python3 tests/bench/put_budget.py --system "$system" --role "${role%%=*}" \
        --version "$version" >>"$work/profiled.jsonl"
  done
}

# --- single node ---------------------------------------------------------------------------
http=$(loopback_port); dns=$(loopback_port); admin=$(loopback_port)
single_node_config "$work/pkraft.toml" "$work/pkraft-data" "127.0.0.1:$http" "127.0.0.1:$dns"
# The admin listener on a known port, for the timings.
sed -i "/^\[admin\]/,/^\[/s/^listen = \"127.0.0.1:0\"$/listen = \"127.0.0.1:$admin\"/" "$work/pkraft.toml"
grep -q "^listen = \"127.0.0.1:$admin\"" "$work/pkraft.toml" || fail "the admin listener's port was not set"
RUST_LOG=warn setsid "$bin/pkraft" serve --config "$work/pkraft.toml" >"$work/pkraft.log" 2>&1 &
single_pid=$!
admin_of[$single_pid]=127.0.0.1:$admin
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$http/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$http/healthz" >/dev/null || fail "the single node did not start"
single_url="http://127.0.0.1:$http/pkarr"
put_round 0 "$single_url" >/dev/null
for r in $(seq 1 "$rounds"); do
  log "single node, round $r/$rounds"
  measure single $((2 * r - 1)) "node=$single_pid" "$single_url"
  profile single $((2 * r)) "node=$single_pid" "$single_url"
done
stop_process_groups "$single_pid"; single_pid=

# --- iroh-dns-server -----------------------------------------------------------------------
if [ "$with_iroh" = 1 ]; then
  http=$(loopback_port); dns=$(loopback_port); https=$(loopback_port)
  iroh_dns_server_config "$work/iroh.toml" "$work/iroh-data" "$http" "$dns" "$https" pkarr.test
  RUST_LOG=warn setsid "$iroh_bin" --config "$work/iroh.toml" >"$work/iroh.log" 2>&1 &
  iroh_pid=$!
  for _ in $(seq 1 300); do curl -s -o /dev/null "http://127.0.0.1:$http/" 2>/dev/null && break; sleep 0.1; done
  curl -s -o /dev/null "http://127.0.0.1:$http/" || fail "iroh-dns-server did not start"
  iroh_url="http://127.0.0.1:$http/pkarr"
  after_put=1.2
  put_round 0 "$iroh_url" >/dev/null
  sleep "$after_put"  # the warm-up's last commit, before round 1 counts
  for r in $(seq 1 "$rounds"); do
    log "iroh-dns-server, round $r/$rounds"
    measure iroh-dns-server $((2 * r - 1)) "node=$iroh_pid" "$iroh_url"
    profile iroh-dns-server $((2 * r)) "node=$iroh_pid" "$iroh_url"
  done
  stop_process_groups "$iroh_pid"; iroh_pid=
  after_put=0
fi

# --- 3-node cluster ------------------------------------------------------------------------
if [ "$with_cluster" = 1 ]; then
  RUST_LOG=warn cluster_up "$bin" "$work/cluster" 3 bench-cluster-secret-not-for-production ||
    fail "the cluster did not start"
  urls="${node_http[1]} ${node_http[2]} ${node_http[3]}"
  for id in 1 2 3; do admin_of[${node_pid[$id]}]=${node_admin[$id]}; done
  # shellcheck disable=SC2086
  put_round 0 $urls >/dev/null
  for r in $(seq 1 "$rounds"); do
    leader=$("$bench" cluster settled --admin "${node_admin[1]}" --voters 3 --timeout-secs 60) ||
      fail "the cluster did not settle"
    follower=$((leader % 3 + 1))
    log "cluster, round $r/$rounds (leader: node $leader)"
    measure cluster $((2 * r - 1)) "leader=${node_pid[$leader]} follower=${node_pid[$follower]}" "$urls"
    profile cluster $((2 * r)) "leader=${node_pid[$leader]} follower=${node_pid[$follower]}" "$urls"
  done
fi

mkdir -p "$(dirname "$out")"
cat "$work/measured.jsonl" "$work/profiled.jsonl" >"$out"
python3 tests/bench/put_budget.py --report "$work/measured.jsonl" "$work/profiled.jsonl"
