#!/usr/bin/env bash
# `pkraft import` at scale: `make bench-import` (opt-in, not in CI: about 15 minutes at 1M).
# BENCH_IMPORT_KEYS packets (default 1,000,000) are PUT to the real iroh-dns-server 1.4.1,
# which is then stopped as systemd stops it (SIGTERM: its store is left as most real ones are,
# one redb repairs; pkraft import reads a repaired copy). Then BENCH_IMPORT_ROUNDS rounds
# (default 3), each into a fresh 3-node release cluster: `pkraft import` through node 2's admin
# API (the leader or a follower, as the election went), timed until its summary, then the
# records counted on every node; and the same import again (every packet already stored).
# Results go to target/bench-results-import.jsonl and a line per round on stdout
# (docs/BENCHMARKS.md, "Import from iroh-dns-server").
#
# Env: BENCH_BIN (dir with release pkraft and pkraft-bench), BENCH_IMPORT_KEYS,
# BENCH_IMPORT_ROUNDS, PKRAFT_BENCH_CACHE (where iroh-dns-server is installed once).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh

bin=${BENCH_BIN:-target/release}
keys=${BENCH_IMPORT_KEYS:-1000000}
rounds=${BENCH_IMPORT_ROUNDS:-3}
need_bins import "$bin"
export PKRAFT_BENCH="$bin/pkraft-bench"
iroh_bin=$(iroh_dns_server_bin)
work=$(mktemp -d)
# shellcheck disable=SC2034  # filled by cluster_up
declare -A node_pid node_http node_dns node_admin
iroh_pid=
cleanup() {
  [ -z "$iroh_pid" ] || kill -KILL "$iroh_pid" 2>/dev/null || true
  cluster_down "$work/cluster"
  rm -rf "$work"
}
trap cleanup EXIT
log() { echo "import: $(date +%T) $*" >&2; }
fail() { log "FAIL: $*"; print_log_tails "$work"; exit 1; }
results=target/bench-results-import.jsonl
mkdir -p target
: >"$results"
export PKRAFT_ADMIN_TOKEN=import-bench-admin-token
secret=import-bench-cluster-secret
metric() { curl -sf "http://$1/metrics" | awk -v m="$2" '$1 == m {print int($2)}'; }

install_iroh_dns_server

log "signing $keys packets"
"$bin/pkraft-bench" gen --keys "$keys" --versions 1 --seed 38 --out "$work/keys.bin" >/dev/null
http=$(loopback_port); dns=$(loopback_port); https=$(loopback_port)
iroh_dns_server_config "$work/iroh.toml" "$work/iroh-data" "$http" "$dns" "$https" pkarr.test
RUST_LOG=warn "$iroh_bin" --config "$work/iroh.toml" >"$work/iroh.log" 2>&1 &
iroh_pid=$!
for _ in $(seq 1 300); do
  curl -s -o /dev/null "http://127.0.0.1:$http/" && break
  kill -0 "$iroh_pid" 2>/dev/null || fail "iroh-dns-server exited"
  sleep 0.1
done
log "loading them into iroh-dns-server"
"$bin/pkraft-bench" put --data "$work/keys.bin" --version 0 --url "http://127.0.0.1:$http/pkarr" \
  --concurrency 64 >"$work/put.json" || fail "loading iroh-dns-server"
python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); bad={k:v for k,v in s["status"].items() if not k.startswith("2")}; sys.exit(f"not all 2xx: {bad}" if bad or s["errors"] else 0)' "$work/put.json"
sleep 3  # its writes commit on a 1 s timer
kill -TERM "$iroh_pid"
wait "$iroh_pid" 2>/dev/null || true
iroh_pid=
store="$work/iroh-data"
log "iroh-dns-server's store: $(du -m "$store/signed-packets-1.db" | cut -f1) MiB"

# $1 = round, $2 = kind: imports the store through node 2 and records the summary.
import_round() {
  "$bin/pkraft" import --json --admin "${node_admin[2]}" "$store" >"$work/summary.json" \
    2>"$work/import.err" || { cat "$work/import.err" >&2; fail "import"; }
  python3 - "$work/summary.json" "$1" "$2" <<'PY' | tee -a "$results"
import json, sys
s = json.load(open(sys.argv[1]))
s.pop("invalid_rows", None)
s.update(round=int(sys.argv[2]), kind=sys.argv[3], per_second=round(s["rows"] / s["seconds"]))
print(json.dumps(s))
PY
}

for round in $(seq 1 "$rounds"); do
  cluster_down "$work/cluster"
  rm -rf "$work/cluster"
  cluster_up "$bin" "$work/cluster" 3 "$secret" || fail "the cluster did not start"
  log "round $round: importing through node 2 (leader: $(cluster_leader 2))"
  import_round "$round" first
  for id in 1 2 3; do
    records=0
    for _ in $(seq 1 300); do
      records=$(metric "${node_admin[$id]}" pkraft_store_records || echo 0)
      [ "$records" -ge "$keys" ] && break
      sleep 0.2
    done
    [ "$records" -ge "$keys" ] || fail "node $id holds $records of $keys records"
  done
  import_round "$round" again
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
for kind in ("first", "again"):
    rates = [r["per_second"] for r in rows if r["kind"] == kind]
    print(f"{kind}: median {statistics.median(rates):,.0f} packets/s over {len(rates)} rounds: {rates}")
PY
