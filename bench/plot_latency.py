"""p99 step latency against concurrent streams, one line per side, from a bench_fastconformer JSON -> SVG.

No plotting dependency: the SVG is written directly (log-log axes, the chunk duration as a dashed line: a side is
real time at a batch while its p99 stays under it).

    python3 bench/plot_latency.py bench_fastconformer_bf16.json docs/fastconformer_p99.svg
"""

from __future__ import annotations

import json
import math
import sys

W, H, PAD = 640, 400, 60
COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _scale(lo: float, hi: float, a: float, b: float):
    llo, lhi = math.log10(lo), math.log10(hi)
    return lambda v: a + (math.log10(v) - llo) / (lhi - llo) * (b - a)


def svg(result: dict) -> str:
    rows = result["rows"]
    sides = [s for s in rows[0] if isinstance(rows[0][s], dict) and "p99_ms" in rows[0][s]]
    chunk_ms = result["lookahead"]["chunk_ms"]
    xs = [r["batch"] for r in rows]
    ys = [r[s]["p99_ms"] for r in rows for s in sides if "p99_ms" in r.get(s, {})] + [chunk_ms]
    fx = _scale(min(xs), max(xs), PAD, W - PAD)
    fy = _scale(min(ys) / 1.5, max(ys) * 1.5, H - PAD, PAD)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle">p99 step latency vs concurrent streams ({result.get("device", "")}, '
           f'{result.get("dtype", "")}, commit {result.get("commit", "")})</text>',
           f'<line x1="{PAD}" y1="{fy(chunk_ms):.1f}" x2="{W - PAD}" y2="{fy(chunk_ms):.1f}" stroke="grey" stroke-dasharray="6,4"/>',
           f'<text x="{W - PAD}" y="{fy(chunk_ms) - 4:.1f}" text-anchor="end" fill="grey">{chunk_ms:.0f} ms chunk</text>']
    for x in xs:
        out.append(f'<text x="{fx(x):.1f}" y="{H - PAD + 16}" text-anchor="middle">{x:,}</text>')
    for e in range(math.floor(math.log10(min(ys) / 1.5)), math.ceil(math.log10(max(ys) * 1.5)) + 1):
        v = 10 ** e
        if min(ys) / 1.5 <= v <= max(ys) * 1.5:
            out.append(f'<text x="{PAD - 6}" y="{fy(v) + 4:.1f}" text-anchor="end">{v:g} ms</text>')
            out.append(f'<line x1="{PAD}" y1="{fy(v):.1f}" x2="{W - PAD}" y2="{fy(v):.1f}" stroke="#eee"/>')
    out.append(f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle">concurrent streams (one batch)</text>')
    for n, side in enumerate(sides):
        pts = [(fx(r["batch"]), fy(r[side]["p99_ms"])) for r in rows if "p99_ms" in r.get(side, {})]
        colour = COLOURS[n % len(COLOURS)]
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in pts)}"/>')
        out.append(f'<text x="{PAD + 8}" y="{PAD + 16 * n}" fill="{colour}">{side}</text>')
    out.append("</svg>")
    return "\n".join(out)


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        result = json.load(f)
    with open(dst, "w") as f:
        f.write(svg(result) + "\n")


if __name__ == "__main__":
    main()
