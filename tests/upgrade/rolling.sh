#!/usr/bin/env bash
# A rolling upgrade from the previous release to this build, with the real binaries
# (`make upgrade-test`; docs/TESTING.md, "Rolling upgrades"). The previous release is the
# revision in tests/upgrade/PREVIOUS (until a second release exists: main before the consensus
# crate was split into the node's parts), built here from `git archive` into
# target/upgrade/<rev>/ (kept: a second run builds nothing).
#
# A 3-node cluster of the previous build takes 3,000 packets; then each node in turn is stopped
# with SIGTERM (a leader hands over) while new PUTs stream through the other two
# (`pkraft-bench gaps`), and is started as this build on its data dir. Fails unless:
#   - every step's longest run without a 204 is at most UPGRADE_GAP_MAX_MS (default 500, the
#     handover's bound);
#   - at the end every node answers 200 for every packet acknowledged: the 3,000 loaded before
#     and each one the stream got a 204 for (`gaps --acked-out`);
#   - every member reports this build in /cluster/status and in its data dir's build record.
# Results: a line per step and a summary on stderr.
#
# Env: UPGRADE_BIN (dir with this build's release pkraft and pkraft-bench, default
# target/release), UPGRADE_GAP_MAX_MS.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh

bin=${UPGRADE_BIN:-target/release}
gap_max_ms=${UPGRADE_GAP_MAX_MS:-500}
previous=$(tr -d '[:space:]' <tests/upgrade/PREVIOUS)
need_bins upgrade "$bin"
export PKRAFT_BENCH=$bin/pkraft-bench
bench=$PKRAFT_BENCH
log() { echo "upgrade: $*" >&2; }

# The previous build, from its revision alone.
old_dir=$PWD/target/upgrade/$previous
if [ ! -x "$old_dir/pkraft" ]; then
  log "building the previous release ($previous)"
  src=$PWD/target/upgrade/src-$previous
  rm -rf "$src"
  mkdir -p "$src"
  git archive "$previous" | tar -x -C "$src"
  (cd "$src" && CARGO_TARGET_DIR=$PWD/../target cargo build --release --locked -p pkraft)
  install -D -m 0755 "$PWD/target/upgrade/target/release/pkraft" "$old_dir/pkraft"
  rm -rf "$src"
fi
log "from $("$old_dir/pkraft" --version) ($previous) to $("$bin/pkraft" --version)"

# The previous release's own limits-off section: it refuses fields added since
# (`publish_new_keys`, `publish_per_key`), as any build refuses a config field it does not
# know. Each node's config gets them as it is upgraded, as an operator adds new settings then.
PKRAFT_EXTRA_TOML='[rate_limit]
publish = { per_client = { per_second = 0, burst = 0 }, global = { per_second = 0, burst = 0 } }
resolve = { per_client = { per_second = 0, burst = 0 }, global = { per_second = 0, burst = 0 } }
doh = { per_client = { per_second = 0, burst = 0 }, global = { per_second = 0, burst = 0 } }
health = { per_client = { per_second = 0, burst = 0 }, global = { per_second = 0, burst = 0 } }
[dns.rrl]
responses_per_second = 0
global_responses_per_second = 0
global_bytes_per_second = 0'
export PKRAFT_EXTRA_TOML

work=$(mktemp -d)
# shellcheck disable=SC2034  # filled by cluster_up
declare -A node_pid node_http node_dns node_admin
cleanup() { cluster_down "$work/cluster"; rm -rf "$work"; }
trap cleanup EXIT
fail() { log "FAIL: $*"; print_log_tails "$work"; exit 1; }

cluster_up "$old_dir" "$work/cluster" 3 upgrade-test-secret-not-for-production ||
  fail "the cluster of the previous build did not start"
# One data set: the first 3,000 keys are loaded before, the stream goes on after them.
preload=3000
"$bench" gen --keys 100000 --versions 1 --out "$work/data.bin" >/dev/null
"$bench" gen --keys "$preload" --versions 1 --out "$work/preload.bin" >/dev/null
loaded=$("$bench" put --data "$work/preload.bin" --version 0 --url "${node_http[1]}" \
  --url "${node_http[2]}" --url "${node_http[3]}" --concurrency 16 |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["status"].get("204", 0))')
[ "$loaded" = "$preload" ] || fail "the previous build acknowledged $loaded of $preload packets"

