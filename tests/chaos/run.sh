#!/usr/bin/env bash
# `make chaos` and `make chaos-smoke` (docs/TESTING.md): RUNS chaos runs with the seeds SEED,
# SEED+1, ... (SEED is random unless given), each on a cluster of NODES voters with ROUNDS rounds
# of every fault kind, against $CHAOS_BIN_DIR/pkraft. Every run prints its seed and summary; a
# failing run keeps its history, schedule and node logs in $CHAOS_OUT/seed-N (default
# target/chaos). Exits non-zero if any run failed.
# POWER=1 puts every node's data dir on a lossy disk (pkraft-lossyfs; root and /dev/fuse) and
# adds the power cuts to every round; POWER=only runs rounds of power cuts alone. Every run on
# lossy disks also has a bad write in every round (a log append the disk acknowledged and lost
# or misdirected, shown by a power cut). DISK=1 adds
# disks low on space (the leader's, a follower's, every node's) to every round, on lossy disks.
# PARTITIONS=only runs rounds of the peer network's partitions alone (refused, black-holed and
# one-way cuts). CORRUPT=1 adds damage to one node's data on disk (its log, state, snapshot) to
# every round; CORRUPT=only runs rounds of that damage alone. CLOCKS=1 adds wall clocks stepped
# ahead, back and drifting (libfaketime) to every round; CLOCKS=only runs rounds of those alone.
# MIXED=1 runs a mixed-version cluster: the seed picks 1 to NODES-1 members that run the
# previous release (tests/upgrade/previous.sh builds it), the others this build; not with CLOCKS.
set -euo pipefail
cd "$(dirname "$0")/../.."

bin_dir=${CHAOS_BIN_DIR:?set CHAOS_BIN_DIR to the directory holding pkraft and pkraft-chaos}
seed=${SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
runs=${RUNS:-3}
nodes=${NODES:-3}
rounds=${ROUNDS:-3}
out_root=${CHAOS_OUT:-target/chaos}
case "${POWER:-}" in
  "" | 0) power_args=() ;;
  1) power_args=(--lossy-disk) ;;
  only) power_args=(--power-cuts-only) ;;
  *) echo "chaos: POWER must be 1 or only, not ${POWER}" >&2; exit 2 ;;
esac
case "${PARTITIONS:-}" in
  "" | 0) ;;
  only) power_args+=(--partitions-only) ;;
  *) echo "chaos: PARTITIONS must be only, not ${PARTITIONS}" >&2; exit 2 ;;
esac
case "${CORRUPT:-}" in
  "" | 0) ;;
  1) power_args+=(--corruption) ;;
  only) power_args+=(--corruption-only) ;;
  *) echo "chaos: CORRUPT must be 1 or only, not ${CORRUPT}" >&2; exit 2 ;;
esac
case "${CLOCKS:-}" in
  "" | 0) ;;
  1) power_args+=(--clocks) ;;
  only) power_args+=(--clocks-only) ;;
  *) echo "chaos: CLOCKS must be 1 or only, not ${CLOCKS}" >&2; exit 2 ;;
esac
case "${DISK:-}" in
  "" | 0) ;;
  1) power_args+=(--disk-faults) ;;
  *) echo "chaos: DISK must be 1, not ${DISK}" >&2; exit 2 ;;
esac
case "${MIXED:-}" in
  "" | 0) ;;
  1)
    case "${CLOCKS:-0}" in 0) ;; *) echo "chaos: MIXED=1 does not go with CLOCKS" >&2; exit 2 ;; esac
    power_args+=(--previous-bin "$(tests/upgrade/previous.sh)") ;;
  *) echo "chaos: MIXED must be 1, not ${MIXED}" >&2; exit 2 ;;
esac

failed=()
for ((i = 0; i < runs; i++)); do
  run_seed=$((seed + i))
  out="$out_root/seed-$run_seed"
  rm -rf "$out"
  if ! "$bin_dir/pkraft-chaos" run --bin "$bin_dir/pkraft" --out "$out" \
    --seed "$run_seed" --nodes "$nodes" --rounds "$rounds" ${power_args[@]+"${power_args[@]}"}; then
    failed+=("$run_seed")
  fi
done
if ((${#failed[@]})); then
  echo "chaos: FAILED seeds: ${failed[*]}; replay one with" \
    "make chaos SEED=<seed> RUNS=1 NODES=$nodes ROUNDS=$rounds${POWER:+ POWER=$POWER}${DISK:+ DISK=$DISK}${PARTITIONS:+ PARTITIONS=$PARTITIONS}${CORRUPT:+ CORRUPT=$CORRUPT}${CLOCKS:+ CLOCKS=$CLOCKS}${MIXED:+ MIXED=$MIXED}"
  exit 1
fi
echo "chaos: $runs runs passed (seeds $seed..$((seed + runs - 1)), $nodes nodes, $rounds rounds each${POWER:+, POWER=$POWER}${DISK:+, DISK=$DISK}${PARTITIONS:+, PARTITIONS=$PARTITIONS}${CORRUPT:+, CORRUPT=$CORRUPT}${CLOCKS:+, CLOCKS=$CLOCKS}${MIXED:+, MIXED=$MIXED})"
