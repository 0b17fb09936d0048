#!/usr/bin/env bash
# The Mainline DHT bridge against iroh-dns-server 1.4.1 with `[mainline] enabled`, both pointed
# at the same local DHT (`pkraft-bench dht-testnet`: BENCH_DHT_NODES nodes on 127.0.0.1; nothing
# leaves loopback): `make bench-dht` (also run by `make bench`).
#
# Per round (BENCH_ROUNDS, default 3; the order of the servers alternates), each server is
# asked, one query at a time, for `_iroh.<key>` TXT of keys it has never seen:
#   found:   BENCH_DHT_FOUND keys put only to the DHT (a new set per server and round);
#   missing: BENCH_DHT_MISSING keys nobody published.
# Then the DHT is stopped and each is asked for BENCH_DHT_DOWN more unknown keys.
# Then what publishing costs a PUT: one node, BENCH_DHT_PUT_KEYS (20,000) new keys, [dht] on and
# off in interleaved rounds.
# Last, the republish sweep: one pkraft node holding BENCH_DHT_REPUBLISH_KEYS packets
# (default 1,000,000) republishes with an unbounded budget for BENCH_DHT_REPUBLISH_SECONDS;
# the rate it reaches and its CPU per put are reported (the DHT runs on the same 2 cores).
#
# Env: BENCH_DHT_TOML (more lines for pkraft's [dht] section), BENCH_DHT_PARTS (default
# resolve,putcost,republish), BENCH_DHT_REPUBLISH_KEYS=0 skips the republish part, BENCH_BIN (dir with release pkraft and pkraft-bench), PKRAFT_BENCH_CACHE (where
# `make bench` installed iroh-dns-server). Raw results: target/bench-results-dht.jsonl.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/lib/pkraft.sh
PKRAFT_EXTRA_TOML=$(limits_off_toml)

bin=${BENCH_BIN:-target/release}
rounds=${BENCH_ROUNDS:-3}
dht_nodes=${BENCH_DHT_NODES:-10}
found=${BENCH_DHT_FOUND:-30} missing=${BENCH_DHT_MISSING:-20} down=${BENCH_DHT_DOWN:-10}
republish_keys=${BENCH_DHT_REPUBLISH_KEYS:-1000000}
republish_seconds=${BENCH_DHT_REPUBLISH_SECONDS:-30}
iroh_bin=$(iroh_dns_server_bin)
origin=pkarr.test
need_bins dht "$bin"
[ -x "$iroh_bin" ] || { echo "dht: $iroh_bin is missing (make bench installs it)" >&2; exit 2; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 0.5
  kill_all "${pids[@]}"
  rm -rf "$work"
}
trap cleanup EXIT
log() { echo "dht: $*" >&2; }
fail() { log "FAIL: $*"; print_log_tails "$work"; exit 1; }
results=target/bench-results-dht.jsonl
: >"$results"

parts=",${BENCH_DHT_PARTS:-resolve,putcost,republish},"
start_testnet() {  # DATA COUNT LOG: a new testnet with COUNT keys of DATA; sets testnet_pid, bootstrap
  rm -f "$work/bootstrap.txt"
  "$bin/pkraft-bench" dht-testnet --nodes "$dht_nodes" --data "$1" --first-key 0 --count "$2" \
    --bootstrap-out "$work/bootstrap.txt" >"$work/testnet.json" 2>"$work/$3" &
  testnet_pid=$!; pids+=("$testnet_pid")
  for _ in $(seq 1 3000); do [ -s "$work/bootstrap.txt" ] && break; sleep 0.1; done
  [ -s "$work/bootstrap.txt" ] || fail "the testnet did not start within 300 s"
  bootstrap=$(awk '{printf "%s\"%s\"", (NR > 1 ? ", " : ""), $0}' "$work/bootstrap.txt")
}

if [[ "$parts" == *,resolve,* ]]; then
# Keys: the first part is put to the DHT (found sets), the rest nobody publishes.
found_total=$((rounds * 2 * found))
missing_total=$((rounds * 2 * missing + 2 * down))
"$bin/pkraft-bench" gen --keys $((found_total + missing_total)) --versions 1 --out "$work/data.bin" >/dev/null

start_testnet "$work/data.bin" "$found_total" testnet.log
log "testnet: $(cat "$work/testnet.json")"

# pkraft: one node, DHT on, the default resolve deadline (2 s).
pk_http=$(loopback_port); pk_dns=$(loopback_port)
single_node_config "$work/pkraft.toml" "$work/pkraft-data" "127.0.0.1:$pk_http" "127.0.0.1:$pk_dns" "" \
  "[dht]
