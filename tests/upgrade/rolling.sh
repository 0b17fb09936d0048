#!/usr/bin/env bash
# A rolling upgrade from the previous release to this build, and the downgrade back, with the
# real binaries (`make upgrade-test`; docs/TESTING.md, "Rolling upgrades"). The previous
# release is the revision in tests/upgrade/PREVIOUS, which tests/upgrade/previous.sh builds from
# `git archive` into target/upgrade/<rev>/ (kept: a second run builds nothing).
#
# A 3-node cluster of the previous build takes 3,000 packets; then each node in turn is stopped
# with SIGTERM (a leader hands over) while new PUTs stream through the other two
# (`pkraft-bench gaps`), and is started as this build on its data dir, its config given the
# settings added since (as an operator adds them). Then the same back down: each node stopped,
# its data dir rewritten by this build's `pkraft downgrade` where a format changed (the previous
# release first shown to refuse it, changing nothing), and started as the previous build on it,
# those settings taken out again (docs/OPERATIONS.md, "Going back"). Fails unless:
#   - every step's longest run without a 204 is at most UPGRADE_GAP_MAX_MS (default 500, the
#     handover's bound);
#   - after the upgrade and after the downgrade, every node answers 200 for every packet
#     acknowledged: the 3,000 loaded before and each one the streams got a 204 for
#     (`gaps --acked-out`);
#   - after the upgrade every node runs this build's binary, reports it in its own
#     /cluster/status and every member reports it to node 1, and every data dir's build record
#     names it; after the downgrade every node runs the previous release's binary and reports
#     no build of its own (that release has no build report);
#   - a backup made by each build restores and verifies with the other (`pkraft backup`,
#     `restore`, `verify`), holding every packet acknowledged before it and no key never sent.
# Results: a line per step and a summary on stderr.
#
# Env: UPGRADE_BIN (dir with this build's pkraft and pkraft-bench, default target/release),
# UPGRADE_PROFILE (the previous release's build: release, the default, or debug; previous.sh),
# UPGRADE_GAP_MAX_MS.
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

# (Two steps: in `$(dirname "$(…)")` a failing build would pass as dirname's success.)
old_bin=$(tests/upgrade/previous.sh)
old_dir=$(dirname "$old_bin")
log "from $("$old_dir/pkraft" --version) ($previous) to $("$bin/pkraft" --version) and back"

# The previous release's own limits-off section: it refuses fields added since
# (`publish_new_keys`, `publish_per_key`; pkraft_testkit's ADDED_SINCE_PREVIOUS_RELEASE), as any
# build refuses a config field it does not know. Each node's config gets them as it is
# upgraded, as an operator adds new settings then, and loses them as it is downgraded.
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
: >"$work/acked.txt"
first_key=$preload
admin_token=upgrade-test-admin-token-0123456789
echo "$admin_token" >"$work/admin-token"
added_settings='publish_new_keys = { per_client = { per_second = 0, burst = 0 }, global = { per_second = 0, burst = 0 } }\npublish_per_key = { per_minute = 0, burst = 0 }'

# back_to_previous_formats ID OLD_DIR: node ID's stopped data dir made readable by the previous
# release (docs/OPERATIONS.md, "Going back"). Where this build changed a format the previous
# release reads (state.redb's schema 5), that release refuses the data dir (its `verify` opens
# it as a start does) and this build's `pkraft downgrade` then finds it as this build left it
# and rewrites it (redb's header bytes may change as the refusing build closes the file; the
# schema and the rows do not); where nothing changed, the previous release reads it and
# `downgrade` has nothing to do.
back_to_previous_formats() {
  local id=$1 old=$2 data="$work/cluster/node$1/data" done
  if "$old/pkraft" verify --data-dir "$data" >"$work/refused-$id.txt" 2>&1; then
    done=$("$bin/pkraft" downgrade --data-dir "$data") || fail "down, step $id: pkraft downgrade failed"
    grep -q "nothing to do" <<<"$done" ||
      fail "down, step $id: the previous release read the data dir, yet pkraft downgrade rewrote it: $done"
  else
    grep -q "database file has schema version" "$work/refused-$id.txt" ||
      fail "down, step $id: the previous release refused the data dir for another reason: $(tail -n 3 "$work/refused-$id.txt")"
    done=$("$bin/pkraft" downgrade --data-dir "$data") || fail "down, step $id: pkraft downgrade failed"
    grep -q "rewritten" <<<"$done" ||
      fail "down, step $id: the refused data dir was not left in this build's schema: $done"
  fi
  log "down, step $id: the previous release: $(grep -m 1 -o "database file has schema version[^\"]*" "$work/refused-$id.txt" || echo "read the data dir"); $done"
}

