"""Load a NeMo ``.nemo`` archive of a cache-aware FastConformer (CTC, RNNT or hybrid).

A ``.nemo`` file is a tar (plain or gzip) holding ``model_config.yaml``,
``model_weights.ckpt`` (a torch state dict) and the tokenizer files, which the
config names as ``nemo:<member>`` (for example
``tokenizer.model_path: nemo:2ffc..._tokenizer.model``). Members may carry a
``./`` prefix. Nothing is fetched: everything comes from the archive.
"""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from legato.asr.fastconformer.checkpoint import encoder_state_dict
from legato.asr.fastconformer.config import FastConformerConfig, UnsupportedConfigError
from legato.asr.fastconformer.model import FastConformerModel, FastConformerModelConfig, HeadConfig
from legato.asr.fastconformer.tokenizer import SentencePieceTokenizer
from legato.asr.frontends.nemo_mel import NemoMelConfig

CONFIG_MEMBER = "model_config.yaml"
WEIGHTS_MEMBER = "model_weights.ckpt"

# NeMo model class (config ``target``) -> our kind.
MODEL_KINDS = {
    "EncDecCTCModelBPE": "ctc",
    "EncDecRNNTBPEModel": "rnnt",
    "EncDecHybridRNNTCTCBPEModel": "hybrid",
}

# Decoder/joint keys: (NeMo regex, ours). Encoder keys: checkpoint.ENCODER_KEYS.
DECODER_KEYS: list[tuple[str, str]] = [
    (r"^joint\.joint_net\.\d+\.(weight|bias)$", r"joint.joint_net.1.\1"),  # the output layer, after activation (+ dropout)
]


class NemoFileError(ValueError):
    code = "bad_model_file"


def _members(path: Path) -> dict[str, bytes]:
    try:
        with tarfile.open(path, "r:*") as tar:
            return {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    except (tarfile.TarError, OSError) as exc:
        raise NemoFileError(f"{path}: not a readable .nemo archive ({exc})") from exc


def _target_kind(cfg: Mapping[str, Any]) -> str:
    target = str(cfg.get("target") or cfg.get("_target_") or "")
    name = target.rsplit(".", 1)[-1]
    if name not in MODEL_KINDS:
        raise UnsupportedConfigError(f"target = {target!r}: legato loads {sorted(MODEL_KINDS)} models")
    return MODEL_KINDS[name]


def heads_from_nemo(cfg: Mapping[str, Any], kind: str) -> HeadConfig:
    if kind == "ctc":
        dec = cfg["decoder"]
        return HeadConfig(kind, vocab_size=int(dec["num_classes"]))
    dec, joint = cfg["decoder"], cfg["joint"]
    if dec.get("blank_as_pad", True) is not True:
        raise UnsupportedConfigError(f"decoder.blank_as_pad = {dec.get('blank_as_pad')!r} is not supported")
    if dec.get("normalization_mode") is not None:
        raise UnsupportedConfigError(f"decoder.normalization_mode = {dec['normalization_mode']!r} is not supported")
    prednet, jointnet = dec["prednet"], joint["jointnet"]
    activation = str(jointnet.get("activation", "relu")).lower()
    if activation not in ("relu", "tanh", "sigmoid"):
        raise UnsupportedConfigError(f"joint.jointnet.activation = {activation!r} is not supported")
    greedy = (cfg.get("decoding") or {}).get("greedy") or {}
    max_symbols = greedy.get("max_symbols", 10)
    return HeadConfig(
        kind,
        vocab_size=int(dec["vocab_size"]),
        pred_hidden=int(prednet["pred_hidden"]),
        pred_layers=int(prednet.get("pred_rnn_layers", 1)),
        joint_hidden=int(jointnet["joint_hidden"]),
        joint_activation=activation,
        max_symbols=int(max_symbols) if max_symbols else 0,
    )


def model_config_from_nemo(cfg: Mapping[str, Any]) -> FastConformerModelConfig:
    kind = _target_kind(cfg)
    pre = cfg.get("preprocessor") or {}
    if pre.get("normalize", "per_feature") not in ("NA", None, False):
        raise UnsupportedConfigError(f"preprocessor.normalize = {pre.get('normalize')!r}: cache-aware streaming needs 'NA'")
    try:
        mel = NemoMelConfig.from_nemo(pre)
    except ValueError as exc:
        raise UnsupportedConfigError(f"preprocessor: {exc}") from exc
    return FastConformerModelConfig(mel=mel, encoder=FastConformerConfig.from_nemo(cfg["encoder"]), heads=heads_from_nemo(cfg, kind))


def _rename(key: str) -> str:
    for pattern, repl in DECODER_KEYS:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return key


def model_state_dict(nemo: Mapping[str, torch.Tensor], cfg: FastConformerModelConfig) -> dict[str, torch.Tensor]:
    enc = {k[len("encoder.") :]: v for k, v in nemo.items() if k.startswith("encoder.")}
    out = {f"encoder.{k}": v for k, v in encoder_state_dict(enc, cfg.encoder).items()}
    for key, value in nemo.items():
        if key.startswith(("decoder.", "joint.", "ctc_decoder.")):
            out[_rename(key)] = value.float()
    return out


def load_nemo(path: str | Path, device: str | torch.device = "cpu") -> tuple[FastConformerModel, SentencePieceTokenizer]:
    """Model (eval mode, fp32) and tokenizer from a ``.nemo`` file."""
    path = Path(path)
    if not path.is_file():
        raise NemoFileError(f"no such .nemo file: {path}")
    files = _members(path)
    for need in (CONFIG_MEMBER, WEIGHTS_MEMBER):
        if need not in files:
            raise NemoFileError(f"{path}: archive has no {need} (members: {sorted(files)[:8]})")
    cfg_map = yaml.safe_load(files[CONFIG_MEMBER])
    cfg = model_config_from_nemo(cfg_map)
    tok_cfg = cfg_map.get("tokenizer") or {}
    if tok_cfg.get("type", "bpe") != "bpe":
        raise UnsupportedConfigError(f"tokenizer.type = {tok_cfg.get('type')!r}: only SentencePiece ('bpe') is supported")
    tok_member = str(tok_cfg.get("model_path", "")).removeprefix("nemo:")
    if tok_member not in files:
        raise NemoFileError(f"{path}: tokenizer.model_path {tok_cfg.get('model_path')!r} is not in the archive")
    tokenizer = SentencePieceTokenizer(files[tok_member])
    if tokenizer.vocab_size != cfg.heads.vocab_size:
        raise NemoFileError(f"{path}: tokenizer has {tokenizer.vocab_size} pieces, the decoder {cfg.heads.vocab_size}")
    weights = torch.load(io.BytesIO(files[WEIGHTS_MEMBER]), map_location="cpu", weights_only=True)
    model = FastConformerModel(cfg)
    result = model.load_state_dict(model_state_dict(weights, cfg), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise NemoFileError(f"{path}: weights do not fit the config: missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    return model.eval().to(device), tokenizer
