#!/usr/bin/env bash
# Prints the path of the previous release's pkraft binary, building it first if it is not there:
# the revision in tests/upgrade/PREVIOUS (until a second release exists: main before the
# consensus crate was split into the node's parts), from `git archive` alone, into
# target/upgrade/<rev>/ (kept: later calls build nothing). UPGRADE_PROFILE=release (the
# default; about 5 minutes the first time) or debug (CI's smoke, which has no release build of
# its own). Used by tests/upgrade/rolling.sh and by the mixed-version chaos runs
# (tests/chaos/run.sh, MIXED=1). Progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh

previous=$(tr -d '[:space:]' <tests/upgrade/PREVIOUS)
profile=${UPGRADE_PROFILE:-release}
case "$profile" in
  release) old_dir=$PWD/target/upgrade/$previous ;;
  debug) old_dir=$PWD/target/upgrade/$previous-debug ;;
  *) echo "upgrade: UPGRADE_PROFILE must be release or debug, not $profile" >&2; exit 2 ;;
esac
echo "upgrade: the previous release is $previous ($profile)" >&2
build_revision "$previous" "$profile" "$old_dir" pkraft
echo "$old_dir/pkraft"
