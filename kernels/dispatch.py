"""Kernel dispatch: pick the fastest working implementation, fall back cleanly.

Each kernel is registered under a name with one implementation per backend:

* ``torch``  the plain PyTorch reference; always present, any device;
* ``numba``  fused CPU kernel (numba JIT), used for CPU tensors;
* ``triton`` fused GPU kernel, used for CUDA tensors.

``get(name, device)`` returns the best registered implementation for the
device. A fused implementation that fails (numba or Triton missing, a
compile error) is logged once and dropped; the reference takes over.
``LEGATO_KERNELS=torch`` forces the references everywhere (debugging,
bisecting a numerical difference).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from typing import Callable

import torch

log = logging.getLogger("legato.kernels")

REFERENCE = "torch"
_PREFERENCE = {"cpu": ("numba", REFERENCE), "cuda": ("triton", REFERENCE)}

_registry: dict[str, dict[str, Callable]] = {}
_broken: set[tuple[str, str]] = set()


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@functools.cache
def available_backends() -> tuple[str, ...]:
    """Backends usable on this machine, reference first (looked up once: it is on the hot path)."""
    found = [REFERENCE]
    if _importable("numba"):
        found.append("numba")
    if _importable("triton") and torch.cuda.is_available():
        found.append("triton")
    return tuple(found)


def register(name: str, backend: str) -> Callable[[Callable], Callable]:
    def wrap(fn: Callable) -> Callable:
        _registry.setdefault(name, {})[backend] = fn
        return fn

    return wrap


def _forced() -> str | None:
    value = os.environ.get("LEGATO_KERNELS", "").strip().lower()
    return value or None


def backends_for(device: torch.device | str) -> tuple[str, ...]:
    kind = torch.device(device).type
    forced = _forced()
    if forced:
        return (forced, REFERENCE) if forced != REFERENCE else (REFERENCE,)
    return _PREFERENCE.get(kind, (REFERENCE,))


def get(name: str, device: torch.device | str) -> tuple[str, Callable]:
    """(backend, implementation) of kernel ``name`` for tensors on ``device``."""
    impls = _registry.get(name)
    if not impls or REFERENCE not in impls:
        raise KeyError(f"kernel {name!r} has no registered {REFERENCE} reference")
    usable = set(available_backends())
    for backend in backends_for(device):
        if backend in impls and backend in usable and (name, backend) not in _broken:
            return backend, impls[backend]
    return REFERENCE, impls[REFERENCE]


def call(name: str, device: torch.device | str, *args, **kwargs):
    """Run the best implementation; if a fused one raises, disable it and use the reference."""
    backend, fn = get(name, device)
    if backend == REFERENCE:
        return fn(*args, **kwargs)
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # a broken fused kernel must never take a stream down
        log.warning("kernel %s[%s] failed (%s: %s); using the %s reference from now on", name, backend, type(exc).__name__, exc, REFERENCE)
        _broken.add((name, backend))
        return _registry[name][REFERENCE](*args, **kwargs)
