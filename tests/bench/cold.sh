#!/usr/bin/env bash
# DNS names never asked before, pkraft against NSD, Knot DNS and iroh-dns-server 1.4.1:
# `make bench-cold` (also run by `make bench`).
#
# For each store size in BENCH_COLD_KEYS (default "200000 1000000"): the same signed packets go
# to a fresh pkraft node and a fresh iroh-dns-server through their relays, and into the zone
# file that NSD and Knot both serve. Then BENCH_ROUNDS (3) interleaved rounds, the order
# alternating: in round r every server gets the same slice r of the names (`_iroh.<z32>` TXT,
# each name once in the whole run, the same order for all), through `dnsperf -n 1 -c 20`. So
# no answer comes from a cache of answers or records filled by an earlier query: every one is a
# cold lookup of a stored key. Reported per server: q/s, and server CPU per query (utime +
# stime over the run).
#
# NSD runs at its best on this machine: `server-count` = cores with `reuseport: yes`; so does
# Knot DNS (knotd): `udp-workers` = cores, the zone loaded whole, no journal, DNSSEC or
# zone-file sync (tests/lib/knot.sh). The summary sets pkraft against each and against the
# better of the two for each measure (by median). iroh-dns-server answers from its store with
# its own caches, as pkraft does.
#
# Env: BENCH_BIN (dir with release pkraft and pkraft-bench), BENCH_BASE_BIN (optional: a dir
# with another pkraft build, measured alongside as "base", for a before/after), BENCH_COLD_KEYS,
# BENCH_ROUNDS, BENCH_COLD_IROH (default 1; 0 leaves iroh-dns-server out, for a machine where
# `make bench` has not installed it), PKRAFT_BENCH_CACHE (where `make bench` installed
# iroh-dns-server). Needs nsd (Debian package nsd), knotd (knot), dnsperf, dig
# (bind9-dnsutils). Raw results: target/bench-results-cold.jsonl; a summary table on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/nsd.sh
source tests/lib/nsd.sh
# shellcheck source=tests/lib/knot.sh
source tests/lib/knot.sh
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh
PKRAFT_EXTRA_TOML=$(limits_off_toml)

bin=${BENCH_BIN:-target/release}
rounds=${BENCH_ROUNDS:-3}
sizes=${BENCH_COLD_KEYS:-200000 1000000}
clients=20
iroh_bin=$(iroh_dns_server_bin)
origin=pkarr.test
iroh=${BENCH_COLD_IROH:-1}
need_bins cold "$bin"
if [ "$iroh" != 0 ] && [ ! -x "$iroh_bin" ]; then
  echo "cold: $iroh_bin is missing (make bench installs it; BENCH_COLD_IROH=0 leaves it out)" >&2
  exit 2
fi
for tool in dnsperf:dnsperf nsd:nsd knotd:knot dig:bind9-dnsutils pgrep:procps; do
  command -v "${tool%%:*}" >/dev/null || { echo "cold: ${tool%%:*} is missing (Debian package ${tool#*:})" >&2; exit 2; }
done

work=$(mktemp -d)
pids=()
cleanup() {
  stop_process_groups "${pids[@]}"
  rm -rf "$work"
}
trap cleanup EXIT
log() { echo "cold: $*" >&2; }
fail() { log "FAIL: $*"; print_log_tails "$work"; exit 1; }
results=target/bench-results-cold.jsonl
mkdir -p target
: >"$results"

declare -A pid_of dns_port
# Up to $1 seconds until `dig` gets the apex SOA from port $2 (NSD compiles a big zone first,
# Knot loads it with its port already bound).
wait_dns() {
  local seconds=$1 port=$2 pid=$3 name=$4
  for _ in $(seq 1 $((seconds * 10))); do
    kill -0 "$pid" 2>/dev/null || fail "$name exited during start"
    dig +short +tries=1 +time=1 @127.0.0.1 -p "$port" "$origin" SOA | grep -q . && return 0
    sleep 0.1
  done
  fail "$name did not answer within $seconds s"
}

start_pkraft() {  # $1 = system name, $2 = binary, $3 = keys: a fresh node loaded with data.bin
  local name=$1 binary=$2 keys=$3 http dns
  http=$(loopback_port); dns=$(loopback_port)
  single_node_config "$work/$name.toml" "$work/$name-data-$keys" "127.0.0.1:$http" "127.0.0.1:$dns"
  RUST_LOG=warn setsid "$binary" serve --config "$work/$name.toml" >"$work/$name.log" 2>&1 &
  pid_of[$name]=$!; pids+=($!); dns_port[$name]=$dns
  disown "$!"  # stopped with SIGKILL if slow to exit: no "Killed" job notice from bash
  wait_dns 30 "$dns" "${pid_of[$name]}" "$name"
  log "$keys keys: loading $name"
  "$bin/pkraft-bench" put --data "$work/data.bin" --version 0 --url "http://127.0.0.1:$http/pkarr" \
    --concurrency 64 >"$work/load-$name.json"
}

