"""Tensors as their bytes, for moving rows of any dtype."""

from __future__ import annotations

import torch


def byte_view(t: torch.Tensor) -> torch.Tensor:
    """fp8 tensors as raw bytes (others as they are): the CPU has no fp8 gather, scatter or index_copy, and moving
    rows only moves bits."""
    return t.view(torch.uint8) if t.is_floating_point() and t.element_size() == 1 else t