: >"$work/steps.jsonl"
first_key=$preload
for id in 1 2 3; do
  other=$((id % 3 + 1))
  leader=$("$bench" cluster settled --admin "${node_admin[$other]}" --voters 3 --timeout-secs 60) ||
    fail "step $id: the cluster did not settle"
  urls=(); for m in 1 2 3; do [ "$m" = "$id" ] || urls+=(--url "${node_http[$m]}"); done
  "$bench" gaps --data "$work/data.bin" --version 0 --first-key "$first_key" "${urls[@]}" \
    --concurrency 4 --seconds 4 --acked-out "$work/acked-$id.txt" >"$work/gaps.json" &
  gaps_pid=$!
  sleep 1
  kill -TERM "${node_pid[$id]}"
  wait_exited "${node_pid[$id]}" || fail "step $id: node $id did not exit within 30 s of SIGTERM"
  sed -i '/^\[rate_limit\]$/a publish_new_keys = { per_client = { per_second = 0, burst = 0 }, global = { per_second = 0, burst = 0 } }\npublish_per_key = { per_minute = 0, burst = 0 }' \
    "$work/cluster/node$id/node.toml"
  lines=$(RUST_LOG=info "$bench" cluster start --pkraft "$bin/pkraft" --work "$work/cluster" "$id") ||
    fail "step $id: node $id did not start as this build"
  cluster_read_nodes <<<"$lines"
  wait "$gaps_pid" || fail "step $id: the write stream failed"
  python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); d["node"] = int(sys.argv[2]); d["leader_before"] = int(sys.argv[3]); print(json.dumps(d))' \
    "$work/gaps.json" "$id" "$leader" >>"$work/steps.jsonl"
  first_key=$((first_key + $(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["keys_used"])' "$work/gaps.json")))
  log "step $id: $(tail -n 1 "$work/steps.jsonl")"
done
"$bench" cluster settled --admin "${node_admin[1]}" --voters 3 --timeout-secs 60 >/dev/null ||
  fail "the upgraded cluster did not settle"

# Every acknowledged packet on every node, and the build each records.
cat "$work"/acked-*.txt >"$work/acked.txt"
acknowledged=$(wc -l <"$work/acked.txt")
for n in 1 2 3; do
  found=$("$bench" get --data "$work/preload.bin" --url "${node_http[$n]}" --concurrency 8 \
    --requests "$preload" | python3 -c 'import json, sys; print(json.load(sys.stdin)["status"].get("200", 0))')
  [ "$found" = "$preload" ] || fail "node $n answers $found of the $preload packets loaded before"
  python3 - "${node_http[$n]}" "$work/acked.txt" <<'PY' || fail "node $n lost acknowledged packets"
import sys, urllib.error, urllib.request
base, keys = sys.argv[1], [k.strip() for k in open(sys.argv[2]) if k.strip()]
missing = []
for key in keys:
    try:
        with urllib.request.urlopen(f"{base}/{key}", timeout=5) as answer:
            status = answer.status
    except urllib.error.HTTPError as e:
        status = e.code
    if status != 200:
        missing.append((key, status))
if missing:
    sys.exit(f"{len(missing)} of {len(keys)} acknowledged packets not served: {missing[:5]}")
PY
  log "node $n: all $preload packets loaded before and all $acknowledged acknowledged during the steps"
  want="last_started_by $("$bin/pkraft" --version | sed -E 's/^pkraft ([^ ]+) \((.*)\)$/\1 \2/')"
  grep -qxF "$want" "$work/cluster/node$n/data/build" || fail "node $n's build record: $(cat "$work/cluster/node$n/data/build")"
done
version=$("$bin/pkraft" --version | sed -E 's/^pkraft ([^ ]+) .*/\1/')
"$bin/pkraft" cluster --admin "${node_admin[1]}" status --json |
  python3 -c 'import json, sys
s = json.load(sys.stdin)
builds = {m["id"]: (m["status"] or {}).get("build") for m in s["members"]}
assert all(b and b["version"] == sys.argv[1] for b in builds.values()), builds' "$version" ||
  fail "not every member reports this build"

python3 - "$work/steps.jsonl" "$gap_max_ms" <<'PY'
import json, sys
steps = [json.loads(l) for l in open(sys.argv[1])]
limit = float(sys.argv[2])
print("rolling upgrade, 3 nodes, each SIGTERM'd and started as this build under writes through the other two:", file=sys.stderr)
for s in steps:
    print(f"  node {s['node']} (leader before: {s['leader_before']}): longest run without a 204 "
          f"{s['longest_gap_ms']:.0f} ms, {s['acknowledged']} PUTs acknowledged, refused {s['refused'] or 'none'}, "
          f"p99 {s['put_p99_ms']:.0f} ms", file=sys.stderr)
worst = max(s["longest_gap_ms"] for s in steps)
if worst > limit:
    sys.exit(f"upgrade: FAIL: a step's gap of {worst:.0f} ms is over {limit:.0f} ms")
PY
log "OK"