systems=(pkraft nsd knot)
[ "$iroh" = 0 ] || systems+=(iroh)
[ -z "${BENCH_BASE_BIN:-}" ] || systems+=(base)
start_servers() {  # $1 = keys: fresh pkraft, iroh-dns-server, NSD and Knot, loaded with data.bin
  local keys=$1 http dns https
  start_pkraft pkraft "$bin/pkraft" "$keys"
  [ -z "${BENCH_BASE_BIN:-}" ] || start_pkraft base "$BENCH_BASE_BIN/pkraft" "$keys"

  if [ "$iroh" != 0 ]; then
    http=$(loopback_port); dns=$(loopback_port); https=$(loopback_port)
    iroh_dns_server_config "$work/iroh.toml" "$work/iroh-data-$keys" "$http" "$dns" "$https" "$origin"
    RUST_LOG=warn setsid "$iroh_bin" --config "$work/iroh.toml" >"$work/iroh.log" 2>&1 &
    pid_of[iroh]=$!; pids+=($!); dns_port[iroh]=$dns
    wait_dns 30 "$dns" "${pid_of[iroh]}" iroh-dns-server
    log "$keys keys: loading iroh-dns-server"
    "$bin/pkraft-bench" put --data "$work/data.bin" --version 0 --url "http://127.0.0.1:$http/pkarr" \
      --concurrency 64 >"$work/load-iroh.json"
  fi

  dns=$(loopback_port)
  NSD_SERVER_COUNT=$(nproc) nsd_setup "$work/nsd-$keys" "$dns" "$origin" "$work/$origin.zone"
  setsid nsd -d -c "$work/nsd-$keys/nsd.conf" >"$work/nsd.log" 2>&1 &
  pid_of[nsd]=$!; pids+=($!); dns_port[nsd]=$dns
  wait_dns 600 "$dns" "${pid_of[nsd]}" nsd

  dns=$(loopback_port)
  KNOT_UDP_WORKERS=$(nproc) knot_setup "$work/knot-$keys" "$dns" "$origin" "$work/$origin.zone"
  setsid knotd -c "$work/knot-$keys/knot.conf" >"$work/knot.log" 2>&1 &
  pid_of[knot]=$!; pids+=($!); dns_port[knot]=$dns
  wait_dns 600 "$dns" "${pid_of[knot]}" knot
}

