#!/usr/bin/env bash
# Hostile clients against a 3-node release cluster (issue 34; docs/TESTING.md, "Hostile
# clients"): each attack runs for PHASE_SECONDS against the leader (the peer flood against a
# follower too) while a well-behaved client on 127.0.0.1 publishes through one follower, reads
# from the other and resolves over UDP at the leader, paced, and a baseline phase runs the same
# client with no attack. Every node starts with soft/hard RLIMIT_NOFILE 1024/4096 (it raises the
# soft one) and caps that fit it; each connection flood opens more connections than that.
# Prints one JSON line per phase: the client's numbers, leader changes, followers' delayed
# heartbeats, the target's descriptors and listener counts, and what the attack got.
#
# usage: tests/bench/hostile.sh BIN_DIR   (BIN_DIR holds release pkraft and pkraft-bench)
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh

bin=${1:?usage: hostile.sh BIN_DIR}
need_bins hostile.sh "$bin"
export PKRAFT_BENCH=$bin/pkraft-bench
phase_seconds=${PHASE_SECONDS:-20}
flood=${FLOOD_CONNECTIONS:-5000}
work=$(mktemp -d)
declare -A node_pid node_http node_dns node_admin node_https
cleanup() { cluster_down "$work/cluster"; rm -rf "$work"; }
trap cleanup EXIT

# Caps that fit 4,096 descriptors: 1,024 × 2 public listeners + 1,024 DNS TCP + 512 peer + 64
# admin + 256 reserved = 3,904.
caps=(--set http.max_connections=1024 --set dns.tcp_max_connections=1024
  --set cluster.peer_max_connections=512 --set admin.max_connections=64
  --set limits.reserved_descriptors=256)
# The well-behaved client publishes 20 new keys a second from one address for every phase: more
# than the shipped per-client new-key budget (10/s after a burst of 1,000) over the run.
caps+=(--set 'rate_limit.publish_new_keys={ per_client = { per_second = 50, burst = 1000 }, global = { per_second = 200, burst = 2000 } }')
# The UDP byte budget shipped before it was sized from what a node answers (now 50 MB/s, more
# than a node sends on this machine): 12.5 MB/s, which the UDP flood below fills.
caps+=(--set dns.rrl.global_bytes_per_second=12500000 --set dns.rrl.global_bytes_burst=25000000)
tls=$PWD/tests/fixtures/tls
# The nodes inherit the limits of the subshell that starts them; this script keeps its own.
(
  ulimit -Sn 1024
  ulimit -Hn 4096
  pkraft_bench cluster up --pkraft "$bin/pkraft" --work "$work/cluster" --nodes 3 \
    --secret hostile-bench-secret-0123456789 --taken "$(ports_taken)" \
    --https-cert "$tls/localhost.crt" --https-key "$tls/localhost.key" "${caps[@]}"
) >"$work/nodes.txt" || { echo "hostile.sh: the cluster did not start" >&2; exit 1; }
cluster_read_nodes <"$work/nodes.txt"
leader=$(cluster_leader 1)
[ -n "$leader" ] || { echo "hostile.sh: no leader" >&2; exit 1; }
followers=()
for id in 1 2 3; do [ "$id" = "$leader" ] || followers+=("$id"); done
addr() { echo "127.0.0.1:$1"; }
http_addr() { echo "${node_http[$1]}" | sed -E 's#^http://([^/]+).*#\1#'; }
peer_addr() { awk -v id="$1" '$1 == id {print $6}' "$work/nodes.txt"; }

"$bin/pkraft-bench" gen --keys 20000 --versions 1 --seed 34 --out "$work/data.bin" 2>/dev/null
# The keys the client reads: stored before any phase.
head_keys=1000
"$bin/pkraft-bench" gen --keys "$head_keys" --versions 1 --seed 34 --out "$work/stored.bin" 2>/dev/null
"$bin/pkraft-bench" put --data "$work/stored.bin" --version 0 --url "${node_http[$leader]}" \
  --concurrency 8 >/dev/null

