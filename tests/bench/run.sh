#!/usr/bin/env bash
# Side-by-side benchmark of pkraft against iroh-dns-server, NSD and Knot DNS on loopback:
# `make bench`.
# Writes the results into docs/BENCHMARKS.md (between the bench:results markers).
#
#   tests/bench/run.sh full    # pkraft vs iroh-dns-server vs NSD vs Knot, BENCH_RUNS (3) interleaved rounds
#   tests/bench/run.sh smoke   # pkraft only, tiny counts, report to stdout (CI)
#
# Every system gets the same signed packets (pkraft-bench gen) and the same query file. Rounds
# are interleaved and alternate which system goes first, every run starts and ends with the
# servers idle (iroh-dns-server commits on a 1 s timer after it answers), and the raw results are
# kept in target/bench-results-<mode>.jsonl. Method: docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/nsd.sh
source tests/lib/nsd.sh
# shellcheck source=tests/lib/knot.sh
source tests/lib/knot.sh
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh
# All load comes from one loopback address: pkraft runs with its abuse limits off, as
# iroh-dns-server runs with its rate limit disabled (docs/BENCHMARKS.md, "Method").
PKRAFT_EXTRA_TOML=$(limits_off_toml)

mode=${1:-full}
case "$mode" in
  full)
    runs=${BENCH_RUNS:-3} keys=${BENCH_KEYS:-20000} get_requests=${BENCH_GETS:-100000}
    dns_seconds=${BENCH_DNS_SECONDS:-10} dns_latency_seconds=5 lag_samples=${BENCH_LAG_SAMPLES:-200}
    failover_trials=${BENCH_FAILOVER_TRIALS:-20} restart_rounds=${BENCH_RESTART_ROUNDS:-3}
    gap_writers=4 gap_seconds=3
    bin_dir=${BENCH_BIN_DIR:-target/release} peers=yes idle_seconds=10 ;;
  smoke)
    runs=1 keys=800 get_requests=2000 dns_seconds=2 dns_latency_seconds=1 lag_samples=20
    failover_trials=1 restart_rounds=1 gap_writers=1 gap_seconds=2
    bin_dir=${BENCH_BIN_DIR:-target/debug} peers=no
    # The debug build's nodes did not once fall under wait_idle's 1 tick in 0.5 s in CI (26 waits
    # of 10 s at e8f13fd), so the smoke, whose numbers mean nothing, waits up to 1 s before each
    # step.
    idle_seconds=1 ;;
  *) echo "usage: $0 full|smoke" >&2; exit 2 ;;
esac
concurrency=64
dns_clients=20
origin=pkarr.test
iroh_version=$iroh_dns_server_version
iroh_bin=$(iroh_dns_server_bin)

work=$(mktemp -d)
pids=()
cleanup() {
  # Each server leads its own process group (setsid): stop the whole group, politely first.
  stop_process_groups "${pids[@]}"
  cluster_down "$work/cluster"
  rm -rf "$work"
}
trap cleanup EXIT
log() { echo "bench: $*" >&2; }
fail() {
  log "FAIL: $*"
  print_log_tails "$work"
  exit 1
}
need() { command -v "$1" >/dev/null || fail "$1 is missing (Debian package $2)"; }
need dnsperf dnsperf
need python3 python3
need curl curl
need setsid util-linux
need pgrep procps
# The DNS peers only in full mode: the smoke (CI) runs pkraft alone and needs neither.
if [ "$peers" = yes ]; then need nsd nsd; need knotd knot; need dig bind9-dnsutils; fi

# --- binaries ------------------------------------------------------------------------------
pkraft="$bin_dir/pkraft"
bench="$bin_dir/pkraft-bench"
[ -x "$pkraft" ] && [ -x "$bench" ] || fail "$pkraft or $bench not built"
if [ "$peers" = yes ]; then install_iroh_dns_server; fi