enabled = true
listen = \"127.0.0.1:0\"
bootstrap = [$bootstrap]
${BENCH_DHT_TOML:-}"
RUST_LOG=warn setsid "$bin/pkraft" serve --config "$work/pkraft.toml" >"$work/pkraft.log" 2>&1 &
pids+=($!)
# iroh-dns-server, its mainline fallback on the same DHT.
ir_http=$(loopback_port); ir_dns=$(loopback_port); ir_https=$(loopback_port)
iroh_dns_server_config "$work/iroh.toml" "$work/iroh-data" "$ir_http" "$ir_dns" "$ir_https" "$origin"
sed -i '/^\[mainline\]/,$d' "$work/iroh.toml"
printf '[mainline]\nenabled = true\nbootstrap = [%s]\n' "$bootstrap" >>"$work/iroh.toml"
RUST_LOG=warn setsid "$iroh_bin" --config "$work/iroh.toml" >"$work/iroh.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$pk_http/healthz" >/dev/null && curl -s -o /dev/null "http://127.0.0.1:$ir_http/" && break
  sleep 0.1
done
# Both DHT clients join the testnet.
sleep 2

declare -A dns_of=([pkraft]=$pk_dns [iroh]=$ir_dns)
resolve() {  # SYSTEM CASE ROUND FIRST COUNT
  local out
  out=$("$bin/pkraft-bench" dht-resolve --data "$work/data.bin" --first-key "$4" --count "$5" \
    --server "127.0.0.1:${dns_of[$1]}" --origin "$origin" --timeout-ms 5000) || fail "dht-resolve $1 $2"
  echo "{\"system\":\"$1\",\"case\":\"$2\",\"round\":$3,\"report\":$out}" >>"$results"
  log "$1 $2 round $3: $out"
}

next_found=0 next_missing=$found_total
for r in $(seq 1 "$rounds"); do
  order="pkraft iroh"; [ $((r % 2)) -eq 0 ] && order="iroh pkraft"
  for system in $order; do
    resolve "$system" found "$r" "$next_found" "$found"; next_found=$((next_found + found))
    resolve "$system" missing "$r" "$next_missing" "$missing"; next_missing=$((next_missing + missing))
  done
done

# The DHT goes away.
kill -TERM "$testnet_pid"; wait "$testnet_pid" 2>/dev/null || true
for system in pkraft iroh; do
  resolve "$system" dht_down 1 "$next_missing" "$down"; next_missing=$((next_missing + down))
done
curl -sf "http://127.0.0.1:$pk_http/readyz" >/dev/null || fail "pkraft is not ready with the DHT down"
kill_all "${pids[@]}"; pids=()
fi

# --- what publishing costs the write path ---------------------------------------------------
# One node, BENCH_DHT_PUT_KEYS new keys PUT through the relay (64 clients), with [dht] publish on
# (a testnet up; the outbox notes every key and the leader puts them at the default budget)
# and with no [dht] at all, interleaved rounds; PUT/s and pkraft's CPU per PUT.
if [[ "$parts" == *,putcost,* ]]; then
put_keys=${BENCH_DHT_PUT_KEYS:-20000}
"$bin/pkraft-bench" gen --keys "$put_keys" --versions 1 --out "$work/putcost.bin" >/dev/null
start_testnet "$work/putcost.bin" 0 testnet-putcost.log
for r in $(seq 1 "$rounds"); do
  order="on off"; [ $((r % 2)) -eq 0 ] && order="off on"
  for mode in $order; do
    pc_http=$(loopback_port); pc_dns=$(loopback_port)
    more=""
    [ "$mode" = on ] && more="[dht]
enabled = true
listen = \"127.0.0.1:0\"
bootstrap = [$bootstrap]"
    rm -rf "$work/putcost-data"
    single_node_config "$work/putcost.toml" "$work/putcost-data" "127.0.0.1:$pc_http" "127.0.0.1:$pc_dns" "" "$more"
    RUST_LOG=warn setsid "$bin/pkraft" serve --config "$work/putcost.toml" >"$work/putcost.log" 2>&1 &
    pc_pid=$!
    for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$pc_http/healthz" >/dev/null && break; sleep 0.1; done
    c0=$(awk '{print $14 + $15}' "/proc/$pc_pid/stat")
    out=$("$bin/pkraft-bench" put --data "$work/putcost.bin" --version 0 \
      --url "http://127.0.0.1:$pc_http/pkarr" --concurrency 64) || fail "putcost PUTs"
    c1=$(awk '{print $14 + $15}' "/proc/$pc_pid/stat")
    kill_all "$pc_pid"
    python3 - "$out" "$c0" "$c1" "$(getconf CLK_TCK)" "$mode" "$r" >>"$results" <<'PY'
import json, sys
put = json.loads(sys.argv[1]); c0, c1, hz = map(float, sys.argv[2:5])
print(json.dumps({"case": "putcost", "mode": sys.argv[5], "round": int(sys.argv[6]),
                  "rps": round(put["rps"], 1), "p99_ms": round(put["p99_ms"], 2),
                  "cpu_ms_per_put": round((c1 - c0) / hz * 1000 / put["requests"], 4)}))
PY
    log "putcost $mode round $r: $(tail -n 1 "$results")"
  done
done
kill_all "${pids[@]}"; pids=()
fi

