#!/usr/bin/env bash
# A/B benchmark of the write path: two pkraft builds side by side (a single node and a 3-node
# cluster each, unless BENCH_AB_CLUSTER=0), with iroh-dns-server as the common yardstick, in
# interleaved rounds.
#
#   BENCH_A=/path/to/bin-dir-a BENCH_B=/path/to/bin-dir-b tests/bench/ab.sh
#
# Each bin dir holds a release `pkraft` (and A's `pkraft-bench` drives the load). Every system
# gets the same signed packets; each round PUTs the next version of every key through each system
# (BENCH_CONCURRENCY connections, 64 by default, spread over all nodes of a cluster), in an order
# that alternates per round.
# Per run it records PUT/s, p50/p99, server CPU per PUT (utime + stime until the servers are idle
# again) and the machine's idle share; at the end it prints medians and the ratios to
# iroh-dns-server of the same rounds. Env: BENCH_RUNS (3), BENCH_KEYS (20000); BENCH_A_TOML and
# BENCH_B_TOML, config lines added to A's or B's nodes (the same build with a setting on and off:
# BENCH_A=target/release BENCH_B=target/release BENCH_B_TOML=$'[raft]\nscrub_packets_per_second = 0');
# BENCH_AB_IROH=0 leaves iroh-dns-server out (the ratio column is then B to A of the same round);
# BENCH_AB_CLUSTER=0 leaves the clusters out; BENCH_AB_RECORDS=unchanged makes every round PUT
# the records of the first under a new timestamp (iroh's republish of unchanged addresses; the
# default, new-each-version, changes them every round); BENCH_CONCURRENCY (64) sets the load's
# connections (all from 127.0.0.1: the node closes any beyond its
# http.max_connections_per_client, 256 by default, so the script refuses more).
# Method and results: docs/BENCHMARKS.md ("openraft 0.10").
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh
PKRAFT_EXTRA_TOML=$(limits_off_toml)

a_dir=${BENCH_A:?BENCH_A: bin dir of build A}
b_dir=${BENCH_B:?BENCH_B: bin dir of build B}
runs=${BENCH_RUNS:-3} keys=${BENCH_KEYS:-20000} concurrency=${BENCH_CONCURRENCY:-64}
with_clusters=${BENCH_AB_CLUSTER:-1}
[ "$concurrency" -ge 1 ] && [ "$concurrency" -le 256 ] ||
  { echo "ab: BENCH_CONCURRENCY=$concurrency: 1 to 256 (the node's connection cap per client)" >&2; exit 2; }
bench="$a_dir/pkraft-bench"
iroh_bin=$(iroh_dns_server_bin)
with_iroh=${BENCH_AB_IROH:-1}
[ "$with_iroh" = 0 ] || [ -x "$iroh_bin" ] ||
  { echo "ab: $iroh_bin missing (make bench installs it; BENCH_AB_IROH=0 runs without it)" >&2; exit 1; }
# Each build gets the limits-off TOML of its own pkraft-bench (built from the same commit), when
# its bin dir has one: an older build refuses the settings a newer one added (its config has
# deny_unknown_fields), and a newer one may need its new limits turned off.
limits_off_of() {  # $1 = bin dir
  if [ -x "$1/pkraft-bench" ]; then "$1/pkraft-bench" limits-off-toml; else echo "$PKRAFT_EXTRA_TOML"; fi
}
a_limits_off=$(limits_off_of "$a_dir")
b_limits_off=$(limits_off_of "$b_dir")
# The extra config of system $1 (a-… or b-…).
toml_of() {
  case "$1" in
    a-*) printf '%s\n%s' "$a_limits_off" "${BENCH_A_TOML:-}" ;;
    b-*) printf '%s\n%s' "$b_limits_off" "${BENCH_B_TOML:-}" ;;
  esac
}

