#!/usr/bin/env bash
# Scale: one release node loaded through its relay to each of BENCH_SCALE_POINTS stored packets
# (default 20,000, 1M, 3M, 10M), measured the same way at every point in one run:
# `make bench-scale` (opt-in, not in CI: about 45 minutes at the default points).
#
# At each point, after loading the packets that reach it (PUT through the relay, 64 at a time):
#   - disk bytes of the Raft log, state.redb and the snapshot; RSS and peak RSS of the load;
#   - restart after SIGKILL: from the new process to /readyz 200 (open, repair, replay, ready);
#   - DNS, names never asked before: dnsperf -n 1 over up to 200,000 stored names no query of
#     the run asked before, right after that restart (empty caches), then a later round over
#     up to 200,000 others (dns_cold_later_qps; none when fewer than 1,000 are left);
#   - DNS, random keys: dnsperf -l 10 over up to 1,000,000 stored names in random order;
#   - GET/s: 100,000 GETs of the newest keys; PUT/s: 20,000 new keys (they stay stored);
#   - steady RSS (after the DNS workloads filled the caches);
#   - `pkraft backup` of the node: time, and the node's peak RSS after it;
#   - a new learner catching up by snapshot: from its start until it holds every record the
#     node held then, and its peak RSS.
# Each point's figures go to target/bench-results-scale.jsonl; at the end a table on stdout
# and target/bench-scale.svg (tests/bench/scale_plot.py), each figure against the record count.
# BENCH_SCALE_SVG=docs/bench-scale.svg writes the plot that docs/BENCHMARKS.md shows instead:
# only for a full run that replaces the one it names (partial runs overwrote it before).
#
# Env: BENCH_BIN (dir with release pkraft and pkraft-bench), BENCH_SCALE_POINTS,
# BENCH_SCALE_WORK (work dir, default a new one under /tmp; it needs about 1 KB per packet),
# BENCH_SCALE_SET (settings of the node and the learner, `SECTION.KEY=VALUE` separated by spaces,
# e.g. `raft.state_cache_mib=1024`; recorded with each point's figures).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh
PKRAFT_EXTRA_TOML=$(limits_off_toml)
settings=()
for setting in ${BENCH_SCALE_SET:-}; do settings+=(--set "$setting"); done

bin=${BENCH_BIN:-target/release}
points=${BENCH_SCALE_POINTS:-20000 1000000 3000000 10000000}
need_bins scale "$bin"
for tool in dnsperf curl python3 shuf; do
  command -v "$tool" >/dev/null || { echo "scale: $tool is missing" >&2; exit 2; }
done
work=${BENCH_SCALE_WORK:-$(mktemp -d)}
mkdir -p "$work"
pids=()
cleanup() { stop_process_groups "${pids[@]}"; [ -n "${BENCH_SCALE_WORK:-}" ] || rm -rf "$work"; }
trap cleanup EXIT
log() { echo "scale: $(date +%T) $*" >&2; }
fail() { log "FAIL: $*"; print_log_tails "$work"; exit 1; }
results=target/bench-results-scale.jsonl
mkdir -p target
[ -n "${BENCH_SCALE_RESUME_LOADED:-}" ] || : >"$results"
export PKRAFT_ADMIN_TOKEN=scale-bench-admin-token
secret=scale-bench-cluster-secret
origin=pkarr.test
# Data files hold at most this many keys (pkraft-bench keeps one in memory).
chunk=1000000