# --- republish rate at BENCH_DHT_REPUBLISH_KEYS stored packets ------------------------------
if [[ "$parts" == *,republish,* ]] && [ "$republish_keys" -gt 0 ]; then
log "republish: loading $republish_keys packets"
"$bin/pkraft-bench" gen --keys "$republish_keys" --versions 1 --out "$work/many.bin" >/dev/null
start_testnet "$work/many.bin" 0 testnet-republish.log
rp_http=$(loopback_port); rp_dns=$(loopback_port); rp_admin=$(loopback_port)
# Republishing only, as fast as the DHT takes it: an interval far shorter than the store needs.
single_node_config "$work/republish.toml" "$work/republish-data" "127.0.0.1:$rp_http" "127.0.0.1:$rp_dns" "" \
  "[dht]
enabled = true
listen = \"127.0.0.1:0\"
bootstrap = [$bootstrap]
publish = false
republish_interval = \"1s\"
put_rate = 1000000
puts_in_flight = 64"
sed -i "/^\[admin\]/{n;s/.*/listen = \"127.0.0.1:$rp_admin\"/}" "$work/republish.toml"
RUST_LOG=warn setsid "$bin/pkraft" serve --config "$work/republish.toml" >"$work/republish.log" 2>&1 &
rp_pid=$!; pids+=("$rp_pid")
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$rp_http/healthz" >/dev/null && break; sleep 0.1; done
put_json=$("$bin/pkraft-bench" put --data "$work/many.bin" --version 0 \
  --url "http://127.0.0.1:$rp_http/pkarr" --concurrency 64)
log "loaded: $put_json"
republished() { curl -sf "http://127.0.0.1:$rp_admin/metrics" |
  awk '/^pkraft_dht_puts_total\{kind="republish"/ {s += $2} END {print s + 0}'; }
ticks() { awk '{print $14 + $15}' "/proc/$rp_pid/stat"; }
testnet_ticks() { awk '{print $14 + $15}' "/proc/$testnet_pid/stat"; }
sleep 2
p0=$(republished); c0=$(ticks); t0=$(testnet_ticks); s0=$(date +%s.%N)
sleep "$republish_seconds"
p1=$(republished); c1=$(ticks); t1=$(testnet_ticks); s1=$(date +%s.%N)
hz=$(getconf CLK_TCK)
python3 - "$p0" "$p1" "$c0" "$c1" "$t0" "$t1" "$s0" "$s1" "$hz" "$republish_keys" >>"$results" <<'PY'
import json, sys
p0, p1, c0, c1, t0, t1, s0, s1, hz, keys = map(float, sys.argv[1:])
puts = p1 - p0
print(json.dumps({"case": "republish", "stored_keys": int(keys), "puts": int(puts),
                  "puts_per_second": round(puts / (s1 - s0), 1),
                  "pkraft_cpu_ms_per_put": round((c1 - c0) / hz * 1000 / max(puts, 1), 3),
                  "testnet_cpu_ms_per_put": round((t1 - t0) / hz * 1000 / max(puts, 1), 3)}))
PY
log "republish: $(tail -n 1 "$results")"
kill_all "${pids[@]}"; pids=()
fi

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(system, case, field):
    v = [r["report"][field] for r in rows if r.get("system") == system and r.get("case") == case]
    return statistics.median(v) if v else float("nan")
print("| case | measure | pkraft | iroh-dns-server | ratio |")
print("|---|---|---|---|---|")
for case in ["found", "missing", "dht_down"]:
    for field in ["p50_ms", "p99_ms"]:
        a, b = med("pkraft", case, field), med("iroh", case, field)
        print(f"| {case} | {field} | {a:.1f} | {b:.1f} | {a / b:.2f}x |" if b else f"| {case} | {field} | {a:.1f} | {b:.1f} | - |")
    for field in ["answered", "nxdomain", "other_rcode", "timeouts"]:
        a = sum(r["report"][field] for r in rows if r.get("system") == "pkraft" and r.get("case") == case)
        b = sum(r["report"][field] for r in rows if r.get("system") == "iroh" and r.get("case") == case)
        print(f"| {case} | {field} (sum) | {a} | {b} | |")
for mode in ["on", "off"]:
    pc = [r for r in rows if r.get("case") == "putcost" and r["mode"] == mode]
    if pc:
        print(f"\nPUT with [dht] publish {mode}: {statistics.median(r['rps'] for r in pc):.0f} PUT/s, "
              f"{statistics.median(r['cpu_ms_per_put'] for r in pc):.4f} ms CPU per PUT, "
              f"p99 {statistics.median(r['p99_ms'] for r in pc):.1f} ms (medians of {len(pc)})")
for r in rows:
    if r.get("case") == "republish":
        print(f"\nrepublish at {r['stored_keys']} keys: {r['puts_per_second']} puts/s, "
              f"pkraft {r['pkraft_cpu_ms_per_put']} ms CPU per put, testnet {r['testnet_cpu_ms_per_put']} ms")
PY
