#!/usr/bin/env python3
"""Render the CSV of scripts/loadrun.sh as an SVG bar chart (no dependencies).

    python3 scripts/loadrun-chart.py benches/results/loadrun.csv benches/results/loadrun.svg

Four panels share the rows (one per configuration): requests per second
(with the ratio to LIMITER=off), p99 latency, the server's CPU per request
and Redis CPU per request (summed over the nodes for the cluster).
Configurations that did not run are listed with their reason.
"""

import csv
import sys
from html import escape

COLORS = {
    "base": "#9e9e9e",
    "memory": "#4caf50",
    "redis": "#1e88e5",
    "redis-cluster": "#3949ab",
    "peer-memory": "#ffb300",
    "peer-redis": "#e53935",
}
LEGEND = [
    ("base", "no limiter"),
    ("memory", "this crate, memory"),
    ("redis", "this crate, Redis"),
    ("redis-cluster", "this crate, Redis Cluster (3 masters)"),
    ("peer-memory", "peer, in-process"),
    ("peer-redis", "peer, Redis"),
]
PANELS = [
    ("req_per_s", "requests/s", "{:,.0f}"),
    ("p99_ms", "p99 latency (ms)", "{:.2f}"),
    ("app_cpu_us_per_req", "server CPU per request (µs)", "{:.1f}"),
    ("redis_cpu_us_per_req", "Redis CPU per request (µs)", "{:.1f}"),
]

LABEL_W = 230
PANEL_W = 220
GAP = 24
ROW_H = 22
BAR_H = 14
TOP = 92
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"


def number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read(path):
    setting = ""
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                setting = line[1:].strip()
            else:
                lines.append(line)
    return setting, list(csv.DictReader(lines))


def text(x, y, s, size=11, anchor="start", weight="normal", fill="#222"):
    return (
        f"<text x='{x:.1f}' y='{y:.1f}' {FONT} font-size='{size}' "
        f"text-anchor='{anchor}' font-weight='{weight}' fill='{fill}'>{escape(s)}</text>"
    )


def render(setting, rows):
    width = LABEL_W + len(PANELS) * (PANEL_W + GAP) + 10
    height = TOP + ROW_H * len(rows) + 40
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}'>",
        f"<rect width='{width}' height='{height}' fill='white'/>",
        text(10, 20, "Load runs: scripts/loadrun.sh", size=15, weight="bold"),
    ]
    # The setting, wrapped on two lines at most.
    words, line, lines = setting.split(" "), "", []
    for w in words:
        if len(line) + len(w) > 150 and line:
            lines.append(line)
            line = ""
        line += ("" if not line else " ") + w
    lines.append(line)
    for i, l in enumerate(lines[:2]):
        out.append(text(10, 36 + 13 * i, l, size=10, fill="#555"))
    x = 10
    for group, label in LEGEND:
        out.append(f"<rect x='{x}' y='{TOP - 30}' width='10' height='10' fill='{COLORS[group]}'/>")
        out.append(text(x + 14, TOP - 21, label, size=10))
        x += 24 + 6.2 * len(label)

    for p, (field, title, fmt) in enumerate(PANELS):
        x0 = LABEL_W + p * (PANEL_W + GAP)
        out.append(text(x0, TOP + 4, title, size=11, weight="bold"))
        values = [number(r.get(field)) for r in rows]
        top = max([v for v in values if v is not None] + [0])
        for i, (row, v) in enumerate(zip(rows, values)):
            y = TOP + 12 + i * ROW_H
            if v is None:
                continue
            w = 0 if top <= 0 else (PANEL_W - 70) * v / top
            color = COLORS.get(row.get("group", ""), "#607d8b")
            out.append(
                f"<rect x='{x0}' y='{y}' width='{max(w, 0.5):.1f}' height='{BAR_H}' fill='{color}'/>"
            )
            label = fmt.format(v)
            if field == "req_per_s" and number(row.get("ratio_vs_off")) is not None:
                label += f" ({float(row['ratio_vs_off']):.2f}×)"
            out.append(text(x0 + w + 4, y + BAR_H - 3, label, size=10))
        out.append(
            f"<line x1='{x0}' y1='{TOP + 8}' x2='{x0}' y2='{TOP + 14 + ROW_H * len(rows)}' stroke='#888'/>"
        )

    for i, row in enumerate(rows):
        y = TOP + 12 + i * ROW_H + BAR_H - 3
        out.append(text(LABEL_W - 8, y, row["name"], size=11, anchor="end"))
        if row.get("note"):
            out.append(text(LABEL_W + 4, y, row["note"][:90], size=10, fill="#b71c1c"))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) != 3:
        sys.exit("usage: loadrun-chart.py RESULTS.csv OUT.svg")
    setting, rows = read(argv[1])
    if not rows:
        sys.exit(f"loadrun-chart: no rows in {argv[1]}")
    with open(argv[2], "w", encoding="utf-8") as f:
        f.write(render(setting, rows))


if __name__ == "__main__":
    main(sys.argv)
