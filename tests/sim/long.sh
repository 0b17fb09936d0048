#!/usr/bin/env bash
# The simulator's long run (docs/TESTING.md, "A simulated cluster"; `make sim-long`): the fault
# test (`faults_of_every_kind_lose_no_acknowledged_packet`) over a range of seeds, in `make sim`'s
# seeded build (profile `sim`: release speed, debug assertions on), one process per core, each
# over its own part of the range. Prints each run's line, then the totals: runs, faults made by
# kind, the client operations checked, failures, the real time and the faults an hour. A
# failing run stops its process (the seeds after it in that part are not run, and the totals
# say how many ran) and names its seed
# and the command that replays it; the failed processes' logs are kept in
# $SIM_TARGET_DIR/sim-long/.
#
#   SIM_SEEDS=1-2000 SIM_JOBS=2 tests/sim/long.sh
#
# SIM_TEST names another test of tests/sim.rs that takes SIM_SEEDS and prints each run's line,
# e.g. five_nodes_under_faults_of_every_kind_lose_no_acknowledged_packet (the cluster of five).
# SIM_PRINT_RUNS=0 prints the failures and the totals only (`make sim-ci`). SIM_REPLAY=<n>
# (default 0; at most the range's size) then runs the range's first n seeds again in a new
# process, and fails unless each gives the history it gave the first time: a replay across
# processes, which a rerun in the same process (`make sim`'s determinism test) can miss
# (docs/SIMULATION.md, "Determinism, measured").
set -euo pipefail
cd "$(dirname "$0")/../.."

