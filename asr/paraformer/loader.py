"""Load a FunASR model folder: ``config.yaml``, ``model.pt``, ``tokens.json`` (or ``tokens.txt``), ``am.mvn``.

``configuration.json`` (ModelScope layout), when present, names the files (``file_path_metas``); otherwise the
standard names are used. Nothing is downloaded. Unsupported architectures fail with the config field named.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from legato.asr.frontends.funasr_frontend import FunasrFrontend
from legato.asr.paraformer.config import ParaformerConfig, UnsupportedConfigError
from legato.asr.paraformer.model import Paraformer
from legato.asr.paraformer.text import load_tokens

UNUSED_KEYS = ("decoder.embed.",)  # the training-time token embedding (Paraformer decodes CIF embeddings)


class ModelFolderError(ValueError):
    code = "unknown_model"


@dataclass
class ParaformerBundle:
    model: Paraformer
    frontend: FunasrFrontend
    tokens: list[str]
    config: dict  # the whole config.yaml (streaming options live in its encoder_conf)
    folder: Path


def _files(folder: Path) -> dict[str, Path]:
    names = {"model": "model.pt", "config": "config.yaml", "tokens": None, "cmvn": "am.mvn"}
    meta = folder / "configuration.json"
    if meta.is_file():
        paths = json.loads(meta.read_text()).get("file_path_metas", {})
        names["model"] = paths.get("init_param", names["model"])
        names["config"] = paths.get("config", names["config"])
        names["tokens"] = (paths.get("tokenizer_conf") or {}).get("token_list")
        names["cmvn"] = (paths.get("frontend_conf") or {}).get("cmvn_file", names["cmvn"])
    if names["tokens"] is None or not (folder / names["tokens"]).is_file():
        names["tokens"] = next((n for n in ("tokens.json", "tokens.txt") if (folder / n).is_file()), "tokens.json")
    files = {k: folder / v for k, v in names.items()}
    missing = [str(p.name) for k, p in files.items() if k != "cmvn" and not p.is_file()]
    if missing:
        raise ModelFolderError(f"{folder}: not a FunASR model folder, missing {', '.join(missing)}")
    return files


def _tokens(path: Path) -> list[str]:
    if path.suffix == ".json":
        return load_tokens(path)
    return [line.split()[0] if line.split() else line for line in path.read_text(encoding="utf-8").splitlines()]


def load_paraformer(folder: str | Path, device: str | torch.device = "cpu") -> ParaformerBundle:
    folder = Path(folder)
    files = _files(folder)
    conf = yaml.safe_load(files["config"].read_text()) or {}
    tokens = _tokens(files["tokens"])
    cfg = ParaformerConfig.from_funasr(conf, vocab_size=len(tokens))
    if conf.get("frontend") not in ("WavFrontend", "WavFrontendOnline"):
        raise UnsupportedConfigError(f"frontend: {conf.get('frontend')!r} is not supported (WavFrontend / WavFrontendOnline)")
    state = torch.load(files["model"], map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith(UNUSED_KEYS)}
    state = {k: v for k, v in state.items() if not k.startswith(("ctc.",))}  # ctc_weight 0 in released models
    model = Paraformer(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelFolderError(f"{files['model']}: weights do not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    cmvn = files["cmvn"] if files["cmvn"].is_file() else None
    frontend = FunasrFrontend.from_funasr(conf.get("frontend_conf") or {}, cmvn)
    return ParaformerBundle(model.to(device).eval(), frontend.to(device), tokens, conf, folder)
