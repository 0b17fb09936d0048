#!/usr/bin/env bash
# The write path's guard (`make bench-guard`): this tree's release build against the build of a
# base commit, through tests/bench/ab.sh (single node and 3-node cluster, interleaved rounds,
# iroh-dns-server as the yardstick when `make bench` has installed it). Ends with the line a
# commit that touches the PUT path carries in its message, and docs/BENCHMARKS.md's history
# table a row of ("The write path's history").
#
#   BENCH_B=target/release tests/bench/guard.sh
#
# BENCH_BASE: the base commit (default: HEAD when the crates or the lock file differ from it,
# else HEAD~1, the commit before the one under test). It is built from `git archive` into
# target/bench-base/<commit>/ once (about 5 minutes the first time; later bases build
# incrementally in target/bench-base/target/). BENCH_RUNS, BENCH_KEYS, BENCH_AB_IROH: as for
# ab.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh

b_dir=${BENCH_B:?BENCH_B: the bin dir of the build under test}
need_bins guard "$b_dir"
if [ -n "${BENCH_BASE:-}" ]; then
  base=$BENCH_BASE
elif git diff --quiet HEAD -- crates Cargo.toml Cargo.lock; then
  base=HEAD~1
else
  base=HEAD
fi
base_commit=$(git rev-parse --verify --quiet "$base^{commit}") || {
  echo "guard: $base names no commit of this clone (a shallow clone needs 'git fetch --unshallow')" >&2
  exit 2
}
short=$(git rev-parse --short=7 "$base_commit")
a_dir=$PWD/target/bench-base/$base_commit
build_revision "$base_commit" release "$a_dir" pkraft pkraft-bench

iroh_bin=$(iroh_dns_server_bin)
with_iroh=${BENCH_AB_IROH:-$([ -x "$iroh_bin" ] && echo 1 || echo 0)}
[ -n "${BENCH_AB_IROH:-}" ] || [ "$with_iroh" = 1 ] ||
  echo "guard: no iroh-dns-server at $iroh_bin (make bench installs it): running without it" >&2
echo "guard: A = $short ($base), B = $b_dir" >&2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# The guard's load is always `make bench`'s, single node and cluster, whatever the caller's
# environment holds for ab.sh's other options.
BENCH_A=$a_dir BENCH_B=$b_dir BENCH_AB_IROH=$with_iroh BENCH_AB_CLUSTER=1 BENCH_CONCURRENCY=64 \
  tests/bench/ab.sh | tee "$out"
# ab.sh's last line is the B/A summary; the commit message names the base with it.
summary=$(tail -n 1 "$out")
case "$summary" in
  "B/A "*"single PUT/s"*"cluster PUT/s"*) echo "bench-guard: A = $short, ${summary}" ;;
  *) echo "guard: ab.sh printed no B/A line" >&2; exit 1 ;;
esac