# roll DIRECTION BIN_DIR: each node in turn SIGTERM'd under writes through the other two and
# started from BIN_DIR/pkraft on its data dir, its config given ("up") or rid of ("down") the
# settings the previous release does not know.
roll() {
  local direction=$1 to=$2 id other leader gaps_pid lines
  for id in 1 2 3; do
    other=$((id % 3 + 1))
    leader=$("$bench" cluster settled --admin "${node_admin[$other]}" --voters 3 --timeout-secs 60) ||
      fail "$direction, step $id: the cluster did not settle"
    local urls=(); for m in 1 2 3; do [ "$m" = "$id" ] || urls+=(--url "${node_http[$m]}"); done
    "$bench" gaps --data "$work/data.bin" --version 0 --first-key "$first_key" "${urls[@]}" \
      --concurrency 4 --seconds 4 --acked-out "$work/acked-$direction-$id.txt" >"$work/gaps.json" &
    gaps_pid=$!
    sleep 1
    kill -TERM "${node_pid[$id]}"
    wait_exited "${node_pid[$id]}" || fail "$direction, step $id: node $id did not exit within 30 s of SIGTERM"
    if [ "$direction" = up ]; then
      sed -i "/^\[rate_limit\]\$/a $added_settings" "$work/cluster/node$id/node.toml"
      # A token for the backups below (the bench cluster's nodes have none).
      sed -i "/^\[admin\]\$/a token = \"$admin_token\"" "$work/cluster/node$id/node.toml"
    else
      sed -i -E '/^(publish_new_keys|publish_per_key) = /d' "$work/cluster/node$id/node.toml"
      back_to_previous_formats "$id" "$to"
    fi
    lines=$(RUST_LOG=info "$bench" cluster start --pkraft "$to/pkraft" --work "$work/cluster" "$id") ||
      fail "$direction, step $id: node $id did not start as $("$to/pkraft" --version)"
    cluster_read_nodes <<<"$lines"
    wait "$gaps_pid" || fail "$direction, step $id: the write stream failed"
    cat "$work/acked-$direction-$id.txt" >>"$work/acked.txt"
    python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); d["node"] = int(sys.argv[2]); d["leader_before"] = int(sys.argv[3]); d["direction"] = sys.argv[4]; print(json.dumps(d))' \
      "$work/gaps.json" "$id" "$leader" "$direction" >>"$work/steps.jsonl"
    first_key=$((first_key + $(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["keys_used"])' "$work/gaps.json")))
    log "$direction, step $id: $(tail -n 1 "$work/steps.jsonl")"
  done
  "$bench" cluster settled --admin "${node_admin[1]}" --voters 3 --timeout-secs 60 >/dev/null ||
    fail "the cluster did not settle after the $direction steps"
}

# every_node_serves_what_was_acknowledged WHEN: the packets loaded before and every one
# acknowledged so far, answered 200 by every node.
every_node_serves_what_was_acknowledged() {
  local when=$1 n found acknowledged
  acknowledged=$(wc -l <"$work/acked.txt")
  for n in 1 2 3; do
    found=$("$bench" get --data "$work/preload.bin" --url "${node_http[$n]}" --concurrency 8 \
      --requests "$preload" | python3 -c 'import json, sys; print(json.load(sys.stdin)["status"].get("200", 0))')
    [ "$found" = "$preload" ] || fail "$when: node $n answers $found of the $preload packets loaded before"
    python3 - "${node_http[$n]}" "$work/acked.txt" <<'PY' || fail "$when: node $n lost acknowledged packets"
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
    log "$when: node $n serves all $preload packets loaded before and all $acknowledged acknowledged since"
  done
}

# runs_binary BIN: every node's process runs BIN.
runs_binary() {
  local n want
  want=$(readlink -f "$1")
  for n in 1 2 3; do
    [ "$(readlink -f "/proc/${node_pid[$n]}/exe")" = "$want" ] ||
      fail "node $n runs $(readlink -f "/proc/${node_pid[$n]}/exe"), not $want"
  done
}

# reports_itself BUILD: every node's own report in its /cluster/status names BUILD's version
# ("none": no build, as the previous release reports).
reports_itself() {
  local n
  for n in 1 2 3; do
    python3 -c 'import json, sys, urllib.request
with urllib.request.urlopen(f"http://{sys.argv[1]}/cluster/status", timeout=5) as answer:
    build = json.load(answer)["node"].get("build")
want = sys.argv[2]
assert (build is None) if want == "none" else (build and build["version"] == want), build' \
      "${node_admin[$n]}" "$1" || fail "node $n does not report build $1 of its own"
  done
}

# members_report VERSION: every member reports VERSION in node 1's /cluster/status (node 1
# reads its peers' statuses with the types of its own build: this build's, here).
members_report() {
  "$bin/pkraft" cluster --admin "${node_admin[1]}" status --json |
    python3 -c 'import json, sys
builds = {m["id"]: (m["status"] or {}).get("build") for m in json.load(sys.stdin)["members"]}
assert all(b and b["version"] == sys.argv[1] for b in builds.values()), builds' "$1"
}

roll up "$bin"
every_node_serves_what_was_acknowledged "after the upgrade"
version=$("$bin/pkraft" --version | sed -E 's/^pkraft ([^ ]+) .*/\1/')
want="last_started_by $("$bin/pkraft" --version | sed -E 's/^pkraft ([^ ]+) \((.*)\)$/\1 \2/')"
for n in 1 2 3; do
  grep -qxF "$want" "$work/cluster/node$n/data/build" ||
    fail "node $n's build record: $(cat "$work/cluster/node$n/data/build")"
done
members_report "$version" || fail "after the upgrade, not every member reports this build"
runs_binary "$bin/pkraft"
reports_itself "$version"
"$bin/pkraft" backup --admin "${node_admin[1]}" --token-file "$work/admin-token" \
  "$work/this-build.pkrbak" >/dev/null || fail "this build's backup failed"
# What a backup holds: every packet acknowledged so far, and at most every key used so far
# (a PUT that got no answer may have been stored).
this_build_holds="$((preload + $(wc -l <"$work/acked.txt"))) $first_key"

roll down "$old_dir"
every_node_serves_what_was_acknowledged "after the downgrade"
runs_binary "$old_bin"
reports_itself none
"$old_dir/pkraft" backup --admin "${node_admin[1]}" --token-file "$work/admin-token" \
  "$work/previous.pkrbak" >/dev/null || fail "the previous release's backup failed"
previous_holds="$((preload + $(wc -l <"$work/acked.txt"))) $first_key"

# restored_by BIN BACKUP: BIN restores BACKUP into a new data dir and verifies it; prints the
# packets it holds.
restored_by() {
  local dir
  dir=$(mktemp -d -p "$work")
  "$1" restore --data-dir "$dir/data" --advertise 127.0.0.1:1 "$2" >"$dir/restore.txt" 2>&1 ||
    fail "$("$1" --version) could not restore $2: $(tail -n 3 "$dir/restore.txt")"
  "$1" verify --data-dir "$dir/data" --json >"$dir/verify.json" 2>"$dir/verify.err" ||
    fail "$("$1" --version) found problems in what it restored from $2: $(cat "$dir/verify.json" "$dir/verify.err")"
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["packets"])' "$dir/verify.json"
}
for case in "$old_dir/pkraft $work/this-build.pkrbak $this_build_holds" \
  "$bin/pkraft $work/previous.pkrbak $previous_holds"; do
  read -r restorer backup least most <<<"$case"
  packets=$(restored_by "$restorer" "$backup")
  [ "$packets" -ge "$least" ] && [ "$packets" -le "$most" ] ||
    fail "$("$restorer" --version) restored $packets packets from $backup (expected $least to $most)"
  log "$("$restorer" --version) restored and verified $(basename "$backup"): $packets packets"
done

python3 - "$work/steps.jsonl" "$gap_max_ms" <<'PY'
import json, sys
steps = [json.loads(l) for l in open(sys.argv[1])]
limit = float(sys.argv[2])
print("rolling upgrade and downgrade, 3 nodes, each SIGTERM'd and started as the other build under writes through the other two:", file=sys.stderr)
for s in steps:
    print(f"  {s['direction']:>4}, node {s['node']} (leader before: {s['leader_before']}): longest run without a 204 "
          f"{s['longest_gap_ms']:.0f} ms, {s['acknowledged']} PUTs acknowledged, refused {s['refused'] or 'none'}, "
          f"p99 {s['put_p99_ms']:.0f} ms", file=sys.stderr)
worst = max(s["longest_gap_ms"] for s in steps)
if worst > limit:
    sys.exit(f"upgrade: FAIL: a step's gap of {worst:.0f} ms is over {limit:.0f} ms")
PY
log "OK"
