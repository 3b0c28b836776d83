"""Load a ming024/FastSpeech2 checkpoint (``NNN.pth.tar``) with its YAML configs.

A checkpoint is ``torch.save({"model": state_dict, "optimizer": adam_state}, "NNN.pth.tar")``
(train.py); only ``"model"`` is read. Its keys map onto ours by :data:`KEYS`; ``position_enc``
tables are recomputed (same values). The stored ``pitch_bins``/``energy_bins`` are loaded
as ming024's ``load_state_dict`` does, so the checkpoint's bins win over stats.json's.

Where stats.json and speakers.json are looked for, first hit wins:

1. ``config_dir`` itself (next to preprocess.yaml and model.yaml);
2. ``path.preprocessed_path`` from preprocess.yaml, if absolute;
3. that path relative to ``config_dir``;
4. that path relative to the working directory (ming024 runs from its repo root).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml
from legato.tts.fastspeech2.config import FastSpeech2Config, UnsupportedConfigError
from legato.tts.fastspeech2.model import FastSpeech2

# (ming024 key regex, our replacement); keys not matched keep their name.
KEYS: list[tuple[str, str]] = [
    (r"^encoder\.src_word_emb\.", "symbol_embedding."),
    (r"^(encoder|decoder)\.layer_stack\.(\d+)\.slf_attn\.w_qs\.", r"\1.layers.\2.attn.query."),
    (r"^(encoder|decoder)\.layer_stack\.(\d+)\.slf_attn\.w_ks\.", r"\1.layers.\2.attn.key."),
    (r"^(encoder|decoder)\.layer_stack\.(\d+)\.slf_attn\.w_vs\.", r"\1.layers.\2.attn.value."),
    (r"^(encoder|decoder)\.layer_stack\.(\d+)\.slf_attn\.fc\.", r"\1.layers.\2.attn.out."),
    (r"^(encoder|decoder)\.layer_stack\.(\d+)\.slf_attn\.layer_norm\.", r"\1.layers.\2.attn.norm."),
    (r"^(encoder|decoder)\.layer_stack\.(\d+)\.pos_ffn\.w_1\.", r"\1.layers.\2.ffn.conv1."),
    (r"^(encoder|decoder)\.layer_stack\.(\d+)\.pos_ffn\.w_2\.", r"\1.layers.\2.ffn.conv2."),
    (r"^(encoder|decoder)\.layer_stack\.(\d+)\.pos_ffn\.layer_norm\.", r"\1.layers.\2.ffn.norm."),
    (r"^speaker_emb\.", "speaker_embedding."),
    (r"^variance_adaptor\.(duration|pitch|energy)_predictor\.conv_layer\.conv1d_(\d)\.conv\.", r"variance_adaptor.\1_predictor.conv\2."),
    (r"^variance_adaptor\.(duration|pitch|energy)_predictor\.conv_layer\.layer_norm_(\d)\.", r"variance_adaptor.\1_predictor.norm\2."),
    (r"^variance_adaptor\.(duration|pitch|energy)_predictor\.linear_layer\.", r"variance_adaptor.\1_predictor.proj."),
    (r"^postnet\.convolutions\.(\d+)\.0\.conv\.", r"postnet.convs.\1."),
    (r"^postnet\.convolutions\.(\d+)\.1\.", r"postnet.norms.\1."),
]
IGNORED = re.compile(r"^(encoder|decoder)\.position_enc$")  # sinusoid tables, recomputed


def rename(key: str) -> str:
    for pattern, repl in KEYS:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return key


def _yaml(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UnsupportedConfigError(f"{path}: cannot read: {exc}") from None
    if not isinstance(doc, dict):
        raise UnsupportedConfigError(f"{path}: expected a mapping")
    return doc


def find_preprocessed_file(name: str, config_dir: Path, preprocess: Mapping[str, Any]) -> Path | None:
    """stats.json / speakers.json by the rule in the module docstring; None if nowhere."""
    candidates = [config_dir / name]
    pre = (preprocess.get("path") or {}).get("preprocessed_path")
    if pre:
        p = Path(pre).expanduser()
        candidates += [p / name] if p.is_absolute() else [config_dir / p / name, p / name]
    return next((c for c in candidates if c.is_file()), None)


def read_config(config_dir: str | Path) -> FastSpeech2Config:
    """FastSpeech2Config from config_dir's preprocess.yaml + model.yaml + stats.json (+ speakers.json)."""
    config_dir = Path(config_dir)
    preprocess = _yaml(config_dir / "preprocess.yaml")
    model = _yaml(config_dir / "model.yaml")
    stats_path = find_preprocessed_file("stats.json", config_dir, preprocess)
    if stats_path is None:
        raise UnsupportedConfigError(f"stats.json not found next to {config_dir / 'preprocess.yaml'} nor under its path.preprocessed_path")
    speakers = None
    if model.get("multi_speaker"):
        spk_path = find_preprocessed_file("speakers.json", config_dir, preprocess)
        speakers = json.loads(spk_path.read_text()) if spk_path else None
    return FastSpeech2Config.from_ming024(preprocess, model, json.loads(stats_path.read_text()), speakers)


def convert_state_dict(ming: Mapping[str, torch.Tensor], cfg: FastSpeech2Config) -> tuple[dict[str, torch.Tensor], FastSpeech2Config]:
    """ming024 ``ckpt["model"]`` -> (our state dict, cfg with the sizes only the checkpoint knows)."""
    ming = {k.removeprefix("module."): v for k, v in ming.items()}  # a DataParallel-wrapped save
    n_post = len([k for k in ming if re.fullmatch(r"postnet\.convolutions\.\d+\.0\.conv\.weight", k)])
    if n_post == 0 or "encoder.src_word_emb.weight" not in ming:
        raise UnsupportedConfigError("not a ming024 FastSpeech2 state dict (no encoder.src_word_emb / postnet.convolutions keys)")
    first = ming["postnet.convolutions.0.0.conv.weight"]  # (channels, n_mels, kernel)
    cfg = replace(cfg, postnet_layers=n_post, postnet_channels=first.shape[0], postnet_kernel_size=first.shape[2])
    rows = ming["encoder.src_word_emb.weight"].shape[0]
    if rows != cfg.n_symbols:
        raise UnsupportedConfigError(
            f"checkpoint has {rows} symbol embeddings, ming024's text/symbols.py gives {cfg.n_symbols}: it was trained with another symbol table"
        )
    if "speaker_emb.weight" in ming:
        n = ming["speaker_emb.weight"].shape[0]
        if cfg.n_speakers != n:
            raise UnsupportedConfigError(f"checkpoint has {n} speaker embeddings but model.yaml multi_speaker / speakers.json give {cfg.n_speakers}")
    elif cfg.n_speakers:
        raise UnsupportedConfigError("model.yaml multi_speaker is True but the checkpoint has no speaker_emb")
    out = {rename(k): v.float() for k, v in ming.items() if not IGNORED.match(k)}
    return out, cfg


def load_fastspeech2(
    checkpoint_path: str | Path, config_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[FastSpeech2, FastSpeech2Config]:
    """(model in eval mode on ``device``, its config) from a ming024 checkpoint and its config folder."""
    cfg = read_config(config_dir)
    ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    state, cfg = convert_state_dict(ckpt["model"] if "model" in ckpt else ckpt, cfg)
    model = FastSpeech2(cfg)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise UnsupportedConfigError(f"{checkpoint_path}: state dict does not fit model.yaml: {exc}") from None
    if missing or unexpected:
        raise UnsupportedConfigError(f"{checkpoint_path}: state dict does not fit model.yaml: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device).eval(), cfg
