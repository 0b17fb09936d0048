#!/usr/bin/env python3
"""Turns the JSON lines of tests/bench/run.sh into markdown tables (medians of the runs, ratios
to pkraft's peers, and every run for the record).

    report.py RESULTS.jsonl VERSIONS_JSON PARAMS_JSON [--update docs/BENCHMARKS.md]

Without --update the report goes to stdout. With it, the text between the
`<!-- bench:results:begin -->` and `<!-- bench:results:end -->` markers is replaced.
Exits non-zero when a run is not sane (failed requests, no DNS answers), so a broken harness
cannot produce a pretty table.
"""

import json
import statistics
import sys

BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"
NAMES = {"pkraft": "pkraft", "cluster": "pkraft 3-node", "iroh": "iroh-dns-server",
         "nsd": "NSD (server-count = cores)", "nsd1": "NSD (server-count 1)",
         "knot": "Knot DNS (udp-workers = cores)"}
# The DNS servers that answer from a precompiled zone: pkraft is also set against the best of
# them in each round (the highest q/s, the lowest latency), whichever it was.
BEST_PEERS = ("nsd", "nsd1", "knot")
# Issue 19's targets: leader SIGKILL -> first 204 through a survivor, the longest run without a
# 204 while a leader stops gracefully (SIGTERM: it hands its leadership over).
FAILOVER_TARGET_MS = 1500
HANDOVER_TARGET_MS = 500
# Results of dnsperf runs: over UDP, TCP, and DNS-over-HTTPS with GET and with POST.
DNSPERF_KINDS = ("dns", "dnstcp", "dohget", "dohpost")


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def runs(results, system, kind):
    return [r for r in results if r["system"] == system and r["kind"] == kind]


def median(rows, field):
    values = [r[field] for r in rows]
    return statistics.median(values) if values else None


def paired_ratio(results, a, b, kind, field):
    """Median over rounds of a's run r / b's run r. Runs are interleaved, so the two runs of one
    round saw the same machine; pairing them cancels most of this shared machine's drift."""
    pairs = zip(runs(results, a, kind), runs(results, b, kind))
    ratios = [x[field] / y[field] for x, y in pairs if y[field]]
    return f"{statistics.median(ratios):.2f}×" if ratios else "–"


def paired_best_ratio(results, a, peers, kind, field, higher_is_better):
    """Median over rounds of a's run r / the best of the peers' runs r: the highest value of
    field among them in that round if higher_is_better, else the lowest. Also names which peer
    was the best in how many rounds."""
    mine = runs(results, a, kind)
    theirs = [runs(results, p, kind) for p in peers]
    ratios, best_in = [], {}
    for i in range(min([len(mine)] + [len(t) for t in theirs])):
        values = [(t[i][field], p) for p, t in zip(peers, theirs)]
        value, peer = max(values) if higher_is_better else min(values)
        if value:
            ratios.append(mine[i][field] / value)
            best_in[peer] = best_in.get(peer, 0) + 1
    if not ratios:
        return "–"
    rounds = ", ".join(f"{NAMES[p]} in {best_in[p]}" for p in peers if p in best_in)
    return f"{statistics.median(ratios):.2f}× (best: {rounds} of {len(ratios)} rounds)"


def check(results):
    problems = []
    for r in results:
        name = f'{r["system"]} {r["kind"]}'
        if r["kind"] in ("load", "put", "get"):
            ok = sum(n for code, n in r["status"].items() if 200 <= int(code) < 300)
            if r["errors"] or ok != r["requests"]:
                problems.append(f'{name}: status {r["status"]}, {r["errors"]} errors')
        if r["kind"] in DNSPERF_KINDS and (r["completed"] == 0 or r["noerror"] != r["completed"]):
            problems.append(f'{name}: {r["completed"]:.0f} completed, {r["noerror"]:.0f} NOERROR')
        if r["kind"] == "restart" and r["acknowledged"] == 0:
            problems.append(f'{name}: no PUT acknowledged while node {r["node"]} stopped')
        if r["kind"] in ("dnslat", "dnslat1") and (r["requests"] == 0 or set(r["status"]) != {"0"}):
            problems.append(f'{name}: rcodes {r["status"]} (expected only NOERROR with records; 1000 = empty), {r["errors"]} timeouts')
    return problems


