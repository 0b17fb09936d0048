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

previous=$(tr -d '[:space:]' <tests/upgrade/PREVIOUS)
profile=${UPGRADE_PROFILE:-release}
case "$profile" in
  release) old_dir=$PWD/target/upgrade/$previous flags=(--release) ;;
  debug) old_dir=$PWD/target/upgrade/$previous-debug flags=() ;;
  *) echo "upgrade: UPGRADE_PROFILE must be release or debug, not $profile" >&2; exit 2 ;;
esac
if [ ! -x "$old_dir/pkraft" ]; then
  git cat-file -e "$previous^{commit}" 2>/dev/null || {
    echo "upgrade: this clone lacks the previous release's revision $previous" \
      "(tests/upgrade/PREVIOUS); a shallow clone needs 'git fetch --unshallow'" >&2
    exit 2
  }
  echo "upgrade: building the previous release ($previous, $profile)" >&2
  src=$PWD/target/upgrade/src-$previous
  rm -rf "$src"
  mkdir -p "$src"
  git archive "$previous" | tar -x -C "$src"
  (cd "$src" && CARGO_TARGET_DIR=$PWD/../target cargo build "${flags[@]}" --locked -p pkraft >&2)
  install -D -m 0755 "$PWD/target/upgrade/target/$profile/pkraft" "$old_dir/pkraft"
  rm -rf "$src"
fi
echo "$old_dir/pkraft"
