#!/usr/bin/env python3
"""Plots `make bench-scale` results (target/bench-results-scale.jsonl): each figure against the
number of stored records, one panel per figure, as an SVG written without plotting libraries
(so the bench needs nothing beyond python3). Also prints the results as a Markdown table with
each figure's ratio to the first (smallest) point.

    scale_plot.py RESULTS.jsonl OUT.svg
"""
import json
import math
import sys

PANELS = [
    # (title, unit, [(field, label)], scale to apply)
    ("DNS, names never asked before", "q/s",
     [("dns_cold_qps", "first round"), ("dns_cold_later_qps", "later round")], 1),
    ("DNS, random keys", "q/s", [("dns_random_qps", "")], 1),
    ("GET", "req/s", [("get_per_s", "")], 1),
    ("PUT (20,000 new keys)", "req/s", [("put_per_s", "")], 1),
    ("Load through the relay", "PUT/s", [("load_put_per_s", "")], 1),
    ("Restart after SIGKILL", "s", [("restart_s", "")], 1),
    ("New learner catches up", "s", [("learner_catch_up_s", "")], 1),
    ("Backup (streamed to a file)", "s", [("backup_s", "")], 1),
    ("Memory", "MiB", [("steady_rss_mib", "steady RSS"), ("peak_rss_load_mib", "peak, load"),
                       ("peak_rss_after_backup_and_send_mib", "peak, backup + send"),
                       ("learner_peak_rss_mib", "learner peak")], 1),
    ("Disk per record", "bytes", [("state_per_record", "state.redb"),
                                  ("log_per_record", "raft log"),
                                  ("snapshot_per_record", "snapshot")], 1),
    ("RSS per record", "bytes", [("rss_per_record", "steady RSS")], 1),
]
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def derived(row):
    records = max(row["records"], 1)
    row["state_per_record"] = row["state_bytes"] / records
    row["log_per_record"] = row["log_bytes"] / records
    row["snapshot_per_record"] = row["snapshot_bytes"] / records
    row["rss_per_record"] = row["steady_rss_mib"] * 1024 * 1024 / records
    return row


def human(value):
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.3g}"


def panel(rows, x0, y0, w, h, title, unit, series):
    out = [f'<g transform="translate({x0},{y0})">',
           f'<text x="{w / 2}" y="14" text-anchor="middle" font-weight="bold">{title}</text>']
    left, top, right, bottom = 52, 24, 10, 34
    pw, ph = w - left - right, h - top - bottom
    xs = [math.log10(max(r["records"], 1)) for r in rows]
    xmin, xmax = min(xs), max(xs)
    if xmax == xmin:
        xmax = xmin + 1
    values = [r[f] for r in rows for f, _ in series if r.get(f) is not None]
    ymax = max(values) * 1.1 if values and max(values) > 0 else 1
    px = lambda x: left + (x - xmin) / (xmax - xmin) * pw
    py = lambda y: top + ph - y / ymax * ph
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for i in range(5):
        y = ymax * i / 4
        out.append(f'<text x="{left - 4}" y="{py(y) + 4}" text-anchor="end" font-size="10">{human(y)}</text>')
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(y)}" y2="{py(y)}" stroke="#eee"/>')
    for r, x in zip(rows, xs):
        out.append(f'<text x="{px(x)}" y="{top + ph + 14}" text-anchor="middle" font-size="10">{human(r["records"])}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{h - 4}" text-anchor="middle" font-size="10">records stored (log scale); {unit}</text>')
    for (field, label), color in zip(series, COLORS):
        points = [(px(x), py(r[field])) for r, x in zip(rows, xs) if r.get(field) is not None]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in points:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')
    if len(series) > 1:
        for i, ((_, label), color) in enumerate(zip(series, COLORS)):
            out.append(f'<text x="{left + 6}" y="{top + 12 + 12 * i}" font-size="10" fill="{color}">{label}</text>')
    out.append("</g>")
    return out


def main():
    rows = [derived(json.loads(line)) for line in open(sys.argv[1]) if line.strip()]
    rows.sort(key=lambda r: r["records"])
    cols, w, h = 3, 320, 220
    height = h * math.ceil(len(PANELS) / cols)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{cols * w}" height="{height}" '
           f'font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>']
    for i, (title, unit, series, _) in enumerate(PANELS):
        svg += panel(rows, (i % cols) * w, (i // cols) * h, w, h, title, unit, series)
    svg.append("</svg>")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(svg) + "\n")

    first = rows[0]
    fields = [("records", "{:,.0f}"), ("load_put_per_s", "{:,.0f}"), ("dns_cold_qps", "{:,.0f}"),
              ("dns_cold_later_qps", "{:,.0f}"), ("dns_random_qps", "{:,.0f}"), ("get_per_s", "{:,.0f}"), ("put_per_s", "{:,.0f}"),
              ("restart_s", "{:.2f}"), ("learner_catch_up_s", "{:.1f}"), ("backup_s", "{:.1f}"),
              ("steady_rss_mib", "{:,.0f}"), ("peak_rss_load_mib", "{:,.0f}"),
              ("peak_rss_after_backup_and_send_mib", "{:,.0f}"), ("learner_peak_rss_mib", "{:,.0f}"),
              ("rss_per_record", "{:,.0f}"), ("state_per_record", "{:,.0f}"),
              ("log_per_record", "{:,.0f}"), ("snapshot_per_record", "{:,.0f}")]
    print("| measure | " + " | ".join(f"{r['point']:,}" for r in rows) + " | last / first |")
    print("|---|" + "---|" * (len(rows) + 1))
    for field, fmt in fields:
        cells = ["-" if r.get(field) is None else fmt.format(r[field]) for r in rows]
        last = rows[-1].get(field)
        ratio = f"{last / first[field]:.2f}x" if last is not None and first.get(field) else "-"
        print(f"| {field} | " + " | ".join(cells) + f" | {ratio} |")


if __name__ == "__main__":
    main()
