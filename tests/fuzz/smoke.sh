#!/usr/bin/env bash
# Runs every cargo-fuzz target for FUZZ_SECONDS (default 30) each, starting from its seeds
# (tests/fuzz/seeds/TARGET); the corpus grows in tests/fuzz/corpus/TARGET (not committed).
# A crash fails the run and leaves its input in tests/fuzz/artifacts/TARGET/; reproduce it with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz -s none TARGET ARTIFACT`, then turn it
# into a regression test (docs/TESTING.md, "Fuzzing").
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). cargo fuzz passes unstable `-Z`
# flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. `-s none`: no sanitizer (the
# code has no `unsafe`; what is looked for is panics, including debug-assertion overflows).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${FUZZ_SECONDS:-30}
command -v cargo-fuzz >/dev/null ||
  { echo "fuzz-smoke: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2; exit 1; }
export RUSTC_BOOTSTRAP=1
for target in relay_payload dns_request config; do
  corpus=tests/fuzz/corpus/$target
  mkdir -p "$corpus"
  echo "fuzz-smoke: $target for ${seconds}s"
  log=$(mktemp)
  status=0
  cargo fuzz run --fuzz-dir tests/fuzz -s none "$target" "$corpus" "tests/fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 ||
    status=$?
  grep -E '^#[0-9]+.*(INITED|DONE)|^stat::(number_of_executed_units|peak_rss_mb)' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$log" >&2
    rm -f "$log"
    echo "fuzz-smoke: $target FAILED (exit $status); the input is in tests/fuzz/artifacts/$target/" >&2
    exit 1
  fi
  rm -f "$log"
done
echo "fuzz-smoke: every target ran ${seconds}s without a crash"
