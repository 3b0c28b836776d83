"""bench/plot_latency.py draws both benchmark JSON shapes it documents (a step-latency sweep, a bulk-path sweep)."""

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import plot_latency  # noqa: E402


def test_plots_a_bulk_sweep_and_a_step_sweep():
    bulk = {"gpu": "H200", "args": {"kv_cache": "same", "commit": "abc"},
            "rows": [{"streams": n, "latency_ms": {"p50": n / 400, "p99": n / 200}} for n in (8192, 16384, 40000)]}
    out = plot_latency.svg(bulk)
    assert out.startswith("<svg") and out.count("<polyline") == 2 and "40,000" in out and "160 ms chunk" in out
    step = {"device": "H200", "dtype": "bf16", "commit": "abc", "lookahead": {"chunk_ms": 160},
            "rows": [{"batch": b, "nemo": {"p99_ms": b / 20}, "ours": {"p99_ms": b / 200}} for b in (256, 4096)]}
    out = plot_latency.svg(step)
    assert out.count("<polyline") == 2 and ">nemo<" in out
