#!/usr/bin/env bash
# Side-by-side benchmark of pkraft against iroh-dns-server and NSD on loopback: `make bench`.
# Writes the results into docs/BENCHMARKS.md (between the bench:results markers).
#
#   tests/bench/run.sh full    # pkraft vs iroh-dns-server vs NSD, BENCH_RUNS (3) interleaved rounds
#   tests/bench/run.sh smoke   # pkraft only, tiny counts, report to stdout (CI)
#
# Every system gets the same signed packets (pkraft-bench gen) and the same query file. Rounds
# are interleaved and alternate which system goes first, every run starts and ends with the
# servers idle (iroh-dns-server commits on a 1 s timer after it answers), and the raw results are
# kept in target/bench-results-<mode>.jsonl. Method: docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

mode=${1:-full}
case "$mode" in
  full)
    runs=${BENCH_RUNS:-3} keys=${BENCH_KEYS:-20000} get_requests=${BENCH_GETS:-100000}
    dns_seconds=${BENCH_DNS_SECONDS:-10} dns_latency_seconds=5 lag_samples=${BENCH_LAG_SAMPLES:-200}
    bin_dir=${BENCH_BIN_DIR:-target/release} peers=yes ;;
  smoke)
    runs=1 keys=300 get_requests=2000 dns_seconds=2 dns_latency_seconds=1 lag_samples=20
    bin_dir=${BENCH_BIN_DIR:-target/debug} peers=no ;;
  *) echo "usage: $0 full|smoke" >&2; exit 2 ;;
esac
concurrency=64
dns_clients=20
origin=pkarr.test
cache=${PKRAFT_BENCH_CACHE:-$HOME/.cache/pkraft-bench}
iroh_version=1.4.1
iroh_bin="$cache/iroh-dns-server-$iroh_version/bin/iroh-dns-server"