# --- helpers -------------------------------------------------------------------------------
alive() { kill -0 "$1" 2>/dev/null; }
wait_until_up() {  # $1 = name, $2 = pid, rest = probe command; up to 30 s
  local name=$1 pid=$2; shift 2
  for _ in $(seq 1 300); do
    alive "$pid" || fail "$name exited during start"
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  fail "$name did not answer within 30 s"
}

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
ticks_per_s=$(getconf CLK_TCK)
machine_ticks() { awk '/^cpu / {print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat; }  # total idle

# Per system: its processes (the cluster has three), its HTTP base URLs and DNS ports (one per
# node), all space-separated.
# doh_port: the HTTPS port of a system that serves DNS-over-HTTPS (dnsperf does not check the
# certificate: pkraft's is the test certificate, iroh-dns-server makes a self-signed one).
declare -A http_url dns_port doh_port pid_of
# shellcheck disable=SC2086  # pid_of holds several PIDs for the cluster, split on purpose
cpu_ticks() { process_group_ticks ${pid_of[$1]}; }  # every process of system $1
servers_cpu() { local sum=0 s; for s in "${!pid_of[@]}"; do sum=$((sum + $(cpu_ticks "$s"))); done; echo "$sum"; }
url_args() { local u; for u in ${http_url[$1]}; do echo "--url" "$u"; done; }  # --url per node
settle() { wait_idle servers_cpu "$idle_seconds" || log "servers still busy after $idle_seconds s; measuring anyway"; }

results="$work/results.jsonl"
record() {  # $1 = system, $2 = kind, stdin = JSON object
  python3 -c 'import json,sys; d=json.load(sys.stdin); d["system"]=sys.argv[1]; d["kind"]=sys.argv[2]; print(json.dumps(d))' "$1" "$2" >>"$results"
}

# Runs one HTTP load ($1 = system, $2 = kind, rest = pkraft-bench arguments) and records it
# with the server's CPU time per request, counted until the server is idle again (so work it
# defers past its answers is included), and how idle the whole machine was during the run.
measured() {
  local system=$1 kind=$2; shift 2
  local cpu_before cpu_after machine_before machine_after
  settle
  cpu_before=$(cpu_ticks "$system")
  machine_before=$(machine_ticks)
  "$bench" "$@" >"$work/run.json"
  machine_after=$(machine_ticks)
  settle
  cpu_after=$(cpu_ticks "$system")
  python3 - "$work/run.json" "$cpu_before" "$cpu_after" "$ticks_per_s" "$machine_before" "$machine_after" <<'PY' | record "$system" "$kind"
import json, sys
d = json.load(open(sys.argv[1]))
before, after, hz = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
d["server_cpu_us"] = (after - before) * 1e6 / hz / max(d["requests"], 1)
(t0, i0), (t1, i1) = (map(int, sys.argv[5].split()), map(int, sys.argv[6].split()))
d["machine_idle_pct"] = 100.0 * (i1 - i0) / max(t1 - t0, 1)
print(json.dumps(d))
PY
}

# $1 = system, $2 = kind, $3 = port, $4 = udp|tcp|doh, then more dnsperf options: one dnsperf
# run recorded with the server's CPU time per completed query.
dns_measured() {
  local system=$1 kind=$2 port=$3 mode=$4; shift 4
  local before after
  settle
  before=$(cpu_ticks "$system")
  dnsperf_json "$port" "$mode" "$@" >"$work/dns.json"
  settle
  after=$(cpu_ticks "$system")
  python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
d["server_cpu_us"] = (int(sys.argv[3]) - int(sys.argv[2])) * 1e6 / int(sys.argv[4]) / max(d["completed"], 1)
print(json.dumps(d))' "$work/dns.json" "$before" "$after" "$ticks_per_s" | record "$system" "$kind"
}

# $1 = port, $2 = udp|tcp|doh, then more dnsperf options; prints qps, mean latency, lost,
# completed, NOERROR count
dnsperf_json() {
  local port=$1 mode=${2:-udp}; shift 2 || shift $#
  dnsperf -m "$mode" -s 127.0.0.1 -p "$port" -d "$work/queries.txt" -c "$dns_clients" -l "$dns_seconds" "$@" 2>&1 |
    python3 -c '
import json, re, sys
text = sys.stdin.read()
def num(pattern, default=None):
    m = re.search(pattern, text)
    if m: return float(m.group(1))
    if default is not None: return default
    sys.exit("dnsperf output not understood:\n" + text)
print(json.dumps({"qps": num(r"Queries per second:\s+([\d.]+)"),
                  "avg_ms": num(r"Average Latency \(s\):\s+([\d.]+)") * 1000,
                  "stddev_ms": num(r"Latency StdDev \(s\):\s+([\d.]+)") * 1000,
                  "lost": num(r"Queries lost:\s+(\d+)"),
                  "completed": num(r"Queries completed:\s+(\d+)"),
                  "noerror": num(r"Response codes:.*?NOERROR (\d+)", 0)}))'
}

# --- data ----------------------------------------------------------------------------------
versions=$((runs + 3))  # 0: initial load, 1..runs: measured PUTs, runs+1: lag, runs+2: failover
"$bench" gen --keys "$keys" --versions "$versions" --out "$work/data.bin"
"$bench" queries --data "$work/data.bin" --origin "$origin" --version 0 \
  --queries "$work/queries.txt" --zone "$work/$origin.zone"

# --- systems -------------------------------------------------------------------------------
start_pkraft() {
  local http dns https; http=$(loopback_port); dns=$(loopback_port); https=$(loopback_port)
  single_node_config "$work/pkraft.toml" "$work/pkraft-data" "127.0.0.1:$http" "127.0.0.1:$dns" \
    "origins = [\"$origin\"]" "[https]
listen = \"127.0.0.1:$https\"
cert = \"$PWD/tests/fixtures/tls/localhost.crt\"
key = \"$PWD/tests/fixtures/tls/localhost.key\""
  RUST_LOG=warn setsid "$pkraft" serve --config "$work/pkraft.toml" >"$work/pkraft.log" 2>&1 &
  pid_of[pkraft]=$!; pids+=($!)
  http_url[pkraft]="http://127.0.0.1:$http/pkarr"; dns_port[pkraft]=$dns; doh_port[pkraft]=$https
  wait_until_up pkraft "${pid_of[pkraft]}" curl -sf "http://127.0.0.1:$http/healthz"
}
start_iroh() {
  local http dns https; http=$(loopback_port); dns=$(loopback_port); https=$(loopback_port)
  iroh_dns_server_config "$work/iroh.toml" "$work/iroh-data" "$http" "$dns" "$https" "$origin"
  RUST_LOG=warn setsid "$iroh_bin" --config "$work/iroh.toml" >"$work/iroh.log" 2>&1 &
  pid_of[iroh]=$!; pids+=($!)
  http_url[iroh]="http://127.0.0.1:$http/pkarr"; dns_port[iroh]=$dns; doh_port[iroh]=$https
  wait_until_up iroh-dns-server "${pid_of[iroh]}" curl -s -o /dev/null "http://127.0.0.1:$http/"
}
# NSD twice: "nsd" at its best for this machine (`server-count` = cores, `reuseport: yes`, as
# NSD's documentation advises), and "nsd1" with one server process, as benchmarks before issue
# 21 ran it, so that the change in the ratios is visible.
start_nsd() {  # $1 = system name, $2 = server processes
  local name=$1 dns; dns=$(loopback_port)
  NSD_SERVER_COUNT=$2 nsd_setup "$work/$name" "$dns" "$origin" "$work/$origin.zone"
  setsid nsd -d -c "$work/$name/nsd.conf" >"$work/$name.log" 2>&1 &
  pid_of[$name]=$!; pids+=($!)
  dns_port[$name]=$dns
  wait_until_up "$name" "${pid_of[$name]}" dig +short +tries=1 +time=1 @127.0.0.1 -p "$dns" "$origin" SOA
}
# Knot DNS beside NSD, at its best for this machine: `udp-workers` = cores (one SO_REUSEPORT
# socket each), as many TCP workers on their own sockets, the zone loaded whole with no journal,
# DNSSEC or zone-file sync (tests/lib/knot.sh). One multi-threaded process: its pid's CPU ticks
# count all its threads. The reports set pkraft against each peer and against the best of them.
# Up when it answers the apex SOA with a record (knotd binds its port before its zone is loaded).
knot_has_soa() { dig +short +tries=1 +time=1 @127.0.0.1 -p "$1" "$origin" SOA | grep -q .; }
start_knot() {
  local dns; dns=$(loopback_port)
  KNOT_UDP_WORKERS=$(nproc) knot_setup "$work/knot" "$dns" "$origin" "$work/$origin.zone"
  setsid knotd -c "$work/knot/knot.conf" >"$work/knot.log" 2>&1 &
  pid_of[knot]=$!; pids+=($!)
  dns_port[knot]=$dns
  wait_until_up knot "${pid_of[knot]}" knot_has_soa "$dns"
}

# A 3-node pkraft cluster with the production Raft timing (config defaults): node 1 bootstraps,
# nodes 2 and 3 join through it (`pkraft-bench cluster`). Ports are fixed per node, so a killed
# node restarts on the same addresses the others know.
cluster_secret=bench-cluster-secret-not-for-production
declare -A node_pid node_admin node_http node_dns
# After a node (re)started: the cleanup stops its process group, the measurements read its pid.
cluster_started() {
  pids+=("$@"); pid_of[cluster]="${node_pid[*]}"
}
start_cluster_node() {  # $1 = node id; restarts it from its config, keeping its data dir
  RUST_LOG=warn cluster_start_node "$1" || fail "cluster node $1 did not restart"
  cluster_started "${node_pid[$1]}"
}
# Prints the leader's id once node $1 sees 3 voters, no voter change under way, every voter
# applied that membership, and the leader confirms it leads; fails after 60 s.
cluster_settled() {
  pkraft_bench cluster settled --admin "${node_admin[$1]}" --voters 3 --timeout-secs 60 ||
    fail "the cluster did not settle within 60 s"
}
start_cluster() {
  RUST_LOG=warn cluster_up "$bin_dir" "$work/cluster" 3 "$cluster_secret" --origin "$origin" ||
    fail "the cluster did not start"
  cluster_started "${node_pid[@]}"
  http_url[cluster]="${node_http[*]}"; dns_port[cluster]="${node_dns[*]}"
}

systems=(pkraft cluster)
dns_systems=(pkraft)
start_pkraft
start_cluster
if [ "$peers" = yes ]; then
  systems+=(iroh); dns_systems+=(iroh nsd nsd1 knot)
  start_iroh; start_nsd nsd "$(nproc)"; start_nsd nsd1 1; start_knot
fi

# --- load: version 0 everywhere, then interleaved measured rounds ---------------------------
for s in "${systems[@]}"; do
  # shellcheck disable=SC2046  # url_args prints one --url per node, unquoted on purpose
  "$bench" put --data "$work/data.bin" --version 0 $(url_args "$s") --concurrency "$concurrency" | record "$s" load
done
reversed() { local i; for ((i = $# ; i > 0 ; i--)); do echo "${!i}"; done; }
# Leader changes seen by the cluster's nodes (pkraft_raft_leader_changes_total, summed): any
# during the measured rounds is an election nobody asked for.
leader_changes() { leader_changes_total "${node_admin[@]}"; }
changes_before=$(leader_changes)
for r in $(seq 1 "$runs"); do
  # Alternate who goes first, so neither system always runs right after the other's load.
  if ((r % 2)); then order=("${systems[@]}"); dns_order=("${dns_systems[@]}")
  else mapfile -t order < <(reversed "${systems[@]}"); mapfile -t dns_order < <(reversed "${dns_systems[@]}"); fi
  # shellcheck disable=SC2046  # url_args prints one --url per node, unquoted on purpose
  for s in "${order[@]}"; do
    log "round $r/$runs: $s PUT"
    measured "$s" put put --data "$work/data.bin" --version "$r" $(url_args "$s") --concurrency "$concurrency"
  done
  # shellcheck disable=SC2046
  for s in "${order[@]}"; do
    log "round $r/$runs: $s GET"
    measured "$s" get get --data "$work/data.bin" $(url_args "$s") --concurrency "$concurrency" --requests "$get_requests"
  done
  for s in "${dns_order[@]}"; do
    log "round $r/$runs: $s DNS"
    dns_measured "$s" dns "${dns_port[$s]}" udp
    dns_measured "$s" dnstcp "${dns_port[$s]}" tcp
    [ -n "${doh_port[$s]:-}" ] || continue
    for method in GET POST; do
      dns_measured "$s" "doh${method,,}" "${doh_port[$s]}" doh \
        -O "doh-uri=https://localhost:${doh_port[$s]}/dns-query" -O "doh-method=$method"
    done
  done
  # Each cluster node answers DNS from its own replica: measured one node at a time.
  for n in 1 2 3; do
    log "round $r/$runs: cluster node $n DNS"
    settle
    dnsperf_json "${node_dns[$n]}" | python3 -c 'import json,sys; d=json.load(sys.stdin); d["node"]=int(sys.argv[1]); print(json.dumps(d))' "$n" |
      record cluster dns
  done
  # Latency percentiles under a closed-loop load of the same 20 clients (dnsperf has none).
  for s in "${dns_order[@]}"; do
    settle
    "$bench" dns --data "$work/data.bin" --server "127.0.0.1:${dns_port[$s]}" --origin "$origin" \
      --concurrency "$dns_clients" --seconds "$dns_latency_seconds" | record "$s" dnslat
    # And with one query outstanding: the latency of a lone query.
    settle
    "$bench" dns --data "$work/data.bin" --server "127.0.0.1:${dns_port[$s]}" --origin "$origin" \
      --concurrency 1 --seconds "$dns_latency_seconds" | record "$s" dnslat1
  done
done
echo "{\"before\": $changes_before, \"after\": $(leader_changes)}" | record cluster leader_changes
for s in "${systems[@]}"; do
  log "$s visibility lag"
  settle
  # The cluster: PUT through node 2 (usually a follower: node 1 bootstrapped the cluster), then
  # watch every node's DNS.
  put_url=${http_url[$s]%% *}; [ "$s" = cluster ] && put_url=${node_http[2]}
  dns_args=(); for port in ${dns_port[$s]}; do dns_args+=(--dns "127.0.0.1:$port"); done
  "$bench" lag --data "$work/data.bin" --version $((runs + 1)) --put-url "$put_url" \
    "${dns_args[@]}" --origin "$origin" --samples "$lag_samples" | record "$s" lag
done
for s in "${dns_systems[@]}"; do
  echo "{\"rss_kib\": $(rss_kib "${pid_of[$s]}"), \"hwm_kib\": $(hwm_kib "${pid_of[$s]}")}" | record "$s" memory
done
for n in 1 2 3; do
  echo "{\"node\": $n, \"rss_kib\": $(rss_kib "${node_pid[$n]}"), \"hwm_kib\": $(hwm_kib "${node_pid[$n]}")}" | record cluster memory
done

# --- failover: SIGKILL the cluster's leader, time the first PUT a survivor accepts ------------
# Each trial PUTs a packet never stored before (version runs+2 of key t), so only a commit
# through a new leader can answer 204. The killed node restarts and the cluster settles first.
for t in $(seq 1 "$failover_trials"); do
  settle
  leader=$(cluster_settled 1)
  survivor=$(( leader % 3 + 1 ))
  log "failover $t/$failover_trials: SIGKILL leader node $leader, PUT through node $survivor"
  kill -KILL -- "-${node_pid[$leader]}"
  killed_at=$(date +%s%3N)
  "$bench" accept --data "$work/data.bin" --version $((runs + 2)) --key $((t - 1)) \
    --url "${node_http[$survivor]}" --timeout-secs 30 --since-unix-ms "$killed_at" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); d["killed"]=int(sys.argv[1]); print(json.dumps(d))' "$leader" |
    record cluster failover || fail "failover trial $t: no PUT accepted through node $survivor"
  start_cluster_node "$leader"
  cluster_settled "$survivor" >/dev/null
done

# --- rolling restart under write load: SIGTERM each node in turn ------------------------------
# A steady stream of new PUTs through the two other nodes runs while a node stops (SIGTERM, so
# a leader hands its leadership over first) and records the longest run without a 204; the node
# restarts and the cluster settles before the next one stops. Keys after the failover trials'.
gap_key=$failover_trials
for r in $(seq 1 "$restart_rounds"); do
  for n in 1 2 3; do
    settle
    leader=$(cluster_settled "$n")
    urls=(); for m in 1 2 3; do [ "$m" = "$n" ] || urls+=(--url "${node_http[$m]}"); done
    log "rolling restart $r/$restart_rounds: SIGTERM node $n (leader: node $leader) under writes"
    "$bench" gaps --data "$work/data.bin" --version $((runs + 2)) --first-key "$gap_key" \
      "${urls[@]}" --concurrency "$gap_writers" --seconds "$gap_seconds" >"$work/gaps.json" &
    gaps_pid=$!
    sleep 1
    kill -TERM "${node_pid[$n]}"
    wait_exited "${node_pid[$n]}" || fail "node $n did not exit within 30 s of SIGTERM"
    wait "$gaps_pid" || fail "rolling restart $r: the write stream failed"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["node"]=int(sys.argv[2]); d["leader"]=sys.argv[2]==sys.argv[3]; print(json.dumps(d))' \
      "$work/gaps.json" "$n" "$leader" | record cluster restart
    gap_key=$((gap_key + $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["keys_used"])' "$work/gaps.json")))
    start_cluster_node "$n"
    cluster_settled "$n" >/dev/null
  done
done

# --- report ---------------------------------------------------------------------------------
# Keep the raw results, so a report can be made again without measuring again.
mkdir -p target
cp "$results" "target/bench-results-$mode.jsonl"
versions_json=$(python3 -c 'import json,sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' \
  pkraft "$(git describe --always --dirty 2>/dev/null || echo unknown)" \
  iroh-dns-server "$iroh_version ($(iroh_dns_server_build))" \
  nsd "$( (command -v nsd >/dev/null && nsd -v 2>&1 || echo "NSD not run") | head -1)" \
  knot "$( (command -v knotd >/dev/null && knotd -V 2>&1 || echo "Knot DNS not run") | head -1)" \
  dnsperf "$(dnsperf -h 2>&1 | grep -m1 Version | sed 's/^Version/dnsperf/' || true)" \
  rustc "$(rustc --version)" \
  cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
  cores "$(nproc)" kernel "$(uname -r)" date "$(date -u +%Y-%m-%dT%H:%MZ)" \
  build "$(basename "$bin_dir")")
params_json=$(python3 -c 'import json,sys; print(json.dumps({k: (v if k == "mode" else int(v)) for k, v in zip(sys.argv[1::2], sys.argv[2::2])}))' \
  mode "$mode" runs "$runs" keys "$keys" concurrency "$concurrency" get_requests "$get_requests" \
  dns_seconds "$dns_seconds" dns_latency_seconds "$dns_latency_seconds" dns_clients "$dns_clients" \
  lag_samples "$lag_samples" failover_trials "$failover_trials" restart_rounds "$restart_rounds")
if [ "$mode" = full ]; then
  python3 tests/bench/report.py "$results" "$versions_json" "$params_json" --update docs/BENCHMARKS.md
  log "results written to docs/BENCHMARKS.md"
else
  python3 tests/bench/report.py "$results" "$versions_json" "$params_json"
fi
