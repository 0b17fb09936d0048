#!/usr/bin/env bash
# Abuse scenarios against one release node with the default limits: the node's memory and CPU
# under each, the abuser's throughput, and what a legitimate client (another loopback address)
# gets meanwhile. Method and results: docs/TESTING.md, "Abuse scenarios".
#
# usage: tests/bench/abuse.sh BIN_DIR   (BIN_DIR holds release pkraft and pkraft-bench)
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh

bin=${1:?usage: abuse.sh BIN_DIR}
pkraft=$bin/pkraft bench=$bin/pkraft-bench
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

http=$(loopback_port) dns=$(loopback_port)
# The defaults, plus one trusted proxy address for the rotating-client scenario.
single_node_config "$work/pkraft.toml" "$work/data" "127.0.0.1:$http" "127.0.0.1:$dns" "" \
  '[rate_limit]
trusted_proxies = ["127.0.0.3"]'
RUST_LOG=warn,pkraft=info "$pkraft" serve --config "$work/pkraft.toml" >"$work/pkraft.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$http/healthz" >/dev/null && break; sleep 0.1; done
admin=$(grep -o 'admin=[0-9.:]*' "$work/pkraft.log" | head -1 | cut -d= -f2)
url="http://127.0.0.1:$http/pkarr"

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
metric() { curl -s "http://$admin/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
# sample_rss FILE: the node's RSS every 100 ms into FILE until killed.
sample_rss() { while true; do rss_kib >>"$1"; sleep 0.1; done; }

# scenario NAME: starts measuring; end_scenario prints the node's side as one JSON line.
scenario() {
  name=$1; rss_before=$(rss_kib); ticks_before=$(cpu_ticks); started=$(date +%s.%N)
  : >"$work/rss"; sample_rss "$work/rss" & sampler=$!
}
end_scenario() {
  kill "$sampler"; wait "$sampler" 2>/dev/null || true
  local peak
  peak=$(sort -n "$work/rss" | tail -1)
  awk -v name="$name" -v before="$rss_before" -v peak="${peak:-0}" -v after="$(rss_kib)" \
    -v ticks="$(( $(cpu_ticks) - ticks_before ))" -v hz="$(getconf CLK_TCK)" \
    -v started="$started" -v now="$(date +%s.%N)" 'BEGIN {
      elapsed = now - started
      printf "{\"scenario\": \"%s\", \"node\": {\"rss_before_mib\": %.1f, \"rss_peak_mib\": %.1f, \"rss_after_mib\": %.1f, \"cpu_percent\": %.0f, \"seconds\": %.1f}}\n",
        name, before / 1024, peak / 1024, after / 1024, ticks / hz / elapsed * 100, elapsed
    }'
}

"$bench" gen --keys 50000 --versions 1 --seed 1 --out "$work/flood.bin" 2>/dev/null
"$bench" gen --keys 300 --versions 1 --seed 2 --out "$work/legit.bin" 2>/dev/null
"$bench" queries --data "$work/legit.bin" --origin pkarr.test --queries "$work/queries.txt" \
  --zone "$work/zone"
echo "{\"scenario\": \"idle\", \"node\": {\"rss_kib\": $(rss_kib)}}"

# 1. One client floods PUTs (64 connections, 50,000 packets) while another publishes 300.
scenario put-flood
"$bench" put --data "$work/flood.bin" --version 0 --url "$url" --concurrency 64 \
  --source 127.0.0.2 >"$work/flood.json" &
flood=$!
"$bench" put --data "$work/legit.bin" --version 0 --url "$url" --concurrency 1 \
  --source 127.0.0.1 >"$work/legit.json"
wait "$flood"
end_scenario
echo "{\"scenario\": \"put-flood\", \"abuser\": $(cat "$work/flood.json"), \"legitimate\": $(cat "$work/legit.json")}"

# 2. A million distinct clients through the trusted proxy (each GET claims another address).
scenario million-clients
"$bench" get --data "$work/legit.bin" --url "$url" --concurrency 32 --requests 1000000 \
  --source 127.0.0.3 --distinct-forwarded-for >"$work/million.json"
end_scenario
echo "{\"scenario\": \"million-clients\", \"abuser\": $(cat "$work/million.json"), \"tracked_clients\": $(metric 'pkraft_http_rate_limit_tracked_clients{class="resolve"}')}"

# 3. A UDP flood from one address (queries sent as fast as the socket takes them, 10 s) while
#    another network asks 100 queries a second (one at a time, 10 ms apart).
scenario udp-flood
"$bench" udp-flood --data "$work/legit.bin" --server "127.0.0.1:$dns" --seconds 10 \
  --source 127.0.0.1 >"$work/udp-flood.json" &
flood=$!
"$bench" dns --data "$work/legit.bin" --server "127.0.0.1:$dns" --concurrency 1 --seconds 10 \
  --interval-ms 10 --source 127.1.0.1 >"$work/dns-legit.json"
wait "$flood"
end_scenario
echo "{\"scenario\": \"udp-flood\", \"abuser\": $(cat "$work/udp-flood.json"), \"slipped\": $(metric pkraft_dns_rrl_slipped_total), \"dropped\": $(metric pkraft_dns_rrl_dropped_total), \"legitimate\": $(cat "$work/dns-legit.json")}"

# 4. Slowloris: 2,000 half-sent requests from 8 addresses while a client GETs 1,500 times (within
#    its own rate limit's burst).
scenario slowloris
"$bench" slowloris --target "127.0.0.1:$http" --connections 2000 --sources 8 --trickle-ms 500 \
  --seconds 20 >"$work/slowloris.json" &
flood=$!
sleep 2
"$bench" get --data "$work/legit.bin" --url "$url" --concurrency 4 --requests 1500 \
  --source 127.0.0.1 >"$work/get-legit.json"
wait "$flood"
end_scenario
echo "{\"scenario\": \"slowloris\", \"abuser\": $(cat "$work/slowloris.json"), \"legitimate\": $(cat "$work/get-legit.json")}"