metric() { curl -sf "http://${node_admin[$1]}/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
# The followers' gaps between heartbeats (pkraft_raft_leader_contact_gap_seconds), summed over
# both: "<gaps> <over 0.15 s> <over 0.2 s> <over 0.3 s> <over 0.5 s>". The heartbeat is 100 ms,
# and openraft's timer adds up to half of it, so gaps of up to 150 ms are normal.
gaps() {
  local id
  for id in "${followers[@]}"; do curl -sf "http://${node_admin[$id]}/metrics"; done | awk '
    $1 == "pkraft_raft_leader_contact_gap_seconds_count" { count += $2 }
    $1 ~ /^pkraft_raft_leader_contact_gap_seconds_bucket/ {
      le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le); within[le] += $2 }
    END { printf "%d %d %d %d %d\n", count, count - within["0.15"], count - within["0.2"],
      count - within["0.3"], count - within["0.5"] }'
}
# The three nodes' CPU time, in clock ticks.
cpu_ticks() { local id sum=0; for id in 1 2 3; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/${node_pid[$id]}/stat"))); done; echo "$sum"; }

phase=0
# run_phase NAME CMD...: the well-behaved client for PHASE_SECONDS while CMD (an attack, or
# `true`) runs in the background; one JSON line.
run_phase() {
  local name=$1 changes gaps_before ticks started attack_pid client
  shift
  changes=$(leader_changes_total "${node_admin[@]}")
  gaps_before=$(gaps) ticks=$(cpu_ticks) started=$(date +%s.%N)
  "$@" >"$work/attack.json" 2>"$work/attack.err" &
  attack_pid=$!
  sleep 2
  client=$("$bin/pkraft-bench" steady --data "$work/data.bin" --put-url "${node_http[${followers[0]}]}" \
    --get-url "${node_http[${followers[1]}]}" --dns "$(addr "${node_dns[$leader]}")" \
    --stored-keys "$head_keys" --first-key $((head_keys + phase * 1000)) --rate 20 \
    --seconds "$phase_seconds")
  # While the attack still holds: what the target's listeners hold.
  local fds listeners alive=true
  fds=$(metric "$leader" process_open_fds)
  listeners=$(curl -sf "http://${node_admin[$leader]}/metrics" |
    awk '/^pkraft_listener_connections\{/ {gsub(/.*listener="/, "", $1); gsub(/".*/, "", $1); printf "%s\"%s\": %s", sep, $1, $2; sep=", "}')
  # The attacker's own CPU (it shares the 2 cores with the nodes and the client).
  local attacker_ticks
  attacker_ticks=$(awk '{print $14 + $15}' "/proc/$attack_pid/stat" 2>/dev/null || echo 0)
  wait "$attack_pid" || true
  for id in 1 2 3; do kill -0 "${node_pid[$id]}" 2>/dev/null || alive=false; done
  local heartbeats cpu attack
  heartbeats=$(paste -d' ' <(echo "$gaps_before") <(gaps) | awk '{printf "{\"gaps\": %d, \"over_150ms\": %d, \"over_200ms\": %d, \"over_300ms\": %d, \"over_500ms\": %d}", $6 - $1, $7 - $2, $8 - $3, $9 - $4, $10 - $5}')
  cpu=$(awk -v t="$(( $(cpu_ticks) - ticks ))" -v hz="$(getconf CLK_TCK)" -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.0f", t / hz / (e - s) * 100 }')
  attack=$(cat "$work/attack.json" 2>/dev/null)
  echo "{\"phase\": \"$name\", \"nodes_alive\": $alive, \"leader_changes\": $(( $(leader_changes_total "${node_admin[@]}") - changes )), \"follower_heartbeat_gaps\": $heartbeats, \"nodes_cpu_percent\": $cpu, \"attacker_cpu_percent\": $(awk -v t="$attacker_ticks" -v hz="$(getconf CLK_TCK)" -v s="$phase_seconds" 'BEGIN { printf "%.0f", t / hz / (s + 2) * 100 }'), \"target_open_fds\": ${fds:-null}, \"listeners\": {$listeners}, \"client\": $client, \"attack\": ${attack:-null}}"
  phase=$((phase + 1))
  sleep 2
}

flood_for=$((phase_seconds + 4))
# The attack command itself (not a shell function), so that its pid is the attacker's.
cf=("$bin/pkraft-bench" conn-flood --seconds "$flood_for")

run_phase baseline true
# The issue's first run: one query every 5 s on each connection.
run_phase dns-tcp "${cf[@]}" --target "$(addr "${node_dns[$leader]}")" --connections "$flood" --sources 50 --block 11 --mode dns --every-ms 5000
run_phase http-slowloris "${cf[@]}" --target "$(http_addr "$leader")" --connections "$flood" --sources 50 --block 12 --mode slowloris --every-ms 500
run_phase http-silent "${cf[@]}" --target "$(http_addr "$leader")" --connections "$flood" --sources 50 --block 13 --mode silent
# A /healthz every 59 s keeps a connection from idling out (the issue's /56 case, as 20 addresses).
run_phase http-healthz "${cf[@]}" --target "$(http_addr "$leader")" --connections "$flood" --sources 20 --block 14 --mode healthz --every-ms 59000
run_phase https-silent "${cf[@]}" --target "$(addr "${node_https[$leader]}")" --connections "$flood" --sources 50 --block 15 --mode silent
run_phase admin-silent "${cf[@]}" --target "${node_admin[$leader]}" --connections "$flood" --sources 50 --block 16 --mode silent
run_phase peer-strangers-follower "${cf[@]}" --target "$(peer_addr "${followers[0]}")" --connections "$flood" --sources 50 --block 17 --mode stranger
run_phase peer-silent-follower "${cf[@]}" --target "$(peer_addr "${followers[1]}")" --connections "$flood" --sources 50 --block 18 --mode silent
run_phase peer-strangers-leader "${cf[@]}" --target "$(peer_addr "$leader")" --connections "$flood" --sources 50 --block 19 --mode stranger

# Labels: a first flood makes every series a made-up request can make; the second (100,000
# requests) must add none: /metrics and RSS grow by at most 1 %.
rss() { awk '/^VmRSS/ {print $2}' "/proc/${node_pid[$leader]}/status"; }
metrics_size() { curl -sf "http://${node_admin[$leader]}/metrics" | wc -c; }
"$bin/pkraft-bench" label-flood --target "$(http_addr "$leader")" --requests 10000 --block 20 >/dev/null
size_before=$(metrics_size) rss_before=$(rss)
run_phase labels "$bin/pkraft-bench" label-flood --target "$(http_addr "$leader")" --requests 100000 --block 21 --seed 2
echo "{\"phase\": \"labels-growth\", \"metrics_bytes_before\": $size_before, \"metrics_bytes_after\": $(metrics_size), \"rss_kib_before\": $rss_before, \"rss_kib_after\": $(rss)}"

# UDP from 10,000 networks with EDNS 4096 against a global byte budget of 12.5 MB/s (above).
bytes_before=$(metric "$leader" pkraft_dns_udp_answer_bytes_total)
run_phase udp-networks "$bin/pkraft-bench" udp-flood --data "$work/stored.bin" \
  --server "$(addr "${node_dns[$leader]}")" --seconds "$flood_for" --networks 10000 --block 100 --edns 4096
bytes_after=$(metric "$leader" pkraft_dns_udp_answer_bytes_total)
# Over the flood's own duration: what the node sent against what the budget allows in that
# time (the rate for the duration, plus the burst, plus the debt of networks within their share:
# another burst).
awk -v b="${bytes_before:-0}" -v a="${bytes_after:-0}" -v s="$flood_for" 'BEGIN {
  printf "{\"phase\": \"udp-budget\", \"seconds\": %d, \"node_answer_bytes\": %.0f, \"allowed_bytes\": %.0f, \"node_answer_bytes_per_second\": %.0f, \"budget_bytes_per_second\": 12500000}\n",
    s, a - b, 12500000 * s + 2 * 25000000, (a - b) / s }'
