#!/usr/bin/env bash
# A/B benchmark of the UDP answer path with response rate limiting on: two pkraft builds, one
# single node each, in interleaved rounds (A then B, BENCH_RUNS times). The RRL limits (per
# network and global) are set far above the load, so every answer pays for the limits' common
# path (the buckets' updates) and none is refused: what the limits cost when nobody abuses
# them. The other limits are as shipped; the stored keys go in from an exempt address.
#
#   BENCH_A=/path/to/bin-dir-a BENCH_B=/path/to/bin-dir-b tests/bench/dns_ab.sh
#
# Each bin dir holds a release `pkraft`; A's `pkraft-bench` makes the data. dnsperf (20
# clients, 15 s) asks for the 20,000 stored keys. Prints `A <q/s>` / `B <q/s>` per round and the
# medians with their ratio. Env: BENCH_RUNS (3). Results: docs/BENCHMARKS.md ("Fair shares").
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh
a_dir=${BENCH_A:?BENCH_A: bin dir of build A}
b_dir=${BENCH_B:?BENCH_B: bin dir of build B}
runs=${BENCH_RUNS:-3}
# loopback_port and friends use it; this checkout may have no build of its own.
export PKRAFT_BENCH=${PKRAFT_BENCH:-$a_dir/pkraft-bench}
command -v dnsperf >/dev/null || { echo "dns_ab: dnsperf missing (apt install dnsperf)" >&2; exit 1; }
work=$(mktemp -d)
pid=
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
bench=$a_dir/pkraft-bench origin=pkarr.test
"$bench" gen --keys 20000 --versions 1 --out "$work/data.bin" 2>/dev/null
"$bench" queries --data "$work/data.bin" --origin "$origin" --version 0 \
  --queries "$work/queries.txt" --zone "$work/zone" 2>/dev/null
limits='[dns.rrl]
responses_per_second = 100000000
burst = 100000000
global_responses_per_second = 100000000
global_responses_burst = 200000000
global_bytes_per_second = 4000000000
global_bytes_burst = 4000000000
[rate_limit]
exempt_publishers = ["127.0.0.0/8"]'
round() {  # NAME BIN_DIR: one node, the keys stored, one dnsperf run; prints NAME q/s
  local name=$1 dir=$2 http dns
  http=$(loopback_port) dns=$(loopback_port)
  rm -rf "$work/data-$name"
  PKRAFT_EXTRA_TOML="$limits" single_node_config "$work/$name.toml" "$work/data-$name" \
    "127.0.0.1:$http" "127.0.0.1:$dns"
  RUST_LOG=warn setsid "$dir/pkraft" serve --config "$work/$name.toml" >"$work/$name.log" 2>&1 &
  pid=$!
  local up=no
  for _ in $(seq 150); do
    curl -sf "http://127.0.0.1:$http/healthz" >/dev/null && { up=yes; break; }
    sleep 0.2
  done
  [ "$up" = yes ] || { echo "dns_ab: $name did not come up ($work/$name.log)" >&2; exit 1; }
  "$bench" put --data "$work/data.bin" --version 0 --url "http://127.0.0.1:$http/pkarr" \
    --concurrency 32 >"$work/seed.json"
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))["status"]; sys.exit(0 if list(s)==["204"] else f"dns_ab: seeding {sys.argv[2]}: {s}")' \
    "$work/seed.json" "$name"
  dnsperf -m udp -s 127.0.0.1 -p "$dns" -d "$work/queries.txt" -c 20 -l 15 2>&1 |
    awk -v name="$name" '/Queries per second/ {print name, $4}'
  kill "$pid"; wait "$pid" 2>/dev/null || true
  pid=
}
# Not in a pipe: `round` must run in this shell, whose cleanup stops the node it started.
for _ in $(seq "$runs"); do
  round A "$a_dir" >>"$work/rounds.txt"
  round B "$b_dir" >>"$work/rounds.txt"
done
cat "$work/rounds.txt"
python3 - "$work/rounds.txt" <<'PY'
import statistics, sys
qps = {"A": [], "B": []}
for line in open(sys.argv[1]):
    name, value = line.split()
    qps[name].append(float(value))
a, b = statistics.median(qps["A"]), statistics.median(qps["B"])
print(f"median q/s: A {a:,.0f}, B {b:,.0f}; B/A {b / a:.3f}")
PY