work=$(mktemp -d)
pids=()
cleanup() {
  kill_all "${pids[@]}"
  local dir
  for dir in "$work"/*-cluster; do cluster_down "$dir"; done
  rm -rf "$work"
}
trap cleanup EXIT
log() { echo "ab: $*" >&2; }
fail() { log "$*"; print_log_tails "$work"; exit 1; }

wait_up() {  # $1 = pid, $2 = URL; up to 30 s
  for _ in $(seq 1 300); do
    kill -0 "$1" 2>/dev/null || fail "a server exited during start"
    curl -s -o /dev/null "$2" && return 0
    sleep 0.1
  done
  fail "no answer from $2 within 30 s"
}

declare -A pid_of url_of
start_single() {  # $1 = system name, $2 = bin dir
  local http dns
  http=$(loopback_port); dns=$(loopback_port)
  PKRAFT_EXTRA_TOML=$(toml_of "$1") \
    single_node_config "$work/$1.toml" "$work/$1-data" "127.0.0.1:$http" "127.0.0.1:$dns"
  RUST_LOG=warn setsid "$2/pkraft" serve --config "$work/$1.toml" >"$work/$1.log" 2>&1 &
  pids+=($!); pid_of[$1]=$!; url_of[$1]="http://127.0.0.1:$http/pkarr"
  wait_up "$!" "http://127.0.0.1:$http/healthz"
}
start_cluster() {  # $1 = system name, $2 = bin dir
  # shellcheck disable=SC2034  # filled by cluster_up
  local -A node_pid node_http node_dns node_admin
  PKRAFT_EXTRA_TOML=$(toml_of "$1") RUST_LOG=warn \
    cluster_up "$2" "$work/$1" 3 ab-cluster-secret-not-for-production ||
    fail "cluster $1 did not start"
  pids+=("${node_pid[@]}"); pid_of[$1]="${node_pid[*]}"; url_of[$1]="${node_http[*]}"
}
start_iroh() {
  local http dns https
  http=$(loopback_port); dns=$(loopback_port); https=$(loopback_port)
  iroh_dns_server_config "$work/iroh.toml" "$work/iroh-data" "$http" "$dns" "$https" pkarr.test
  RUST_LOG=warn setsid "$iroh_bin" --config "$work/iroh.toml" >"$work/iroh.log" 2>&1 &
  pids+=($!); pid_of[iroh]=$!; url_of[iroh]="http://127.0.0.1:$http/pkarr"
  wait_up "$!" "http://127.0.0.1:$http/"
}

ticks() {  # utime + stime of every process of system $1
  local sum=0 pid
  for pid in ${pid_of[$1]}; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
  echo "$sum"
}
all_ticks() { local sum=0 s; for s in "${!pid_of[@]}"; do sum=$((sum + $(ticks "$s"))); done; echo "$sum"; }
settle() { wait_idle all_ticks || true; }  # measure anyway if a server stays busy
machine() { awk '/^cpu / {print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat; }
urls() { local u; for u in ${url_of[$1]}; do echo --url "$u"; done; }
put() {  # $1 = system, $2 = version; appends one JSON line to results
  local c0 c1 m0 m1
  settle; c0=$(ticks "$1"); m0=$(machine)
  # shellcheck disable=SC2046  # one --url per node
  "$bench" put --data "$work/data.bin" --version "$2" $(urls "$1") --concurrency "$concurrency" >"$work/run.json"
  m1=$(machine); settle; c1=$(ticks "$1")
  python3 - "$1" "$work/run.json" "$c0" "$c1" "$(getconf CLK_TCK)" "$m0" "$m1" >>"$work/results.jsonl" <<'PY'
import json, sys
d = json.load(open(sys.argv[2]))
d["system"] = sys.argv[1]
d["server_cpu_us"] = (int(sys.argv[4]) - int(sys.argv[3])) * 1e6 / int(sys.argv[5]) / max(d["requests"], 1)
(t0, i0), (t1, i1) = (map(int, sys.argv[6].split()), map(int, sys.argv[7].split()))
d["machine_idle_pct"] = 100.0 * (i1 - i0) / max(t1 - t0, 1)
print(json.dumps(d))
PY
}

if [ -n "${BENCH_AB_RECORDS:-}" ]; then
  # B's pkraft-bench makes the data set: A's may predate --records (the file's format is the
  # same).
  "$b_dir/pkraft-bench" gen --keys "$keys" --versions $((runs + 1)) --records "$BENCH_AB_RECORDS" --out "$work/data.bin"
else
  "$bench" gen --keys "$keys" --versions $((runs + 1)) --out "$work/data.bin"
fi
start_single a-single "$a_dir"; start_single b-single "$b_dir"
systems=(a-single b-single)
if [ "$with_clusters" != 0 ]; then
  start_cluster a-cluster "$a_dir"; start_cluster b-cluster "$b_dir"
  systems+=(a-cluster b-cluster)
fi
if [ "$with_iroh" != 0 ]; then start_iroh; systems+=(iroh); fi
for s in "${systems[@]}"; do put "$s" 0; done
: >"$work/results.jsonl"  # version 0 only loads the keys
for r in $(seq 1 "$runs"); do
  order=("${systems[@]}")
  if ! ((r % 2)); then
    order=(); for ((i = ${#systems[@]} - 1; i >= 0; i--)); do order+=("${systems[$i]}"); done
  fi
  for s in "${order[@]}"; do log "round $r/$runs: $s"; put "$s" "$r"; done
done
python3 - "$work/results.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for d in runs:
    by.setdefault(d["system"], []).append(d)
def med(s, k): return statistics.median(d[k] for d in by[s])
with_iroh = "iroh" in by
print(f"{'system':10} {'PUT/s med':>10} {'per run':>24} {'vs iroh' if with_iroh else 'vs A':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU µs':>7} {'idle %':>7}")
for s in ("a-single", "b-single", "a-cluster", "b-cluster", "iroh"):
    if s not in by:
        continue
    per = [d["rps"] for d in by[s]]
    # Per round: the runs of one round saw the same machine.
    base = by["iroh"] if with_iroh else by["a-" + s.split("-", 1)[1]]
    ratios = [d["rps"] / i["rps"] for d, i in zip(by[s], base)]
    print(f"{s:10} {med(s, 'rps'):10.0f} {' '.join(f'{x:.0f}' for x in per):>24} "
          f"{statistics.median(ratios):8.2f} {med(s, 'p50_ms'):7.2f} {med(s, 'p99_ms'):7.2f} "
          f"{med(s, 'server_cpu_us'):7.0f} {med(s, 'machine_idle_pct'):7.1f}")
# The line a commit that touches the PUT path carries (tests/bench/guard.sh): B to A of the same
# round, PUT/s and CPU per PUT, median over the rounds.
parts = []
for kind in ("single", "cluster"):
    a, b = by.get("a-" + kind), by.get("b-" + kind)
    if not a or not b:
        continue
    rps = [y["rps"] / x["rps"] for x, y in zip(a, b)]
    cpu = [y["server_cpu_us"] / max(x["server_cpu_us"], 1e-9) for x, y in zip(a, b)]
    # Both ratios are medians of the per-round ratios; the µs are each build's own median, which
    # need not divide to that ratio.
    parts.append(f"{kind} PUT/s {statistics.median(rps):.2f} (rounds "
                 f"{' '.join(f'{r:.2f}' for r in rps)}), CPU per PUT {statistics.median(cpu):.2f} "
                 f"(rounds {' '.join(f'{r:.2f}' for r in cpu)}; medians "
                 f"{med('a-' + kind, 'server_cpu_us'):.0f} -> {med('b-' + kind, 'server_cpu_us'):.0f} us)")
if not parts:
    sys.exit("ab: no round of A and B to compare")
print(f"B/A over {len(runs) // len(by)} rounds: " + "; ".join(parts))
PY
