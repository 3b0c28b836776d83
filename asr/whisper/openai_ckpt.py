"""Load OpenAI's Whisper ``.pt`` checkpoints (``{"dims": ..., "model_state_dict": ...}``).

legato's module names are OpenAI's, so the key table is the identity; the
loader checks that every tensor has a place and the shapes agree.
"""

from __future__ import annotations

from pathlib import Path

import torch

from legato.asr.whisper.model import Whisper, WhisperDims


class OpenAICheckpointError(ValueError):
    """A file that is not an OpenAI Whisper checkpoint legato can load."""


def load_openai_whisper(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Whisper:
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files
        raise OpenAICheckpointError(f"cannot read {path} as a PyTorch checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise OpenAICheckpointError(f"{path} is not an OpenAI Whisper checkpoint (needs 'dims' and 'model_state_dict')")
    try:
        dims = WhisperDims(**ckpt["dims"])
    except TypeError as exc:
        raise OpenAICheckpointError(f"{path}: unexpected dims {ckpt['dims']}: {exc}") from exc
    model = Whisper(dims)
    state = {k: v.to(torch.float32) for k, v in ckpt["model_state_dict"].items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise OpenAICheckpointError(f"{path}: weights do not fit the model its dims describe: {exc}") from exc
    return model.to(device=device, dtype=dtype).eval()