seeds=${SIM_SEEDS:-1-2000}
jobs=${SIM_JOBS:-$(nproc)}
first=${seeds%-*} last=${seeds#*-}
[[ "$first" =~ ^[0-9]+$ && "$last" =~ ^[0-9]+$ && "$first" -le "$last" ]] ||
  { echo "sim-long: SIM_SEEDS=$seeds: a range of seeds, first-last" >&2; exit 2; }
[[ "$jobs" =~ ^[0-9]+$ && "$jobs" -ge 1 ]] || { echo "sim-long: SIM_JOBS=$jobs: 1 or more" >&2; exit 2; }
test=${SIM_TEST:-faults_of_every_kind_lose_no_acknowledged_packet}
[[ "$test" =~ ^[a-z0-9_]+$ ]] || { echo "sim-long: SIM_TEST=$test: the name of a test in tests/sim.rs" >&2; exit 2; }
replay=${SIM_REPLAY:-0}
[[ "$replay" =~ ^[0-9]+$ ]] ||
  { echo "sim-long: SIM_REPLAY=$replay: a number of seeds" >&2; exit 2; }
[ "$replay" -le $((last - first + 1)) ] || replay=$((last - first + 1))

x86=""
[ "$(uname -m)" = x86_64 ] && x86='--cfg curve25519_dalek_backend="avx512"'
export RUSTFLAGS="--cfg tokio_unstable $x86"
export CARGO_TARGET_DIR=${SIM_TARGET_DIR:-target/sim}
binary=$(cargo test --profile sim --locked -p pkraft-sim --test sim --no-run --message-format=json |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "sim":
        print(m["executable"])')
[ -x "$binary" ] || { echo "sim-long: no test binary built" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
count=$((last - first + 1))
started=$(date +%s.%N)
pids=() logs=()
for ((job = 0; job < jobs; job++)); do
  from=$((first + count * job / jobs)) to=$((first + count * (job + 1) / jobs - 1))
  [ "$from" -le "$to" ] || continue
  SIM_SEEDS="$from-$to" "$binary" --exact "$test" \
    --nocapture >"$out/$job.log" 2>&1 &
  pids+=($!) logs+=("$out/$job.log")
done
failed=0 kept="$CARGO_TARGET_DIR/sim-long"
for ((i = 0; i < ${#pids[@]}; i++)); do
  if ! wait "${pids[$i]}"; then
    failed=$((failed + 1))
    mkdir -p "$kept"
    cp "${logs[$i]}" "$kept/"
  fi
done
seconds=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
replay_status=0
if [ "$replay" -gt 0 ]; then
  SIM_SEEDS="$first-$((first + replay - 1))" "$binary" --exact "$test" --nocapture \
    >"$out/replay.txt" 2>&1 ||
    replay_status=$?
  [ "$replay_status" -eq 0 ] || grep -h -A 4 -E 'panicked' "$out/replay.txt" || true
fi
if [ "${SIM_PRINT_RUNS:-1}" != 0 ]; then
  cat "$out"/*.log | grep -E '^seed [0-9]+: ' || true
fi
grep -h -A 4 -E 'panicked' "$out"/*.log || true
[ "$failed" -eq 0 ] || echo "sim-long: the failed processes' logs are in $kept/"
python3 - "$out" "$seconds" "$failed" "$seeds" "$jobs" "$count" "$replay" "$replay_status" \
  "$kept" "$test" <<'PY'
import collections, glob, os, re, shutil, sys
out, seconds, failed, seeds, jobs, count, replay, replay_status, kept, test = (
    sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5],
    int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8]), sys.argv[9], sys.argv[10])
RUN = re.compile(r"seed (\d+): \[.*history (\w+)")
runs, kinds, ops, acked, histories = 0, collections.Counter(), 0, 0, {}
installs, runs_installing, joined, removed = 0, 0, 0, 0
for path in glob.glob(f"{out}/*.log"):
    for line in open(path, errors="replace"):
        if re.match(r"seed \d+: \[", line):
            runs += 1
            ran = RUN.search(line)
            if ran:
                histories[int(ran.group(1))] = ran.group(2)
            kinds.update(re.findall(r"kind: (\w+)", line))
            counted = re.search(r"(\d+) ops \((\d+) PUTs acknowledged", line)
            if counted:
                ops += int(counted.group(1))
                acked += int(counted.group(2))
            if re.search(r"joined Some\(\d+\)", line):
                joined += 1
            if re.search(r"removed Some\(\d+\)", line):
                removed += 1
            installed = re.search(r"(\d+) snapshots installed", line)
            if installed and int(installed.group(1)) > 0:
                installs += int(installed.group(1))
                runs_installing += 1
faults = sum(kinds.values())
by_kind = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
print(f"sim-long: {test}, seeds {seeds}, {jobs} processes: {runs} of {count} runs passed, {failed} "
      f"processes failed; {faults} faults ({by_kind}); {seconds:.0f} s; "
      f"{faults * 3600 / seconds:,.0f} faults an hour; {ops} client operations checked "
      f"({acked} PUTs acknowledged); {installs} snapshots installed, in {runs_installing} "
      f"runs; a node joined in {joined} runs, a voter was removed in {removed}")
replayed_same = True
if replay:
    again = {}
    for line in open(f"{out}/replay.txt", errors="replace"):
        ran = RUN.search(line)
        if ran:
            again[int(ran.group(1))] = ran.group(2)
    first = int(seeds.split("-")[0])
    # A seed with no history in either pass (its run failed, or its line no longer names a
    # history) is not the same: the check never passes on what it did not compare.
    differ = [s for s in range(first, first + replay)
              if s not in histories or s not in again or again[s] != histories[s]]
    replayed_same = not differ and replay_status == 0
    for s in differ:
        if s not in histories or s not in again:
            print(f"sim-long: seed {s} has no history in "
                  f"{'the first pass' if s not in histories else 'the replay'}: not compared")
        else:
            print(f"sim-long: seed {s} gave history {histories[s]} and then {again[s]} in "
                  f"another process: something in the run escapes the simulation (compare: "
                  f"SIM_HISTORY=1 SIM_SEEDS={s} make sim, twice)")
    if replayed_same:
        print(f"sim-long: seeds {first}-{first + replay - 1} run again in another process: "
              f"the same histories")
    else:
        if replay_status != 0:
            print(f"sim-long: the replay's process failed (exit {replay_status})")
        os.makedirs(kept, exist_ok=True)
        shutil.copy(f"{out}/replay.txt", kept)
        print(f"sim-long: the replay's log is in {kept}/replay.txt")
# A run that passed prints its line; fewer lines than seeds is a failure (or a test renamed
# out of reach of --exact, which runs nothing).
# About two runs in five install a snapshot; a hundred runs and more with none means installs
# no longer happen (a setting or the counted log line changed), and every run would pass
# whether or not they work.
installs_seen = installs > 0 or runs < 100
if not installs_seen:
    print(f"sim-long: no snapshot installed in {runs} runs")
sys.exit(0 if failed == 0 and runs == count and replayed_same and installs_seen else 1)
PY