def fmt(value, digits=0):
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def report(results, versions, params):
    systems = [s for s in ("pkraft", "cluster", "iroh") if runs(results, s, "put")]
    ratio_systems = [s for s in ("pkraft", "cluster") if s in systems] if "iroh" in systems else []
    out = []
    w = out.append
    w(f'Measured {versions.get("date", "?")} on {versions.get("cpu", "?")} '
      f'({versions.get("cores", "?")} cores, kernel {versions.get("kernel", "?")}); '
      f'pkraft {versions.get("pkraft", "?")} ({versions.get("build", "?")} build), iroh-dns-server '
      f'{versions.get("iroh-dns-server", "?")}, {versions.get("nsd", "NSD ?")}, '
      f'{versions.get("knot", "Knot DNS ?")}, '
      f'{versions.get("dnsperf", "dnsperf ?")}, {versions.get("rustc", "?")}.')
    w("")
    w(f'Parameters: {params["keys"]:,} keys, {params["runs"]} interleaved runs (medians shown), '
      f'{params["concurrency"]} concurrent HTTP connections, {params["get_requests"]:,} GETs per run, '
      f'dnsperf `-c {params["dns_clients"]} -l {params["dns_seconds"]}`, closed-loop DNS latency with '
      f'{params["dns_clients"]} clients for {params["dns_latency_seconds"]} s, '
      f'{params["lag_samples"]} lag samples, {params.get("failover_trials", 0)} failover trials. '
      f'"pkraft 3-node" is a 3-node cluster on this one machine (default Raft timing), loaded '
      f'through all three nodes; its server CPU is the sum over the nodes.')
    w("")

    w("### HTTP relay")
    w("")
    w("| | " + " | ".join(NAMES[s] for s in systems)
      + "".join(f" | {NAMES[s]} / iroh (paired)" for s in ratio_systems) + " |")
    w("|---" * (len(systems) + 1 + len(ratio_systems)) + "|")
    for kind, label in (("put", "PUT"), ("get", "GET")):
        for field, unit, digits in (("rps", "/s", 0), ("p50_ms", " p50 ms", 2), ("p99_ms", " p99 ms", 2),
                                    ("server_cpu_us", " server CPU µs each", 0),
                                    ("machine_idle_pct", " machine idle %", 0)):
            values = [median(runs(results, s, kind), field) for s in systems]
            row = f"| {label}{unit} | " + " | ".join(fmt(v, digits) for v in values)
            for s in ratio_systems:
                row += " | " + paired_ratio(results, s, "iroh", kind, field)
            w(row + " |")
    if ratio_systems:
        w("")
        w("The ratio columns are medians of the per-round ratios (runs are interleaved, so each "
          "round's runs saw the same machine); they can differ from the ratio of the medians.")
    w("")

    dns_systems = [s for s in ("pkraft", "iroh", "nsd", "nsd1", "knot") if runs(results, s, "dns")]
    w("### DNS (dnsperf, and closed-loop clients over UDP)")
    w("")
    w("| | " + " | ".join(NAMES[s] for s in dns_systems) + " |")
    w("|---" * (len(dns_systems) + 1) + "|")
    rows = (("dns", "qps", "queries/s (dnsperf, UDP)", 0), ("dns", "avg_ms", "mean latency ms (dnsperf, UDP)", 3),
            ("dns", "lost", "lost (dnsperf, UDP)", 0), ("dns", "server_cpu_us", "server CPU µs per query (UDP)", 2),
            ("dnstcp", "qps", "queries/s (dnsperf -m tcp)", 0), ("dnstcp", "avg_ms", "mean latency ms (dnsperf -m tcp)", 3),
            ("dnstcp", "server_cpu_us", "server CPU µs per query (TCP)", 2),
            ("dohget", "qps", "queries/s (dnsperf -m doh, GET)", 0), ("dohget", "avg_ms", "mean latency ms (DoH GET)", 3),
            ("dohget", "server_cpu_us", "server CPU µs per query (DoH GET)", 2),
            ("dohpost", "qps", "queries/s (dnsperf -m doh, POST)", 0), ("dohpost", "avg_ms", "mean latency ms (DoH POST)", 3),
            ("dohpost", "server_cpu_us", "server CPU µs per query (DoH POST)", 2),
            ("dnslat", "rps", "queries/s (closed loop, 20 clients)", 0), ("dnslat", "p50_ms", "p50 ms (closed loop, 20 clients)", 3),
            ("dnslat", "p99_ms", "p99 ms (closed loop, 20 clients)", 3),
            ("dnslat1", "p50_ms", "p50 ms (1 client, one query outstanding)", 3),
            ("dnslat1", "p99_ms", "p99 ms (1 client, one query outstanding)", 3))
    for kind, field, label, digits in rows:
        if not any(runs(results, s, kind) for s in dns_systems):
            continue
        w(f"| {label} | " + " | ".join(fmt(median(runs(results, s, kind), field), digits) for s in dns_systems) + " |")
    for kind, field, what in (("dns", "qps", "queries/s, dnsperf UDP"), ("dnstcp", "qps", "queries/s, dnsperf TCP"),
                              ("dohget", "qps", "queries/s, DoH GET"), ("dohpost", "qps", "queries/s, DoH POST"),
                              ("dnslat", "p99_ms", "p99 latency, closed loop of 20 clients"),
                              ("dnslat1", "p50_ms", "p50 latency, 1 client")):
        ratios = [f"pkraft / {NAMES[s]}: {paired_ratio(results, 'pkraft', s, kind, field)}"
                  for s in dns_systems if s != "pkraft" and runs(results, s, kind)]
        # Against the best of NSD and Knot in each round: the higher q/s, the lower latency.
        peers = [s for s in BEST_PEERS if s in dns_systems and runs(results, s, kind)]
        if runs(results, "pkraft", kind) and "knot" in peers and len(peers) > 1:
            ratios.append("pkraft / best of NSD and Knot DNS: "
                          + paired_best_ratio(results, "pkraft", peers, kind, field, field == "qps"))
        if ratios:
            w("")
            w(f"Ratios ({what}, median of the per-round ratios): " + "; ".join(ratios) + ".")
    w("")

    cluster_dns = runs(results, "cluster", "dns")
    if cluster_dns:
        w("### DNS per node of the 3-node cluster (UDP, dnsperf, one node at a time)")
        w("")
        w("| node | queries/s | mean latency ms | lost |")
        w("|---|---|---|---|")
        for node in sorted({r["node"] for r in cluster_dns}):
            rows = [r for r in cluster_dns if r["node"] == node]
            w(f'| {node} | {fmt(median(rows, "qps"))} | {fmt(median(rows, "avg_ms"), 3)} | {fmt(median(rows, "lost"))} |')
        w("")

    w("### Visibility after the PUT is acknowledged")
    w("")
    w("The cluster's PUTs go to node 2; a node's lag is the time from the acknowledgement to its "
      "first DNS answer with the new record.")
    w("")
    w("| | PUT p50 ms | PUT p99 ms | visible p50 ms | visible p99 ms | visible max ms |")
    w("|---|---|---|---|---|---|")
    for s in systems:
        for r in runs(results, s, "lag"):
            for i, node in enumerate(r["nodes"], 1):
                name = NAMES[s] + (f" node {i}" if len(r["nodes"]) > 1 else "")
                w(f'| {name} | {fmt(r["put_p50_ms"], 2)} | {fmt(r["put_p99_ms"], 2)} | '
                  f'{fmt(node["p50_ms"], 2)} | {fmt(node["p99_ms"], 2)} | {fmt(node["max_ms"], 2)} |')
    w("")

    failovers = runs(results, "cluster", "failover")
    if failovers:
        times = [r["accepted_ms"] for r in failovers]
        w("### Failover (3-node cluster)")
        w("")
        w("SIGKILL the leader, then PUT a packet not stored before through a survivor until it is "
          "accepted (204); time from the kill to the acceptance.")
        w("")
        w("| trials | median ms | max ms | target ms (max) | every trial ms |")
        w("|---|---|---|---|---|")
        w(f'| {len(times)} | {fmt(statistics.median(times))} | {fmt(max(times))} | {FAILOVER_TARGET_MS:,} | '
          + ", ".join(fmt(t) for t in times) + " |")
        w("")

    restarts = runs(results, "cluster", "restart")
    if restarts:
        w("### Rolling restart under write load (3-node cluster)")
        w("")
        w("Each node in turn gets SIGTERM while a steady stream of new PUTs goes through the two "
          "others; a leader hands its leadership over before it stops. The longest run without a "
          "204 in each stop:")
        w("")
        w(f"| node stopped | stops | median ms | max ms | target ms (max) | every stop ms |")
        w("|---|---|---|---|---|---|")
        for label, leader in (("leader", True), ("follower", False)):
            gaps = [r["longest_gap_ms"] for r in restarts if r["leader"] == leader]
            if gaps:
                target = f"{HANDOVER_TARGET_MS:,}" if leader else "–"
                w(f'| {label} | {len(gaps)} | {fmt(statistics.median(gaps))} | {fmt(max(gaps))} | '
                  f'{target} | ' + ", ".join(fmt(g) for g in gaps) + " |")
        refused = {}
        for r in restarts:
            for status, count in r["refused"].items():
                refused[status] = refused.get(status, 0) + count
        w("")
        w(f'PUTs acknowledged during the stops: {sum(r["acknowledged"] for r in restarts):,}; '
          f'not acknowledged (retried): {refused or "none"}.')
        w("")

    changes = runs(results, "cluster", "leader_changes")
    if changes:
        c = changes[0]
        w(f'Leader changes during the measured rounds (PUT, GET and DNS load; '
          f'`pkraft_raft_leader_changes_total` summed over the nodes): {c["after"] - c["before"]} '
          f'(target 0).')
        w("")

    w("### Memory at the end of the run")
    w("")
    w("| | RSS MiB | peak RSS MiB |")
    w("|---|---|---|")
    for s in ("pkraft", "cluster", "iroh", "nsd", "nsd1", "knot"):
        for r in runs(results, s, "memory"):
            name = NAMES[s] + (f' node {r["node"]}' if "node" in r else "")
            w(f'| {name} | {fmt(r["rss_kib"] / 1024, 1)} | {fmt(r["hwm_kib"] / 1024, 1)} |')
    w("")

    w("<details><summary>Every run</summary>")
    w("")
    w("| system | kind | run | result |")
    w("|---|---|---|---|")
    for s in ("pkraft", "cluster", "iroh", "nsd", "nsd1", "knot"):
        for kind in ("load", "put", "get") + DNSPERF_KINDS + ("dnslat", "dnslat1"):
            for i, r in enumerate(runs(results, s, kind), 1):
                if kind in DNSPERF_KINDS:
                    node = f' (node {r["node"]})' if "node" in r else ""
                    cpu = f', {fmt(r["server_cpu_us"], 2)} µs server CPU each' if "server_cpu_us" in r else ""
                    text = f'{fmt(r["qps"])} q/s{node}, mean {fmt(r["avg_ms"], 3)} ms, lost {fmt(r["lost"])}{cpu}'
                else:
                    cpu = (f', {fmt(r["server_cpu_us"])} µs server CPU each, machine {fmt(r["machine_idle_pct"])} % idle'
                           if "server_cpu_us" in r else "")
                    text = f'{fmt(r["rps"])} req/s, p50 {fmt(r["p50_ms"], 2)} ms, p99 {fmt(r["p99_ms"], 2)} ms{cpu}, status {r["status"]}'
                w(f"| {NAMES[s]} | {kind} | {i} | {text} |")
    w("")
    w("</details>")
    return "\n".join(out) + "\n"


def main():
    args = sys.argv[1:]
    update = None
    if "--update" in args:
        i = args.index("--update")
        update = args[i + 1]
        args = args[:i] + args[i + 2:]
    results_path, versions, params = args[0], json.loads(args[1]), json.loads(args[2])
    results = load(results_path)
    problems = check(results)
    text = report(results, versions, params)
    if problems:
        # Show what was measured, but never let a broken run into the document.
        sys.stdout.write(text)
        sys.exit("bench: runs that are not sane (docs not updated):\n  " + "\n  ".join(problems))
    if update:
        with open(update) as f:
            doc = f.read()
        if BEGIN not in doc or END not in doc:
            sys.exit(f"{update} has no {BEGIN} … {END} markers")
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        with open(update, "w") as f:
            f.write(head + BEGIN + "\n" + text + END + tail)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
