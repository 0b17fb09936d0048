#!/usr/bin/env bash
# Elections nobody asked for under CPU hogs and fsync stalls (`make bench-stalls`): a 3-node
# release cluster with the default Raft timing takes a steady stream of new PUTs through all its
# nodes, in four phases of BENCH_PHASE_SECONDS (default 20):
#   steady  nothing else runs;
#   cpu     2 busy loops per core, at the cluster's own priority;
#   disk    a writer in the same file system writes 8 MiB and fdatasyncs it, again and again, so
#           the nodes' own fdatasyncs wait behind it;
#   both    the two at once.
# Each phase reports the PUTs acknowledged, the longest run without a 204 and the leader
# changes the nodes saw (`pkraft_raft_leader_changes_total`, summed over the nodes: one change
# counts once per node). The target is 0 leader changes in every phase (issue 19).
#
# Env: BENCH_PHASE_SECONDS, BENCH_BIN (dir with pkraft and pkraft-bench, default
# target/release).
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/lib/pkraft.sh
# The writers all come from 127.0.0.1: the per-client PUT limit would refuse them (429).
PKRAFT_EXTRA_TOML=$(limits_off_toml)

seconds=${BENCH_PHASE_SECONDS:-20} bin=${BENCH_BIN:-target/release}
writers=16
need_bins stalls "$bin"

work=$(mktemp -d)
# shellcheck disable=SC2034  # filled by cluster_up
declare -A node_pid node_http node_dns node_admin
hogs=()
stop_hogs() {
  local p
  # Each hog runs under `timeout`, which passes the TERM on to it (and bounds it if this script
  # dies first).
  for p in "${hogs[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${hogs[@]}"; do wait "$p" 2>/dev/null || true; done
  hogs=()
  rm -f "$work/disk-hog"
}
cleanup() { stop_hogs; cluster_down "$work/cluster"; rm -rf "$work"; }
trap cleanup EXIT
log() { echo "stalls: $*" >&2; }
fail() { log "$*"; print_log_tails "$work"; exit 1; }

cpu_hogs() {
  local i
  for i in $(seq 1 $((2 * $(nproc)))); do
    timeout --kill-after=1 "$((seconds + 5))" sh -c 'while :; do :; done' &
    hogs+=($!)
  done
}
disk_hog() {
  timeout --kill-after=1 "$((seconds + 5))" python3 - "$work/disk-hog" <<'PY' &
import os, sys
chunk = os.urandom(8 << 20)
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
while True:
    os.write(fd, chunk)
    os.fdatasync(fd)
    if os.lseek(fd, 0, os.SEEK_CUR) > (512 << 20):
        os.lseek(fd, 0, os.SEEK_SET)
PY
  hogs+=($!)
}

cluster_up "$bin" "$work/cluster" 3 stalls-bench-secret-not-for-production ||
  fail "the cluster did not start"
keys=$((4 * seconds * 8000))
log "generating $keys keys"
"$bin/pkraft-bench" gen --keys "$keys" --versions 1 --out "$work/data.bin" >/dev/null
urls=(); for n in 1 2 3; do urls+=(--url "${node_http[$n]}"); done

: >"$work/results.jsonl"
first_key=0
for phase in steady cpu disk both; do
  case "$phase" in
    cpu) cpu_hogs ;;
    disk) disk_hog ;;
    both) cpu_hogs; disk_hog ;;
  esac
  before=$(leader_changes_total "${node_admin[@]}")
  log "phase $phase: ${seconds}s of PUTs through all 3 nodes, $writers writers"
  "$bin/pkraft-bench" gaps --data "$work/data.bin" --version 0 --first-key "$first_key" \
    "${urls[@]}" --concurrency "$writers" --seconds "$seconds" >"$work/gaps.json" ||
    fail "phase $phase: the write stream failed"
  after=$(leader_changes_total "${node_admin[@]}")
  stop_hogs
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["phase"]=sys.argv[2]; d["leader_changes"]=int(sys.argv[3]); print(json.dumps(d))' \
    "$work/gaps.json" "$phase" "$((after - before))" | tee -a "$work/results.jsonl" >&2
  first_key=$((first_key + $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["keys_used"])' "$work/gaps.json")))
  sleep 2
done

python3 - "$work/results.jsonl" "$seconds" <<'PY'
import json, sys
print(f"3 nodes, default Raft timing, {sys.argv[2]} s per phase:")
print(f"{'phase':8} {'PUT/s':>8} {'longest gap ms':>15} {'not acked':>10} {'leader changes':>15}")
for line in open(sys.argv[1]):
    d = json.loads(line)
    refused = sum(d["refused"].values())
    print(f"{d['phase']:8} {d['acknowledged'] / float(sys.argv[2]):8.0f} {d['longest_gap_ms']:15.0f} "
          f"{refused:10} {d['leader_changes']:15}")
PY
