"""Latency against concurrent streams -> SVG: p99 step latency per side from a bench_fastconformer JSON, or p99 / p50
chunk latency of paced streams from a bench_bulk JSON.

No plotting dependency: the SVG is written directly (log-log axes, the chunk duration as a dashed line: a side is
real time at a batch while its p99 stays under it).

    python3 bench/plot_latency.py bench_fastconformer_bf16.json docs/fastconformer_p99.svg
    python3 bench/plot_latency.py bench_bulk.json docs/bulk_p99.svg
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


def series_of(result: dict) -> tuple[str, str, dict[str, list[tuple[float, float]]], float]:
    """(title, x label, {line: [(streams, ms)]}, chunk ms) from a bench_fastconformer or a bench_bulk JSON."""
    rows = result["rows"]
    if "latency_ms" in rows[0]:  # bench_bulk: paced streams through the bulk path, chunk latency
        args = result.get("args", {})
        lines = {q: [(r["streams"], r["latency_ms"][q]) for r in rows if r.get("latency_ms")] for q in ("p99", "p50")}
        title = f'chunk latency vs concurrent real-time streams ({result.get("gpu", "")}, kv {args.get("kv_cache", "")}, commit {args.get("commit", "")})'
        return title, "concurrent real-time streams (bulk path, 160 ms chunks)", {f"{q} push -> tokens": v for q, v in lines.items()}, 160.0
    sides = [s for s in rows[0] if isinstance(rows[0][s], dict) and "p99_ms" in rows[0][s]]
    lines = {s: [(r["batch"], r[s]["p99_ms"]) for r in rows if "p99_ms" in r.get(s, {})] for s in sides}
    title = f'p99 step latency vs concurrent streams ({result.get("device", "")}, {result.get("dtype", "")}, commit {result.get("commit", "")})'
    return title, "concurrent streams (one batch)", lines, result["lookahead"]["chunk_ms"]


def svg(result: dict) -> str:
    title, xlabel, lines, chunk_ms = series_of(result)
    xs = sorted({x for pts in lines.values() for x, _ in pts})
    ys = [y for pts in lines.values() for _, y in pts] + [chunk_ms]
    fx = _scale(min(xs), max(xs), PAD, W - PAD)
    fy = _scale(min(ys) / 1.5, max(ys) * 1.5, H - PAD, PAD)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle">{title}</text>',
           f'<line x1="{PAD}" y1="{fy(chunk_ms):.1f}" x2="{W - PAD}" y2="{fy(chunk_ms):.1f}" stroke="grey" stroke-dasharray="6,4"/>',
           f'<text x="{W - PAD}" y="{fy(chunk_ms) - 4:.1f}" text-anchor="end" fill="grey">{chunk_ms:.0f} ms chunk</text>']
    for x in xs:
        out.append(f'<text x="{fx(x):.1f}" y="{H - PAD + 16}" text-anchor="middle">{x:,}</text>')
    for e in range(math.floor(math.log10(min(ys) / 1.5)), math.ceil(math.log10(max(ys) * 1.5)) + 1):
        for v in (10 ** e, 2 * 10 ** e, 5 * 10 ** e):
            if min(ys) / 1.5 <= v <= max(ys) * 1.5:
                out.append(f'<text x="{PAD - 6}" y="{fy(v) + 4:.1f}" text-anchor="end">{v:g} ms</text>')
                out.append(f'<line x1="{PAD}" y1="{fy(v):.1f}" x2="{W - PAD}" y2="{fy(v):.1f}" stroke="#eee"/>')
    out.append(f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle">{xlabel}</text>')
    for n, (name, pts) in enumerate(lines.items()):
        colour = COLOURS[n % len(COLOURS)]
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in pts)}"/>')
        out.append(f'<text x="{PAD + 8}" y="{PAD + 16 * n}" fill="{colour}">{name}</text>')
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