work=$(mktemp -d)
pids=()
cleanup() {
  # Each server leads its own process group (setsid): stop the whole group, politely first.
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
log() { echo "bench: $*" >&2; }
fail() {
  log "FAIL: $*"
  for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
  exit 1
}
need() { command -v "$1" >/dev/null || fail "$1 is missing (Debian package $2)"; }
need dnsperf dnsperf
need python3 python3
need curl curl
need setsid util-linux
if [ "$peers" = yes ]; then need nsd nsd; need dig bind9-dnsutils; fi

# --- binaries ------------------------------------------------------------------------------
pkraft="$bin_dir/pkraft"
bench="$bin_dir/pkraft-bench"
[ -x "$pkraft" ] && [ -x "$bench" ] || fail "$pkraft or $bench not built"
if [ "$peers" = yes ] && [ ! -x "$iroh_bin" ]; then
  log "installing iroh-dns-server $iroh_version into $cache (one time, several minutes)"
  CARGO_TARGET_DIR="$cache/target" cargo install iroh-dns-server --version "$iroh_version" \
    --locked --root "$cache/iroh-dns-server-$iroh_version" >&2
fi

# --- helpers -------------------------------------------------------------------------------
taken_ports=" "
free_port() {  # a port free on 127.0.0.1 for TCP and UDP, never handed out twice in this run
  local port
  while :; do
    port=$(python3 - <<'PY'
import socket
t = socket.socket(); t.bind(("127.0.0.1", 0)); port = t.getsockname()[1]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.bind(("127.0.0.1", port)); print(port)
except OSError:
    print(0)
t.close(); u.close()
PY
)
    if [ "$port" != 0 ] && [[ "$taken_ports" != *" $port "* ]]; then
      taken_ports+="$port "
      echo "$port"
      return
    fi
  done
}

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
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # utime + stime
ticks_per_s=$(getconf CLK_TCK)
machine_ticks() { awk '/^cpu / {print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat; }  # total idle

declare -A http_url dns_port pid_of
servers_cpu() { local sum=0 s; for s in "${!pid_of[@]}"; do sum=$((sum + $(cpu_ticks "${pid_of[$s]}"))); done; echo "$sum"; }
settle() {  # until every server has been idle (≤ 1 tick) for 0.5 s, at most 10 s
  local before after
  for _ in $(seq 1 20); do
    before=$(servers_cpu); sleep 0.5; after=$(servers_cpu)
    [ $((after - before)) -le 1 ] && return 0
  done
  log "servers still busy after 10 s; measuring anyway"
}

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
  cpu_before=$(cpu_ticks "${pid_of[$system]}")
  machine_before=$(machine_ticks)
  "$bench" "$@" >"$work/run.json"
  machine_after=$(machine_ticks)
  settle
  cpu_after=$(cpu_ticks "${pid_of[$system]}")
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

dnsperf_json() {  # $1 = port; prints qps, mean latency, lost, completed, NOERROR count
  dnsperf -s 127.0.0.1 -p "$1" -d "$work/queries.txt" -c "$dns_clients" -l "$dns_seconds" 2>&1 |
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
versions=$((runs + 2))  # 0: initial load, 1..runs: measured PUTs, runs+1: lag
"$bench" gen --keys "$keys" --versions "$versions" --out "$work/data.bin"
"$bench" queries --data "$work/data.bin" --origin "$origin" --version 0 \
  --queries "$work/queries.txt" --zone "$work/$origin.zone"

# --- systems -------------------------------------------------------------------------------
start_pkraft() {
  local http dns; http=$(free_port); dns=$(free_port)
  cat >"$work/pkraft.toml" <<TOML
data_dir = "$work/pkraft-data"
[http]
listen = "127.0.0.1:$http"
[dns]
listen = "127.0.0.1:$dns"
origins = ["$origin"]
[cluster]
bootstrap = true
peer_listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
TOML
  RUST_LOG=warn setsid "$pkraft" serve --config "$work/pkraft.toml" >"$work/pkraft.log" 2>&1 &
  pid_of[pkraft]=$!; pids+=($!)
  http_url[pkraft]="http://127.0.0.1:$http/pkarr"; dns_port[pkraft]=$dns
  wait_until_up pkraft "${pid_of[pkraft]}" curl -sf "http://127.0.0.1:$http/healthz"
}
start_iroh() {
  local http dns; http=$(free_port); dns=$(free_port)
  # Rate limit off (it would cap PUTs), no mainline DHT (no traffic off loopback), no metrics.
  cat >"$work/iroh.toml" <<TOML
pkarr_put_rate_limit = "disabled"
data_dir = "$work/iroh-data"
[http]
port = $http
bind_addr = "127.0.0.1"
[dns]
port = $dns
bind_addr = "127.0.0.1"
default_soa = "$origin. hostmaster.$origin. 1 3600 600 1209600 30"
default_ttl = 30
# iroh-dns-server serves its SOA from a zone rooted at "." and refuses to start without it.
origins = ["$origin.", "."]
[metrics]
disabled = true
[mainline]
enabled = false
TOML
  RUST_LOG=warn setsid "$iroh_bin" --config "$work/iroh.toml" >"$work/iroh.log" 2>&1 &
  pid_of[iroh]=$!; pids+=($!)
  http_url[iroh]="http://127.0.0.1:$http/pkarr"; dns_port[iroh]=$dns
  wait_until_up iroh-dns-server "${pid_of[iroh]}" curl -s -o /dev/null "http://127.0.0.1:$http/"
}
start_nsd() {
  local dns; dns=$(free_port)
  mkdir -p "$work/nsd"
  cp "$work/$origin.zone" "$work/nsd/"
  cat >"$work/nsd/nsd.conf" <<CONF
server:
  ip-address: 127.0.0.1@$dns
  username: ""
  chroot: ""
  zonesdir: "$work/nsd"
  database: ""
  zonelistfile: "$work/nsd/zone.list"
  pidfile: "$work/nsd/nsd.pid"
  xfrdfile: "$work/nsd/xfrd.state"
  xfrdir: "$work/nsd"
  server-count: 1
  verbosity: 0
remote-control:
  control-enable: no
zone:
  name: "$origin"
  zonefile: "$origin.zone"
CONF
  setsid nsd -d -c "$work/nsd/nsd.conf" >"$work/nsd.log" 2>&1 &
  pid_of[nsd]=$!; pids+=($!)
  dns_port[nsd]=$dns
  wait_until_up nsd "${pid_of[nsd]}" dig +short +tries=1 +time=1 @127.0.0.1 -p "$dns" "$origin" SOA
}

systems=(pkraft)
dns_systems=(pkraft)
start_pkraft
if [ "$peers" = yes ]; then
  systems+=(iroh); dns_systems+=(iroh nsd)
  start_iroh; start_nsd
fi

# --- load: version 0 everywhere, then interleaved measured rounds ---------------------------
for s in "${systems[@]}"; do
  "$bench" put --data "$work/data.bin" --version 0 --url "${http_url[$s]}" --concurrency "$concurrency" | record "$s" load
done
reversed() { local i; for ((i = $# ; i > 0 ; i--)); do echo "${!i}"; done; }
for r in $(seq 1 "$runs"); do
  # Alternate who goes first, so neither system always runs right after the other's load.
  if ((r % 2)); then order=("${systems[@]}"); dns_order=("${dns_systems[@]}")
  else mapfile -t order < <(reversed "${systems[@]}"); mapfile -t dns_order < <(reversed "${dns_systems[@]}"); fi
  for s in "${order[@]}"; do
    log "round $r/$runs: $s PUT"
    measured "$s" put put --data "$work/data.bin" --version "$r" --url "${http_url[$s]}" --concurrency "$concurrency"
  done
  for s in "${order[@]}"; do
    log "round $r/$runs: $s GET"
    measured "$s" get get --data "$work/data.bin" --url "${http_url[$s]}" --concurrency "$concurrency" --requests "$get_requests"
  done
  for s in "${dns_order[@]}"; do
    log "round $r/$runs: $s DNS"
    settle
    dnsperf_json "${dns_port[$s]}" | record "$s" dns
  done
  # Latency percentiles under a closed-loop load of the same 20 clients (dnsperf has none).
  for s in "${dns_order[@]}"; do
    settle
    "$bench" dns --data "$work/data.bin" --server "127.0.0.1:${dns_port[$s]}" --origin "$origin" \
      --concurrency "$dns_clients" --seconds "$dns_latency_seconds" | record "$s" dnslat
  done
done
for s in "${systems[@]}"; do
  log "$s visibility lag"
  settle
  "$bench" lag --data "$work/data.bin" --version $((runs + 1)) --put-url "${http_url[$s]}" \
    --dns "127.0.0.1:${dns_port[$s]}" --origin "$origin" --samples "$lag_samples" | record "$s" lag
done
for s in "${dns_systems[@]}"; do
  echo "{\"rss_kib\": $(rss_kib "${pid_of[$s]}"), \"hwm_kib\": $(hwm_kib "${pid_of[$s]}")}" | record "$s" memory
done

# --- report ---------------------------------------------------------------------------------
# Keep the raw results, so a report can be made again without measuring again.
mkdir -p target
cp "$results" "target/bench-results-$mode.jsonl"
versions_json=$(python3 -c 'import json,sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' \
  pkraft "$(git describe --always --dirty 2>/dev/null || echo unknown)" \
  iroh-dns-server "$iroh_version" \
  nsd "$( (nsd -v 2>&1 || true) | head -1)" \
  dnsperf "$(dnsperf -h 2>&1 | grep -m1 Version | sed 's/^Version/dnsperf/' || true)" \
  rustc "$(rustc --version)" \
  cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
  cores "$(nproc)" kernel "$(uname -r)" date "$(date -u +%Y-%m-%dT%H:%MZ)")
params_json=$(python3 -c 'import json,sys; print(json.dumps({k: (v if k == "mode" else int(v)) for k, v in zip(sys.argv[1::2], sys.argv[2::2])}))' \
  mode "$mode" runs "$runs" keys "$keys" concurrency "$concurrency" get_requests "$get_requests" \
  dns_seconds "$dns_seconds" dns_latency_seconds "$dns_latency_seconds" dns_clients "$dns_clients" \
  lag_samples "$lag_samples")
if [ "$mode" = full ]; then
  python3 tests/bench/report.py "$results" "$versions_json" "$params_json" --update docs/BENCHMARKS.md
  log "results written to docs/BENCHMARKS.md"
else
  python3 tests/bench/report.py "$results" "$versions_json" "$params_json"
fi
