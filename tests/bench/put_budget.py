#!/usr/bin/env python3
"""The stages of a PUT in `perf script` output (tests/bench/put_budget.sh).

Classify: `perf script | put_budget.py --system S --role R --version V` prints one JSON line:
the samples counted per stage. A sample belongs to the first stage in STAGES whose pattern
matches any frame of its stack: the specific steps of a PUT first (a signature check called from
the HTTP handler is the signature check's, a redb insert made by the compile step the compile
step's), then what every stack passes through (HTTP, the runtime) for what is left. A stack no
pattern matches is "other". Stacks perf cut short (`--call-graph dwarf` copies 16 KiB of each
stack) may lack the frame that names their stage and land in a later one.

Report: `put_budget.py --report MEASURED PROFILED` prints, per system and role, each stage's
share of the samples and its µs of CPU per PUT (the share times the CPU per PUT of the
un-profiled runs), the medians of the rounds.
"""

import argparse
import json
import re
import statistics
import sys

# (stage, pattern): a sample is the first stage whose pattern matches any frame of its stack. A
# frame is "symbol+offset (dso)" as perf script prints it.
STAGES = [
    # Not a PUT's: the scrub's sweep re-verifies stored packets in the background.
    ("background scrub", r"scrub::|scrub_packets|sweep_state"),
    ("key and signature check", r"ed25519|curve25519|VerifiedPacket::verify|parse_z32_key"),
    ("compile (DNS answers)", r"compiled::|answers_row|CachedZone::from_signed_packet"),
    # iroh-dns-server's store: the handler's calls into it, and its task's redb inserts and the
    # commit it makes once a second.
    ("store writes and commits (iroh-dns-server)", r"iroh_dns_server::store"),
    # The open transaction's commit (`ApplyTxn::commit_open`, `finish`), by the writer thread.
    ("apply: redb commit", r"ApplyTxn::commit|ApplyTxn::finish|Owner::commit"),
    # The storage's and the network's patterns are anchored at the frame's start: openraft's
    # core and its replication tasks name pkraft's log store, state machine and network among
    # their generic parameters (`RaftCore<TypeConfig, PeerNetwork, LogStore, StateMachine>`),
    # and unanchored those frames took raft core's samples for the apply's. The log's writer
    # thread is known by its root frame too (its waits for the next append).
    ("apply: rows (packets, answers, expiry)", r"ApplyTxn|^<?pkraft_raft_storage::state_machine::"),
    ("log append + sync",
     r"^<?pkraft_raft_storage::log_store::"
     r"|^__rust_begin_short_backtrace<pkraft_raft_storage::log_store::|fdatasync|sync_data"),
    ("replicate", r"^<?openraft::replication::|^<?pkraft_peer::|append_entries|install_snapshot"),
    ("log encode", r"postcard::|codec::encode"),
    # Anchored: the relay handler's frames name `write_path::admission::Admission` among their
    # generic parameters, which are the handler's (HTTP), not the write path's own work.
    ("queue + batch", r"^<?pkraft_raft::write_path::|batcher"),
    ("raft core", r"openraft::"),
    ("store reads (redb)", r"redb::|pkraft_state::"),
    ("HTTP", r"hyper::|axum::|tower::|tower_http::|pkraft_http::|httparse|http_body"),
    ("kernel network", r"tcp_|inet_|sock_|__sys_send|__sys_recv|skb_|netif_|net_rx"),
    ("allocator", r"malloc|free|realloc|__rust_alloc|__rust_dealloc"),
    ("tokio runtime", r"tokio::|mio::|epoll|futex|parking_lot|std::sys::"),
]
COMPILED = [(stage, re.compile(pattern)) for stage, pattern in STAGES]


def stage_of(frames):
    """The first stage whose pattern matches a frame of the stack."""
    for stage, pattern in COMPILED:
        if any(pattern.search(frame) for frame in frames):
            return stage
    return "other"


def classify(lines):
    counts = {}
    frames = []
    in_sample = False

    def close():
        if frames:
            stage = stage_of(frames)
            counts[stage] = counts.get(stage, 0) + 1

    for line in lines:
        if not line.strip():
            close()
            frames = []
            in_sample = False
            continue
        if not line.startswith((" ", "\t")):
            close()
            frames = []
            in_sample = True
            continue
        if in_sample:
            # "\t    55d0c0 symbol+0x12 (/path/dso)"
            parts = line.strip().split(None, 1)
            frames.append(parts[1] if len(parts) > 1 else parts[0])
    close()
    return counts


def report(measured_path, profiled_path):
    measured = [json.loads(l) for l in open(measured_path) if l.strip()]
    profiled = [json.loads(l) for l in open(profiled_path) if l.strip()]
    systems = sorted({(p["system"], p["role"]) for p in profiled})
    for system, role in systems:
        cpus = [m["cpu_us_per_put"][role] for m in measured if m["system"] == system]
        rates = [m["put_s"] for m in measured if m["system"] == system]
        rounds = [p for p in profiled if p["system"] == system and p["role"] == role]
        cpu = statistics.median(cpus)
        stages = sorted({s for p in rounds for s in p["samples"]})
        shares = {}
        for stage in stages:
            shares[stage] = statistics.median(
                p["samples"].get(stage, 0) / max(sum(p["samples"].values()), 1) for p in rounds
            )
        samples = sum(sum(p["samples"].values()) for p in rounds)
        print(f"\n{system}, {role}: {statistics.median(rates):,.0f} PUT/s, "
              f"{cpu:.0f} µs of CPU per PUT (medians of {len(cpus)} rounds; "
              f"CPU per PUT by round {', '.join(f'{c:.0f}' for c in cpus)}); "
              f"{samples:,} samples")
        print("| stage | share | µs per PUT |")
        print("|---|---|---|")
        for stage in sorted(stages, key=lambda s: -shares[s]):
            print(f"| {stage} | {100 * shares[stage]:.1f} % | {cpu * shares[stage]:.1f} |")
        # Wall time: where a PUT and its batch wait, from the node's own histograms.
        walls = [m["wall_ms"][role] for m in measured
                 if m["system"] == system and m.get("wall_ms", {}).get(role)]
        if walls:
            print(f"\n{system}, {role}: wall time, means over each run (median of {len(walls)} runs)")
            print("| stage | mean |")
            print("|---|---|")
            for label in walls[0]:
                values = [w[label] for w in walls if label in w]
                unit = "" if label == "packets per batch" else " ms"
                print(f"| {label} | {statistics.median(values):.2f}{unit} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system")
    parser.add_argument("--role")
    parser.add_argument("--version", type=int)
    parser.add_argument("--report", nargs=2, metavar=("MEASURED", "PROFILED"))
    args = parser.parse_args()
    if args.report:
        report(*args.report)
        return
    if not (args.system and args.role):
        sys.exit("--system and --role name the profile (or --report MEASURED PROFILED)")
    counts = classify(sys.stdin)
    print(json.dumps({"system": args.system, "role": args.role, "version": args.version,
                      "samples": counts}))


if __name__ == "__main__":
    main()
