"""The ``legato.tts.v1`` protobuf/gRPC modules, compiled from ``server/proto/tts.proto`` with grpcio-tools.

Generated code lives outside the source tree, in a cache folder named by the
proto's hash (``$LEGATO_CACHE`` or ``~/.cache/legato``), so an edited proto
is recompiled and generated files are never edited or committed. ``make``
compiles once at install (``python -m legato.server.tts_proto``); ``load``
compiles on first use when that did not happen.

The proto is compiled as ``legato_tts_v1/tts.proto``, so the generated gRPC
module imports ``legato_tts_v1.tts_pb2``: a namespace of its own that cannot
clash with the ``legato`` package.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

PROTO = Path(__file__).with_name("proto") / "tts.proto"
NAMESPACE = "legato_tts_v1"


def cache_root() -> Path:
    return Path(os.environ.get("LEGATO_CACHE") or Path.home() / ".cache" / "legato") / "proto"


def _target() -> Path:
    digest = hashlib.sha256(PROTO.read_bytes()).hexdigest()[:16]
    return cache_root() / digest


def compile_proto() -> Path:
    """Compile into the cache (atomically: a half-written folder is never used). Returns the folder."""
    target = _target()
    if (target / NAMESPACE / "tts_pb2_grpc.py").is_file():
        return target
    from grpc_tools import protoc

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent))
    try:
        (work / NAMESPACE).mkdir()
        shutil.copy(PROTO, work / NAMESPACE / "tts.proto")
        include = Path(protoc.__file__).parent / "_proto"  # well-known types
        args = ["protoc", f"-I{work}", f"-I{include}", f"--python_out={work}", f"--grpc_python_out={work}", f"{NAMESPACE}/tts.proto"]
        if protoc.main(args) != 0:
            raise RuntimeError(f"grpcio-tools could not compile {PROTO}")
        try:
            work.rename(target)
        except OSError:  # another process finished first
            shutil.rmtree(work, ignore_errors=True)
    finally:
        if work.exists() and work != target:
            shutil.rmtree(work, ignore_errors=True)
    return target


def load() -> tuple[ModuleType, ModuleType]:
    """(tts_pb2, tts_pb2_grpc)."""
    root = str(compile_proto())
    if root not in sys.path:
        sys.path.append(root)
    return importlib.import_module(f"{NAMESPACE}.tts_pb2"), importlib.import_module(f"{NAMESPACE}.tts_pb2_grpc")


if __name__ == "__main__":
    print(f"legato: compiled {PROTO.name} into {compile_proto()}")
