#!/usr/bin/env bash
# Repair at scale: `make bench-repair` (opt-in, not in CI: about 15 minutes at 1M). A 3-node
# release cluster is loaded with BENCH_REPAIR_KEYS packets (default 1,000,000) through its
# leader's relay; then, BENCH_REPAIR_ROUNDS times (default 3), interleaved:
#   - learner: a new learner joins; seconds from its start until it holds every record (the
#     reference: issue 36's bound is 2× this);
#   - state-from-cluster: a follower is killed, both commit slots of its state.redb and one byte
#     in the middle of its snapshot damaged, so that only the cluster can rebuild its state;
#     seconds from its restart until it is back in service: /readyz 200, no log repair pending,
#     and every record held;
#   - state-from-snapshot: the same with its snapshot left whole: it rebuilds from its own
#     snapshot and log.
# Results go to target/bench-results-repair.jsonl and a table on stdout (docs/BENCHMARKS.md,
# "Repair at scale").
#
# Env: BENCH_BIN (dir with release pkraft and pkraft-bench), BENCH_REPAIR_KEYS,
# BENCH_REPAIR_ROUNDS.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh
PKRAFT_EXTRA_TOML=$(limits_off_toml)

bin=${BENCH_BIN:-target/release}
keys=${BENCH_REPAIR_KEYS:-1000000}
rounds=${BENCH_REPAIR_ROUNDS:-3}
need_bins repair "$bin"
work=$(mktemp -d)
# shellcheck disable=SC2034  # filled by cluster_up
declare -A node_pid node_http node_dns node_admin
learner_pid=
cleanup() {
  [ -z "$learner_pid" ] || kill -KILL "$learner_pid" 2>/dev/null || true
  cluster_down "$work/cluster"
  rm -rf "$work"
}
trap cleanup EXIT
log() { echo "repair: $(date +%T) $*" >&2; }
fail() { log "FAIL: $*"; print_log_tails "$work"; exit 1; }
results=target/bench-results-repair.jsonl
mkdir -p target
: >"$results"
export PKRAFT_ADMIN_TOKEN=repair-bench-admin-token
secret=repair-bench-cluster-secret

metric() { curl -sf "http://$1/metrics" | awk -v m="$2" '$1 == m {print int($2)}'; }
now() { date +%s.%N; }
since() { python3 -c "print(round($(now) - $1, 3))"; }
over() { python3 -c "import sys; sys.exit(0 if $(now) - $1 > $2 else 1)"; }

cluster_up "$bin" "$work/cluster" 3 "$secret" || fail "the cluster did not start"
leader=
for _ in $(seq 1 300); do leader=$(cluster_leader 1); [ -n "$leader" ] && break; sleep 0.1; done
[ -n "$leader" ] || fail "no leader"
log "signing $keys packets"
"$bin/pkraft-bench" gen --keys "$keys" --versions 1 --seed 36 --out "$work/keys.bin" >/dev/null
log "loading them through node $leader"
load_start=$(now)
"$bin/pkraft-bench" put --data "$work/keys.bin" --version 0 --url "${node_http[$leader]}" \
  --concurrency 64 >"$work/put.json" || fail "loading"
python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); bad={k:v for k,v in s["status"].items() if k!="204"}; sys.exit(f"not all 204: {bad}" if bad else 0)' "$work/put.json"
log "loaded in $(since "$load_start") s"
target=$(metric "${node_admin[$leader]}" pkraft_store_records)
for id in 1 2 3; do
  for _ in $(seq 1 600); do
    [ "$(metric "${node_admin[$id]}" pkraft_store_records || echo 0)" -ge "$target" ] && break
    sleep 0.2
  done
done

# Sets `seconds` to the time from $2 until the node of process $1 (admin $3, readiness URL $4)
# serves: /readyz 200, no repair pending, every record held. (Globals, not output: `fail` must
# end the script, and a restarted node's pid must reach the caller.)
wait_in_service() {
  local pid=$1 start=$2 admin=$3 ready=$4 records pending
  while :; do
    kill -0 "$pid" 2>/dev/null || fail "the node exited"
    over "$start" 1800 && fail "not back in service within 1800 s"
    if curl -sf -o /dev/null "$ready"; then
      records=$(metric "$admin" pkraft_store_records || echo 0)
      pending=$(metric "$admin" pkraft_raft_log_repair_pending || echo 1)
      [ "${records:-0}" -ge "$target" ] && [ "${pending:-1}" = 0 ] && break
    fi
    sleep 0.2
  done
  seconds=$(since "$start")
}

