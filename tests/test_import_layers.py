"""The import contract of pyproject.toml ([tool.importlinter]): clients > server > tts | music > codecs > asr > stream >
kernels, each importing only what lies below it (kernels imports nothing of legato), so no cycles between them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stream", "asr", "tts", "music", "codecs", "kernels", "server", "clients")


def test_layers_point_down(tmp_path):
    # The subpackages live at the repo root (setuptools package-dir): import-linter reads a legato/ tree, so it gets
    # one made of links.
    tree = tmp_path / "legato"
    tree.mkdir()
    (tree / "__init__.py").write_bytes((ROOT / "legato" / "__init__.py").read_bytes())
    for name in PACKAGES:
        (tree / name).symlink_to(ROOT / name, target_is_directory=True)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    lint = Path(sys.executable).parent / "lint-imports"  # import-linter's command, beside this interpreter
    run = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "KEPT" in run.stdout
