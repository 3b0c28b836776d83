"""Load official F5-TTS checkpoints: EMA ``.pt`` or ``.safetensors``, plus ``vocab.txt``.

Layouts (F5-TTS ``infer/utils_infer.py::load_checkpoint``):

* ``model_*.pt``: ``{"ema_model_state_dict": {"initted", "step", "ema_model.transformer.*", ...}, ...}``
  (training checkpoints also hold ``model_state_dict``, optimizer and scheduler; we read the EMA weights,
  falling back to ``model_state_dict`` when a file has no EMA).
* ``model_*.safetensors``: the EMA tensors flat, keys ``ema_model.transformer.*``.

Keys are mapped onto :class:`~legato.tts.f5.dit.F5DiT` by :data:`KEY_TABLE`. Shapes give dim, depth,
text_dim, conv_layers, ff_mult, vocabulary size, qk_norm and the long skip; what shapes cannot tell
(heads, text_mask_padding, pe_attn_head) comes from ``config`` (default: F5TTS_v1_Base).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch

from legato.tts.f5.config import F5Config
from legato.tts.f5.dit import F5DiT
from legato.tts.f5.vocab import Vocab

# F5-TTS key (after stripping "ema_model." and "transformer.") -> legato key. First match wins.
KEY_TABLE: list[tuple[str, str]] = [
    (r"time_embed\.time_mlp\.0\.(weight|bias)", r"time_embed.fc1.\1"),
    (r"time_embed\.time_mlp\.2\.(weight|bias)", r"time_embed.fc2.\1"),
    (r"text_embed\.text_embed\.weight", r"text_embed.table.weight"),
    (r"text_embed\.text_blocks\.(\d+)\.(dwconv|norm|pwconv1|pwconv2)\.(weight|bias)", r"text_embed.blocks.\1.\2.\3"),
    (r"text_embed\.text_blocks\.(\d+)\.grn\.(gamma|beta)", r"text_embed.blocks.\1.grn.\2"),
    (r"input_embed\.proj\.(weight|bias)", r"input_embed.proj.\1"),
    (r"input_embed\.conv_pos_embed\.conv1d\.0\.(weight|bias)", r"input_embed.conv_pos.conv1.\1"),
    (r"input_embed\.conv_pos_embed\.conv1d\.2\.(weight|bias)", r"input_embed.conv_pos.conv2.\1"),
    (r"transformer_blocks\.(\d+)\.attn_norm\.linear\.(weight|bias)", r"blocks.\1.modulation.\2"),
    (r"transformer_blocks\.(\d+)\.attn\.(to_q|to_k|to_v)\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (r"transformer_blocks\.(\d+)\.attn\.to_out\.0\.(weight|bias)", r"blocks.\1.attn.to_out.\2"),
    (r"transformer_blocks\.(\d+)\.attn\.(q_norm|k_norm)\.weight", r"blocks.\1.attn.\2.weight"),
    (r"transformer_blocks\.(\d+)\.ff\.ff\.0\.0\.(weight|bias)", r"blocks.\1.ff.fc1.\2"),
    (r"transformer_blocks\.(\d+)\.ff\.ff\.2\.(weight|bias)", r"blocks.\1.ff.fc2.\2"),
    (r"long_skip_connection\.weight", r"long_skip.weight"),
    (r"norm_out\.linear\.(weight|bias)", r"final_modulation.\1"),
    (r"proj_out\.(weight|bias)", r"proj_out.\1"),
]
# Present in checkpoints, not parameters of ours: x-transformers' persistent rotary buffer (recomputed,
# checked) and mel front-end buffers of old checkpoints (F5-TTS deletes them too).
IGNORED = (r"rotary_embed\.inv_freq", r"mel_spec\..*")
EMA_BOOKKEEPING = ("initted", "step")


class F5CheckpointError(ValueError):
    """A file that is not an F5-TTS checkpoint legato can load."""


def map_key(key: str) -> str | None:
    """An F5-TTS CFM key (``transformer.…``) -> legato key; None for ignored buffers; KeyError if unknown."""
    if not key.startswith("transformer."):
        if re.fullmatch(IGNORED[1], key):
            return None
        raise KeyError(key)
    inner = key[len("transformer."):]
    if any(re.fullmatch(p, inner) for p in IGNORED):
        return None
    for pattern, target in KEY_TABLE:
        if re.fullmatch(pattern, inner):
            return re.sub(pattern, target, inner)
    raise KeyError(key)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The CFM state dict of an F5-TTS ``.pt`` or ``.safetensors`` file, keys starting ``transformer.``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw = load_file(str(path), device="cpu")
        except Exception as exc:  # header or size errors
            raise F5CheckpointError(f"cannot read {path} as safetensors: {exc}") from exc
        flat = raw
    elif path.suffix in (".pt", ".pth", ".ckpt"):
        try:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors, truncated files
            raise F5CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {exc}") from exc
        if not isinstance(raw, dict):
            raise F5CheckpointError(f"{path}: expected a dict checkpoint, got {type(raw).__name__}")
        if "ema_model_state_dict" in raw:
            flat = raw["ema_model_state_dict"]
        elif "model_state_dict" in raw:
            flat = raw["model_state_dict"]
        else:
            raise F5CheckpointError(
                f"{path}: no 'ema_model_state_dict' or 'model_state_dict' (top-level keys: {sorted(raw)[:8]})")
    else:
        raise F5CheckpointError(f"{path}: unknown checkpoint type {path.suffix!r} (want .pt or .safetensors)")
    state = {k.removeprefix("ema_model."): v for k, v in flat.items() if k not in EMA_BOOKKEEPING}
    if not any(k.startswith("transformer.") for k in state):
        raise F5CheckpointError(f"{path}: no 'transformer.*' tensors; not an F5-TTS CFM checkpoint "
                                f"(first keys: {sorted(state)[:5]})")
    return state


def infer_config(state: dict[str, torch.Tensor], base: F5Config) -> F5Config:
    """Fill the shape fields of ``base`` from the tensors of an F5-TTS state dict (legato keys)."""
    dim, mel_dim = state["proj_out.weight"].shape[1], state["proj_out.weight"].shape[0]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    conv_layers = len({k.split(".")[2] for k in state if k.startswith("text_embed.blocks.")})
    rows, text_dim = state["text_embed.table.weight"].shape
    ff_dim = state["blocks.0.ff.fc1.weight"].shape[0]
    inner = state["blocks.0.attn.to_q.weight"].shape[0]
    heads = base.heads if base.heads * base.dim_head == inner else inner // base.dim_head
    if heads * base.dim_head != inner:
        raise F5CheckpointError(f"attention width {inner} is not a multiple of dim_head {base.dim_head}")
    return replace(
        base, dim=dim, depth=depth, heads=heads, ff_mult=ff_dim / dim, text_dim=text_dim, text_num_embeds=rows - 1,
        conv_layers=conv_layers, mel_dim=mel_dim,
        qk_norm="rms_norm" if "blocks.0.attn.q_norm.weight" in state else None,
        long_skip_connection="long_skip.weight" in state,
        pe_attn_head=base.pe_attn_head if base.pe_attn_head is None or base.pe_attn_head <= heads else None,
    )


def load_f5(
    path: str | Path,
    vocab_txt: str | Path,
    config: F5Config | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[F5DiT, Vocab]:
    """Load an official F5-TTS checkpoint and its vocabulary -> (model in eval mode, vocab)."""
    source = read_state_dict(path)
    state: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    inv_freq = None
    for key, value in source.items():
        try:
            ours = map_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if ours is None:
            inv_freq = value if key.endswith("rotary_embed.inv_freq") else inv_freq
            continue
        state[ours] = value.to(torch.float32)
    if unknown:
        raise F5CheckpointError(f"{path}: {len(unknown)} keys legato does not know, e.g. {unknown[:5]}")
    for needed in ("proj_out.weight", "text_embed.table.weight", "blocks.0.ff.fc1.weight", "blocks.0.attn.to_q.weight"):
        if needed not in state:
            raise F5CheckpointError(f"{path}: missing {needed!r} (F5-TTS key layout not recognised)")
    cfg = infer_config(state, config or F5Config())
    vocab = Vocab.from_file(vocab_txt)
    if len(vocab) != cfg.text_num_embeds:
        raise F5CheckpointError(f"{vocab_txt} has {len(vocab)} symbols but {path} embeds {cfg.text_num_embeds}")
    model = F5DiT(cfg)
    try:
        missing, extra = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise F5CheckpointError(f"{path}: weights do not fit {cfg}: {exc}") from exc
    if missing or extra:
        raise F5CheckpointError(f"{path}: weights do not fit {cfg}: missing {missing[:5]}, unexpected {extra[:5]}")
    if inv_freq is not None:
        expect = 1.0 / (10_000.0 ** (torch.arange(0, cfg.dim_head, 2).float() / cfg.dim_head))
        if inv_freq.shape != expect.shape or not torch.allclose(inv_freq.float(), expect):
            raise F5CheckpointError(f"{path}: rotary inv_freq does not match dim_head {cfg.dim_head} "
                                    "(pass a config with the right heads/dim_head)")
    return model.to(device=device, dtype=dtype).eval(), vocab