learner_id=4
# Sets `seconds` to a new learner's catch-up time.
measure_learner() {
  local lhttp ldns lpeer ladmin peer start
  lhttp=$(loopback_port) ldns=$(loopback_port) lpeer=$(loopback_port) ladmin=$(loopback_port)
  peer=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["cluster"]["peer_listen"])' \
    "$work/cluster/node$leader/node.toml")
  cluster_node_config "$work/learner.toml" "$learner_id" "$work/learner-data" "127.0.0.1:$lhttp" \
    "127.0.0.1:$ldns" "127.0.0.1:$lpeer" "127.0.0.1:$ladmin" "$secret" "$peer" --learner
  start=$(now)
  RUST_LOG=info setsid "$bin/pkraft" serve --config "$work/learner.toml" >>"$work/learner.log" 2>&1 &
  learner_pid=$!; disown "$learner_pid"
  wait_in_service "$learner_pid" "$start" "127.0.0.1:$ladmin" "http://127.0.0.1:$lhttp/readyz"
  "$bin/pkraft" cluster --admin "${node_admin[$leader]}" remove --node-id "$learner_id" >/dev/null ||
    fail "removing the learner"
  kill -KILL "$learner_pid"; wait_exited "$learner_pid" || true
  learner_pid=; rm -rf "$work/learner-data"; learner_id=$((learner_id + 1))
}

# Kills follower $1, damages its state (and its snapshot if $2 is "cluster"), restarts it; sets
# `seconds` until it is back in service, and `from_cluster` to how often its log says it set
# the whole log aside (a rebuild from the cluster).
measure_state_repair() {
  local id=$1 from=$2 data start
  data="$work/cluster/node$id/data"
  kill -KILL "${node_pid[$id]}"; wait_exited "${node_pid[$id]}" || fail "node $id did not die"
  python3 - "$data" "$from" <<'PY'
import pathlib, sys
data, source = pathlib.Path(sys.argv[1]), sys.argv[2]
state = data / "state.redb"
b = bytearray(state.read_bytes())
for slot in (64, 192):  # redb's two commit slots: one byte of each root page number
    b[slot + 8] ^= 0x5A
state.write_bytes(b)
if source == "cluster":
    snap = next((data / "snapshot").glob("*.snap"))
    s = bytearray(snap.read_bytes())
    s[len(s) // 2] ^= 0x10
    snap.write_bytes(s)
PY
  start=$(now)
  cluster_start_node "$id" || fail "node $id did not restart"
  local http=${node_http[$id]}
  wait_in_service "${node_pid[$id]}" "$start" "${node_admin[$id]}" "${http%/pkarr}/readyz"
  from_cluster=$(grep -c "set the whole Raft log aside" "$work/cluster/node$id/node.log" || true)
}

follower=$(( leader % 3 + 1 ))
for r in $(seq 1 "$rounds"); do
  measure_learner; learner_s=$seconds
  log "round $r: learner caught up in $learner_s s"
  measure_state_repair "$follower" cluster; cluster_s=$seconds cluster_count=$from_cluster
  log "round $r: state rebuilt from the cluster, back in service in $cluster_s s"
  measure_state_repair "$follower" snapshot; own_s=$seconds
  log "round $r: state rebuilt from its own snapshot, back in service in $own_s s"
  printf '{"round": %d, "records": %d, "learner_catch_up_s": %s, "state_from_cluster_s": %s, "state_from_own_snapshot_s": %s, "from_cluster_rebuilds_logged": %d}\n' \
    "$r" "$target" "$learner_s" "$cluster_s" "$own_s" "$cluster_count" >>"$results"
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
med = lambda k: statistics.median(r[k] for r in rows)
print(f"records: {rows[0]['records']:,}; {len(rows)} rounds")
print("| measure | " + " | ".join(f"round {r['round']}" for r in rows) + " | median | ÷ learner (median) |")
print("|---|" + "---|" * (len(rows) + 2))
for key, name in [("learner_catch_up_s", "new learner caught up, s"),
                  ("state_from_cluster_s", "state rebuilt from the cluster, back in service, s"),
                  ("state_from_own_snapshot_s", "state rebuilt from its own snapshot, back in service, s")]:
    ratio = med(key) / med("learner_catch_up_s")
    print(f"| {name} | " + " | ".join(f"{r[key]:.1f}" for r in rows) + f" | {med(key):.1f} | {ratio:.2f}× |")
PY