# CPU ticks of every process of system $1 (NSD forks its servers into its process group; knotd
# is one process, whose ticks count all its threads).
system_ticks() { process_group_ticks "${pid_of[$1]}"; }
all_ticks() { local sum=0 s; for s in "${systems[@]}"; do sum=$((sum + $(system_ticks "$s"))); done; echo "$sum"; }
reversed() { local i; for ((i = $# ; i > 0 ; i--)); do echo "${!i}"; done; }

for keys in $sizes; do
  log "$keys keys: signing packets"
  "$bin/pkraft-bench" gen --keys "$keys" --versions 1 --out "$work/data.bin"
  "$bin/pkraft-bench" queries --data "$work/data.bin" --origin "$origin" --version 0 \
    --queries "$work/queries.txt" --zone "$work/$origin.zone"
  slice=$((keys / rounds))
  start_servers "$keys"
  # The loads leave GBs of dirty pages (two pkraft stores, the zone's compiled forms) that the
  # kernel writes back over the next seconds, on the same 2 cores: without this the first
  # system measured in round 1 (pkraft, unless BENCH_BASE_BIN swaps the builds) paid for them
  # (2026-12-02: whichever build came first in round 1 ran at 60-78k q/s, the one last at
  # 110-125k; docs/BENCHMARKS.md, "The warm-up after installs and writes").
  sync
  for r in $(seq 1 "$rounds"); do
    sed -n "$(( (r - 1) * slice + 1 )),$(( r * slice ))p" "$work/queries.txt" >"$work/slice.txt"
    if ((r % 2)); then order=("${systems[@]}"); else mapfile -t order < <(reversed "${systems[@]}"); fi
    for s in "${order[@]}"; do
      wait_idle all_ticks || log "servers still busy after 10 s; measuring anyway"
      t0=$(system_ticks "$s")
      dnsperf -s 127.0.0.1 -p "${dns_port[$s]}" -d "$work/slice.txt" -n 1 -c "$clients" \
        >"$work/dnsperf.txt" 2>&1 || fail "dnsperf against $s: $(tail -3 "$work/dnsperf.txt")"
      wait_idle all_ticks || true
      t1=$(system_ticks "$s")
      python3 - "$work/dnsperf.txt" "$t0" "$t1" "$(getconf CLK_TCK)" "$s" "$keys" "$r" >>"$results" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
def num(pattern):
    m = re.search(pattern, text)
    if not m:
        sys.exit("dnsperf output not understood:\n" + text)
    return float(m.group(1))
t0, t1, hz = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
completed = num(r"Queries completed:\s+(\d+)")
print(json.dumps({"system": sys.argv[5], "keys": int(sys.argv[6]), "round": int(sys.argv[7]),
                  "qps": num(r"Queries per second:\s+([\d.]+)"),
                  "completed": completed, "lost": num(r"Queries lost:\s+(\d+)"),
                  "noerror": num(r"NOERROR (\d+)") if "NOERROR" in text else 0,
                  "avg_ms": num(r"Average Latency \(s\):\s+([\d.]+)") * 1000,
                  "cpu_us_per_query": (t1 - t0) * 1e6 / hz / max(completed, 1)}))
PY
      log "$keys keys, round $r/$rounds: $(tail -n 1 "$results")"
    done
  done
  # Memory after the rounds, of the single-process servers (NSD's forked servers share pages;
  # knotd is one process).
  for s in "${systems[@]}"; do
    [ "$s" = nsd ] && continue
    awk -v s="$s" -v k="$keys" '/^VmRSS/ {rss = $2} /^VmHWM/ {hwm = $2}
      END {printf "{\"system\": \"%s\", \"keys\": %d, \"rss_mib\": %.1f, \"hwm_mib\": %.1f}\n", s, k, rss / 1024, hwm / 1024}' \
      "/proc/${pid_of[$s]}/status" >>"$results"
  done
  stop_process_groups "${pids[@]}"
  rm -rf "$work"/*-data-* "$work"/nsd-* "$work"/knot-*
  pids=()
done

# The summary: medians over the rounds, ratios of the medians. "best of NSD, Knot" takes for
# each measure the better median of the two (more q/s; less CPU, fewer lost), named in brackets.
python3 - "$results" <<'PY'
import json, math, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [r for r in lines if "qps" in r]
memory = {(r["system"], r["keys"]): r for r in lines if "rss_mib" in r}
NAMES = {"pkraft": "pkraft", "nsd": "NSD (cores, reuseport)", "knot": "Knot DNS (udp-workers = cores)",
         "iroh": "iroh-dns-server", "base": "base"}
present = {r["system"] for r in rows}
others = [s for s in ("nsd", "knot", "iroh", "base") if s in present]
peers = [s for s in ("nsd", "knot") if s in present]  # the servers answering from a zone file
best = len(peers) > 1
def med(system, keys, field):
    v = [r[field] for r in rows if r["system"] == system and r["keys"] == keys]
    return statistics.median(v) if v else math.nan
def ratio(a, b):
    return f"{a / b:.2f}x" if b and not math.isnan(a) and not math.isnan(b) else "-"
def show(fmt, v):
    return "-" if math.isnan(v) else fmt.format(v)
def row(cells, ratios, best_cell):
    if best:  # after the ratios to NSD and Knot
        ratios = ratios[:len(peers)] + [best_cell] + ratios[len(peers):]
    print("| " + " | ".join(cells + ratios) + " |")
head = ["pkraft / " + NAMES[s] for s in others]
row(["keys stored", "measure", "pkraft"] + [NAMES[s] for s in others], head, "pkraft / best of NSD, Knot")
print("|---" * (3 + len(others) + len(head) + best) + "|")
for keys in sorted({r["keys"] for r in rows}):
    for field, fmt in [("qps", "{:,.0f}"), ("cpu_us_per_query", "{:.1f}"), ("lost", "{:.0f}")]:
        p = med("pkraft", keys, field)
        values = {s: med(s, keys, field) for s in others}
        best_cell = ""
        if best:
            b = (max if field == "qps" else min)(peers, key=lambda s: values[s])
            best_cell = ratio(p, values[b]) + ("" if ratio(p, values[b]) == "-" else f" ({NAMES[b].split(' (')[0]})")
        row([f"{keys:,}", field, show(fmt, p)] + [show(fmt, values[s]) for s in others],
            [ratio(p, values[s]) for s in others], best_cell)
    for field in ("rss_mib", "hwm_mib"):
        p = memory.get(("pkraft", keys), {}).get(field, math.nan)
        values = {s: memory.get((s, keys), {}).get(field, math.nan) for s in others}
        # NSD's memory is not measured (its forked servers share pages): no "best of" here.
        row([f"{keys:,}", f"{field} after the rounds", show("{:,.0f}", p)] + [show("{:,.0f}", values[s]) for s in others],
            [ratio(p, values[s]) for s in others], "-")
    per_round = {s: [round(r["qps"]) for r in rows if r["system"] == s and r["keys"] == keys] for s in ["pkraft"] + others}
    print(f"\n{keys:,} keys, q/s per round: {per_round}\n")
PY
