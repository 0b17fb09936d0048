#!/usr/bin/env bash
# Differential DNS check against NSD: the same records served by pkraft (published through its
# relay) and by NSD (from a zone file), the same queries sent to both over UDP (with and without
# EDNS) and TCP, and every differing answer reported (`pkraft-bench dns-diff`). Differences not
# listed as intended (with their reason, in crates/pkraft-bench/src/dns_diff.rs) fail the check.
#
# Usage: tests/e2e/nsd_diff.sh [BIN_DIR]   (BIN_DIR holds pkraft and pkraft-bench; default
#        target/debug). Needs nsd (Debian package nsd); .ci/run installs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/nsd.sh
source tests/lib/nsd.sh
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh
bin_dir=${1:-target/debug}
pkraft="$bin_dir/pkraft" bench="$bin_dir/pkraft-bench"
origin=pkarr.test
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "nsd_diff: FAIL: $*" >&2
  for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
  exit 1
}
command -v nsd >/dev/null || fail "nsd is missing (Debian package nsd)"
[ -x "$pkraft" ] && [ -x "$bench" ] || fail "$pkraft or $bench not built"

# pkraft, with the apex the zone file has: the origin as its own nameserver, A 127.0.0.1.
http=$(loopback_port)
dns=127.0.0.1:$(loopback_port)
single_node_config "$work/pkraft.toml" "$work/pkraft-data" "127.0.0.1:$http" "$dns" \
  "origins = [\"$origin\"]
nameservers = [\"$origin\"]
apex_a = [\"127.0.0.1\"]"
RUST_LOG=info "$pkraft" serve --config "$work/pkraft.toml" >"$work/pkraft.log" 2>&1 &
pids+=($!)
up=
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$http/healthz" >/dev/null && { up=yes; break; }
  sleep 0.1
done
[ -n "$up" ] || fail "pkraft did not start within 30 s"

# Key 0 is large (an answer of about 800 bytes): UDP without EDNS, or with EDNS 512, must
# truncate it.
"$bench" gen --keys 10 --versions 1 --large-keys 1 --out "$work/data.bin" 2>/dev/null
"$bench" put --data "$work/data.bin" --version 0 --url "http://127.0.0.1:$http/pkarr" --concurrency 4 >/dev/null
"$bench" queries --data "$work/data.bin" --origin "$origin" --version 0 \
  --queries "$work/queries.txt" --zone "$work/$origin.zone"

# NSD on the zone file with the same records.
nsd_port=$(loopback_port)
nsd_setup "$work/nsd" "$nsd_port" "$origin" "$work/$origin.zone"
nsd -d -c "$work/nsd/nsd.conf" >"$work/nsd.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  dig +short +tries=1 +time=1 @127.0.0.1 -p "$nsd_port" "$origin" SOA >/dev/null 2>&1 && break
  sleep 0.1
done

"$bench" dns-diff --data "$work/data.bin" --server "$dns" --reference "127.0.0.1:$nsd_port" \
  --origin "$origin" --keys 3 >"$work/diff.json" || {
  [ -n "${NSD_DIFF_OUT:-}" ] && cp "$work/diff.json" "$NSD_DIFF_OUT"
  python3 -m json.tool "$work/diff.json" >&2 || cat "$work/diff.json" >&2
  fail "pkraft's answers differ from NSD's"
}
python3 - "$work/diff.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
intended = len(report["differences"])
print("nsd_diff: OK: %d queries, %d identical, %d intended differences"
      % (report["cases"], report["identical"], intended))
for difference in report["differences"][:1]:
    print("nsd_diff: intended, e.g. " + difference["case"]["what"] + ": " + difference["intended"])
PY