# The node: fixed ports, so a restart keeps its addresses. BENCH_SCALE_RESUME_LOADED=N (with
# BENCH_SCALE_WORK, and BENCH_SCALE_RESUME_LEARNER, the next learner's id) carries on with the
# node and data of an interrupted run that had loaded N keys: its config, ports and results are
# kept.
if [ -n "${BENCH_SCALE_RESUME_LOADED:-}" ]; then
  read -r http dns peer admin < <(python3 -c '
import sys, tomllib
c = tomllib.load(open(sys.argv[1], "rb"))
port = lambda a: a.rsplit(":", 1)[1]
print(port(c["http"]["listen"]), port(c["dns"]["listen"]), port(c["cluster"]["peer_listen"]),
      port(c["admin"]["listen"]))' "$work/node.toml")
else
  # loopback_port picks below the kernel's ephemeral range: a port in it may be taken as the
  # local port of a client connection while the node is down, and the restart after SIGKILL
  # then fails with "Address already in use" (seen once here).
  http=$(loopback_port) dns=$(loopback_port) peer=$(loopback_port) admin=$(loopback_port)
  cluster_node_config "$work/node.toml" 1 "$work/data" "127.0.0.1:$http" "127.0.0.1:$dns" \
    "127.0.0.1:$peer" "127.0.0.1:$admin" "$secret" "" --origin "$origin" "${settings[@]}"
fi
relay="http://127.0.0.1:$http/pkarr"
node_pid=

start_node() {
  RUST_LOG=warn setsid "$bin/pkraft" serve --config "$work/node.toml" >>"$work/node.log" 2>&1 &
  node_pid=$!; pids+=("$node_pid")
  disown "$node_pid"
}
# Seconds (3 decimals) until $1/readyz answers 200; fails after $2 seconds or when process $3
# exits.
wait_ready() {
  local url=$1 limit=$2 pid=$3 start
  start=$(date +%s.%N)
  while ! curl -sf -o /dev/null "$url/readyz"; do
    kill -0 "$pid" 2>/dev/null || fail "the node exited before it was ready"
    python3 -c "import sys; sys.exit(0 if $(date +%s.%N) - $start < $limit else 1)" ||
      fail "$url not ready within $limit s"
    sleep 0.05
  done
  python3 -c "print(round($(date +%s.%N) - $start, 3))"
}
# never_asked_round NAME MIN: dnsperf -n 1 over up to 200,000 stored names no query of the run
# asked before, its output in $work/NAME.txt (left empty when fewer than MIN are left); the
# names are then counted as asked.
never_asked_round() {
  local name=$1 min=$2
  sort "$work/asked.queries" | comm -23 "$work/stored.queries" - | shuf -n 200000 >"$work/$name.queries"
  : >"$work/$name.txt"
  [ "$(wc -l <"$work/$name.queries")" -ge "$min" ] || return 0
  cat "$work/$name.queries" >>"$work/asked.queries"
  dnsperf -s 127.0.0.1 -p "$dns" -d "$work/$name.queries" -n 1 -c 20 >"$work/$name.txt" 2>&1 ||
    fail "dnsperf ($name): $(tail -3 "$work/$name.txt")"
}
kib() { awk -v f="$2" '$1 == f":" {print $2}' "/proc/$1/status"; }
records() { curl -sf "http://127.0.0.1:$admin/metrics" | awk '/^pkraft_store_records / {print int($2)}'; }
bytes_of() { du -sb "$1" 2>/dev/null | cut -f1; }

# Data: increments of at most $chunk keys up to each point, signed two at a time in advance, and
# a probe set of 20,000 keys per point for PUT/s.
files=() sizes=() loaded=0 seed=100
for point in $points; do
  while [ "$loaded" -lt "$point" ]; do
    size=$(( point - loaded < chunk ? point - loaded : chunk ))
    files+=("$work/keys-$seed.bin"); sizes+=("$size")
    loaded=$((loaded + size)); seed=$((seed + 1))
  done
done
log "signing $loaded packets in ${#files[@]} files"
jobs_=()
for i in "${!files[@]}"; do
  [ -s "${files[$i]}" ] && continue
  jobs_+=("${sizes[$i]} $(basename "${files[$i]}" .bin | cut -d- -f2) ${files[$i]}")
done
probe_seed=900
for point in $points; do jobs_+=("20000 $probe_seed $work/probe-$point.bin"); probe_seed=$((probe_seed + 1)); done
printf '%s\n' "${jobs_[@]}" | xargs -P "$(nproc)" -L 1 sh -c \
  '[ -s "$3" ] || "$0" gen --keys "$1" --versions 1 --seed "$2" --out "$3"' "$bin/pkraft-bench"
for f in "${files[@]}"; do
  "$bin/pkraft-bench" queries --data "$f" --origin "$origin" --queries "${f%.bin}.queries" \
    --zone /dev/null
done

start_node
wait_ready "http://127.0.0.1:$http" 300 "$node_pid" >/dev/null
next=0 learner_id=${BENCH_SCALE_RESUME_LEARNER:-2} loaded=0 newest=
if [ -n "${BENCH_SCALE_RESUME_LOADED:-}" ]; then
  while [ "$loaded" -lt "$BENCH_SCALE_RESUME_LOADED" ]; do
    loaded=$((loaded + ${sizes[$next]})); newest=${files[$next]}; next=$((next + 1))
  done
else
  : >"$work/asked.queries"
fi
for point in $points; do
  if [ -n "${BENCH_SCALE_RESUME_LOADED:-}" ] && [ "$point" -lt "$BENCH_SCALE_RESUME_LOADED" ]; then
    prev_point=$point; continue
  fi
  # Load up to the point, one increment after another.
  load_start=$(date +%s.%N)
  while [ "$loaded" -lt "$point" ]; do
    f=${files[$next]}
    "$bin/pkraft-bench" put --data "$f" --version 0 --url "$relay" --concurrency 64 >"$work/put.json" ||
      fail "loading $f"
    python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); bad={k:v for k,v in s["status"].items() if k!="204"}; sys.exit(f"not all 204: {bad}" if bad else 0)' "$work/put.json"
    loaded=$((loaded + ${sizes[$next]})); newest=$f; next=$((next + 1))
  done
  load_s=$(python3 -c "print($(date +%s.%N) - $load_start)")
  sleep 2
  stored=$(records)
  log "$point: $stored records stored in $load_s s"
  load_rss=$(kib "$node_pid" VmRSS) load_hwm=$(kib "$node_pid" VmHWM)
  log_bytes=$(bytes_of "$work/data/raft-log") state_bytes=$(bytes_of "$work/data/state.redb")
  snapshot_bytes=$(bytes_of "$work/data/snapshot")

  # Restart after SIGKILL, once every thread of the old process is gone and its sockets with it
  # (the leader thread turns zombie while threads stuck in a large write or fsync still hold the
  # listeners: a start then fails with "Address already in use"; a supervisor waits too).
  kill -KILL "$node_pid"
  for _ in $(seq 1 600); do [ -d "/proc/$node_pid/task" ] && [ -n "$(ls "/proc/$node_pid/task" 2>/dev/null | grep -v "^$node_pid$")" ] || break; sleep 0.1; done
  wait_exited "$node_pid" || fail "node did not die"
  start_node
  restart_s=$(wait_ready "http://127.0.0.1:$http" 300 "$node_pid")
  log "$point: ready $restart_s s after SIGKILL"

  # Names never asked before, with the caches empty after the restart; then a later round,
  # right after the first: what the first round is measured against (the first after a start
  # as fast as the later ones). None at a point with fewer than 1,000 names left unasked.
  for ((i = 0; i < next; i++)); do cat "${files[$i]%.bin}.queries"; done | sort >"$work/stored.queries"
  never_asked_round cold 1
  never_asked_round cold2 1000
  shuf -n 1000000 "$work/stored.queries" >"$work/random.queries"
  dnsperf -s 127.0.0.1 -p "$dns" -d "$work/random.queries" -l 10 -c 20 >"$work/random.txt" 2>&1 ||
    fail "dnsperf (random): $(tail -3 "$work/random.txt")"
  "$bin/pkraft-bench" get --data "$newest" --url "$relay" --requests 100000 --concurrency 64 \
    >"$work/get.json" || fail "GET load"
  "$bin/pkraft-bench" put --data "$work/probe-$point.bin" --version 0 --url "$relay" \
    --concurrency 64 >"$work/probe.json" || fail "PUT probe"
  sleep 2
  steady_rss=$(kib "$node_pid" VmRSS)

  # A backup, streamed to a file.
  backup_start=$(date +%s.%N)
  "$bin/pkraft" backup --admin "127.0.0.1:$admin" "$work/backup.pkrbak" >"$work/backup.txt" ||
    fail "backup"
  backup_s=$(python3 -c "print(round($(date +%s.%N) - $backup_start, 3))")
  backup_bytes=$(stat -c %s "$work/backup.pkrbak"); rm -f "$work/backup.pkrbak"

  # A new learner catches up by snapshot.
  lhttp=$(loopback_port) ldns=$(loopback_port) lpeer=$(loopback_port) ladmin=$(loopback_port)
  cluster_node_config "$work/learner.toml" "$learner_id" "$work/learner-data" "127.0.0.1:$lhttp" \
    "127.0.0.1:$ldns" "127.0.0.1:$lpeer" "127.0.0.1:$ladmin" "$secret" "127.0.0.1:$peer" \
    --origin "$origin" --learner "${settings[@]}"
  # Caught up: it holds every record the node held when it started (readiness alone may come
  # before the snapshot: the learner's own commit index starts at nothing).
  target=$(records) learner_start=$(date +%s.%N) learner_records=0
  RUST_LOG=info setsid "$bin/pkraft" serve --config "$work/learner.toml" >>"$work/learner.log" 2>&1 &
  learner_pid=$!; pids+=("$learner_pid"); disown "$learner_pid"
  while [ "${learner_records:-0}" -lt "$target" ]; do
    kill -0 "$learner_pid" 2>/dev/null || fail "the learner exited"
    python3 -c "import sys; sys.exit(0 if $(date +%s.%N) - $learner_start < 1800 else 1)" ||
      fail "the learner did not catch up within 1800 s"
    sleep 0.2
    learner_records=$(curl -sf "http://127.0.0.1:$ladmin/metrics" |
      awk '/^pkraft_store_records / {print int($2)}' || echo 0)
  done
  catch_up_s=$(python3 -c "print(round($(date +%s.%N) - $learner_start, 3))")
  learner_hwm=$(kib "$learner_pid" VmHWM)
  learner_snapshot=$(grep -c "installed a snapshot" "$work/learner.log" || true)
  "$bin/pkraft" cluster --admin "127.0.0.1:$admin" remove --node-id "$learner_id" >/dev/null ||
    fail "removing the learner"
  kill -KILL "$learner_pid"; wait_exited "$learner_pid" || true
  rm -rf "$work/learner-data"; learner_id=$((learner_id + 1))
  log "$point: backup $backup_s s; learner ready after $catch_up_s s with $learner_records records"

  python3 - "$point" "$stored" "$load_s" "$((point - ${prev_point:-0}))" "$load_rss" "$load_hwm" \
    "$log_bytes" "$state_bytes" "$snapshot_bytes" "$restart_s" "$work/cold.txt" "$work/random.txt" \
    "$work/get.json" "$work/probe.json" "$steady_rss" "$backup_s" "$backup_bytes" \
    "$(kib "$node_pid" VmHWM)" "$catch_up_s" "$learner_records" "$learner_hwm" "$learner_snapshot" \
    "$work/cold2.txt" \
    >>"$results" <<'PY'
