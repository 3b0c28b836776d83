"""Packaging: every subpackage folder is mapped under ``legato``; nothing shadows the stdlib."""

import importlib
import subprocess
import sys
import tomllib

from conftest import REPO

ROOTS = ["stream", "asr", "tts", "music", "codecs", "kernels", "server", "clients"]


def _config():
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def test_every_package_folder_is_listed():
    cfg = _config()
    found = {"legato"}
    for root in ROOTS:
        for init in (REPO / root).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO).as_posix()
            found.add("legato." + rel.replace("/", "."))
    assert found == set(cfg["packages"]), "pyproject.toml [tool.setuptools] packages is out of date"
    for name in cfg["packages"]:
        path = cfg["package-dir"][name]
        assert (REPO / path / "__init__.py").is_file(), f"{name} -> {path} has no __init__.py"


def test_subpackages_import_under_legato_and_stdlib_codecs_is_intact():
    for root in ROOTS:
        importlib.import_module(f"legato.{root}")
    import codecs

    assert hasattr(codecs, "lookup") and "legato" not in codecs.__file__


def test_cli_help_lists_working_commands():
    out = subprocess.run([sys.executable, "-m", "legato.clients.cli", "--help"], capture_output=True, text=True, check=True).stdout
    assert "info" in out
    info = subprocess.run([sys.executable, "-m", "legato.clients.cli", "info"], capture_output=True, text=True, check=True).stdout
    assert "torch" in info and "kernels" in info
