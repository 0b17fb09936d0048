#!/usr/bin/env bash
# Memory at scale: RSS of a single pkraft node holding N stored packets (default 1,000,000),
# before and after DNS queries for every key have filled the DNS caches to their bounds
# (dns.record_cache_mib, default 64 MiB, and dns.answer_cache_mib, default 32 MiB).
# `make bench-memory`; about 5 minutes for 1M keys.
#
#   BENCH_MEMORY_KEYS=1000000 tests/bench/memory.sh [BIN_DIR]   (default target/release)
#
# Prints one JSON line: keys, RSS (KiB) after loading, after the DNS pass, the peak, and the
# state.redb size. Method and results: docs/BENCHMARKS.md ("Memory at 1M records").
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh
# The load comes from one loopback address: abuse limits off.
PKRAFT_EXTRA_TOML=$(limits_off_toml)
bin_dir=${1:-target/release}
keys=${BENCH_MEMORY_KEYS:-1000000}
pkraft="$bin_dir/pkraft" bench="$bin_dir/pkraft-bench"
[ -x "$pkraft" ] && [ -x "$bench" ] || { echo "memory: $pkraft or $bench not built" >&2; exit 1; }
command -v dnsperf >/dev/null || { echo "memory: dnsperf is missing (Debian package dnsperf)" >&2; exit 1; }
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
http=$(loopback_port) dns=$(loopback_port)
single_node_config "$work/pkraft.toml" "$work/data" "127.0.0.1:$http" "127.0.0.1:$dns"
RUST_LOG=warn "$pkraft" serve --config "$work/pkraft.toml" >"$work/pkraft.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$http/healthz" >/dev/null && break; sleep 0.1; done
rss() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
hwm() { awk '/^VmHWM/ {print $2}' "/proc/$pid/status"; }

echo "memory: signing $keys packets" >&2
"$bench" gen --keys "$keys" --versions 1 --out "$work/data.bin" >&2
echo "memory: publishing them" >&2
"$bench" put --data "$work/data.bin" --version 0 --url "http://127.0.0.1:$http/pkarr" --concurrency 64 >"$work/put.json"
"$bench" queries --data "$work/data.bin" --origin pkarr.test --version 0 \
  --queries "$work/queries.txt" --zone "$work/zone"
sleep 2
after_load=$(rss)
echo "memory: querying every key over DNS" >&2
# Enough queries to pass over every key more than once at ~80k q/s.
seconds=$(( keys / 40000 + 5 ))
dnsperf -s 127.0.0.1 -p "$dns" -d "$work/queries.txt" -c 20 -l "$seconds" >"$work/dnsperf.txt" 2>&1
sleep 2
after_dns=$(rss)
python3 - "$keys" "$after_load" "$after_dns" "$(hwm)" "$(stat -c %s "$work/data/state.redb")" \
  "$work/put.json" "$work/dnsperf.txt" <<'PY'
import json, re, sys
keys, load, dns, peak, state = (int(v) for v in sys.argv[1:6])
put = json.load(open(sys.argv[6]))
completed = re.search(r"Queries completed:\s+(\d+)", open(sys.argv[7]).read())
print(json.dumps({
    "keys": keys,
    "put_status": put["status"],
    "dns_queries": int(completed.group(1)) if completed else None,
    "rss_after_load_kib": load,
    "rss_after_dns_kib": dns,
    "peak_rss_kib": peak,
    "rss_per_key_bytes": round(dns * 1024 / keys),
    "state_redb_bytes": state,
}))
PY