import json, os, re, sys
a = sys.argv[1:]
def dnsperf(path):
    text = open(path).read()
    qps = re.search(r"Queries per second:\s+([\d.]+)", text)
    lost = re.search(r"Queries lost:\s+(\d+)", text)
    return float(qps.group(1)), int(lost.group(1))
def rps(path):
    return json.load(open(path))["rps"]
cold_qps, cold_lost = dnsperf(a[10])
# The later round of never-asked names; None where the point had too few names left for it.
cold_later_qps = dnsperf(a[22])[0] if open(a[22]).read().strip() else None
random_qps, random_lost = dnsperf(a[11])
print(json.dumps({
    "point": int(a[0]), "records": int(a[1]),
    "settings": os.environ.get("BENCH_SCALE_SET", "").split(),
    # None when the run was resumed after this point's load (BENCH_SCALE_RESUME_LOADED).
    "load_put_per_s": round(int(a[3]) / float(a[2])) if float(a[2]) > 1 else None,
    "rss_after_load_mib": int(a[4]) / 1024, "peak_rss_load_mib": int(a[5]) / 1024,
    "log_bytes": int(a[6]), "state_bytes": int(a[7]), "snapshot_bytes": int(a[8]),
    "restart_s": float(a[9]),
    "dns_cold_qps": cold_qps, "dns_cold_lost": cold_lost, "dns_cold_later_qps": cold_later_qps,
    "dns_random_qps": random_qps, "dns_random_lost": random_lost,
    "get_per_s": rps(a[12]), "put_per_s": rps(a[13]),
    "get": json.load(open(a[12])), "put": json.load(open(a[13])),
    "steady_rss_mib": int(a[14]) / 1024,
    "backup_s": float(a[15]), "backup_bytes": int(a[16]),
    "peak_rss_after_backup_and_send_mib": int(a[17]) / 1024,
    "learner_catch_up_s": float(a[18]), "learner_records": int(a[19] or 0),
    "learner_peak_rss_mib": int(a[20]) / 1024, "learner_snapshot_installs": int(a[21]),
}))
PY
  log "$point: $(tail -n 1 "$results" | cut -c1-400)"
  prev_point=$point
done

python3 tests/bench/scale_plot.py "$results" "${BENCH_SCALE_SVG:-target/bench-scale.svg}"
