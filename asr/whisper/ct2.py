"""Read CTranslate2 ``model.bin`` files and load Whisper models from them.

The format (binary version 6, little endian, as CTranslate2 writes it)::

    u32  binary_version                      6
    str  spec_name                           "WhisperSpec"
    u32  spec_revision                       3
    u32  num_variables
    num_variables times:
        str  name                            "encoder/layer_0/self_attention/linear_0/weight"
        u8   rank
        u32  dims[rank]                      row-major
        u8   dtype                           0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16
        u32  num_bytes
        u8   data[num_bytes]
    u32  num_aliases
    num_aliases times:
        str  alias, str target               "decoder/projection/weight" -> "decoder/embeddings/weight"

    str = u16 length (including a final NUL) + that many bytes

Rank-0 variables are configuration (``encoder/num_heads``, ``decoder/activation``,
...). Attention projections are fused: ``self_attention/linear_0`` stacks
query, key and value (3d rows), cross ``attention/linear_1`` stacks key and
value; Whisper's key projection has no bias, so those bias rows are zero.
A model folder also has ``config.json`` (suppressed tokens, alignment heads,
language ids) and ``tokenizer.json``.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from legato.asr.whisper.model import Whisper, WhisperDims

SUPPORTED_BINARY_VERSION = 6
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
BFLOAT16 = 5


class Ct2FormatError(ValueError):
    """A model.bin that is not a CTranslate2 Whisper model legato can read."""


@dataclass(frozen=True)
class Ct2Model:
    spec: str
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str]

    def get(self, name: str) -> torch.Tensor:
        return self.variables[self.aliases.get(name, name)]

    def scalar(self, name: str) -> int:
        return int(self.get(name).item())


def read_model_bin(path: str | Path) -> Ct2Model:
    """Parse a model.bin into tensors (float16 stays float16)."""
    data = Path(path).read_bytes()
    offset = 0

    def take(fmt: str):
        nonlocal offset
        value = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return value[0]

    def raw(n: int) -> bytes:
        nonlocal offset
        if offset + n > len(data):
            raise struct.error(f"needs {n} bytes at offset {offset}, file has {len(data)}")
        chunk = data[offset : offset + n]
        offset += n
        return chunk

    def string() -> str:
        return raw(take("H")).rstrip(b"\0").decode("utf-8")

    try:
        version = take("I")
        if version != SUPPORTED_BINARY_VERSION:
            raise Ct2FormatError(f"{path}: CTranslate2 binary version {version}; legato reads version {SUPPORTED_BINARY_VERSION}")
        spec, revision, count = string(), take("I"), take("I")
        variables: dict[str, torch.Tensor] = {}
        for _ in range(count):
            name = string()
            dims = [take("I") for _ in range(take("B"))]
            dtype, size = take("B"), take("I")
            payload = raw(size)
            if dtype == BFLOAT16:
                array = torch.frombuffer(bytearray(payload), dtype=torch.bfloat16)
            elif dtype in DTYPES:
                array = torch.from_numpy(np.frombuffer(payload, dtype=DTYPES[dtype]).copy())
            else:
                raise Ct2FormatError(f"{path}: variable {name} has unknown dtype code {dtype}")
            variables[name] = array.reshape(dims)
        aliases = {}
        if offset < len(data):
            for _ in range(take("I")):
                alias = string()
                aliases[alias] = string()
    except struct.error as exc:
        raise Ct2FormatError(f"{path}: truncated CTranslate2 model file ({exc})") from exc
    return Ct2Model(spec, revision, variables, aliases)


def dims_of(model: Ct2Model) -> WhisperDims:
    """Model sizes read off the variables' shapes."""
    if model.spec != "WhisperSpec":
        raise Ct2FormatError(f"model.bin holds a {model.spec}, not a WhisperSpec")

    def layers(prefix: str) -> int:
        return len({m.group(1) for n in model.variables if (m := re.match(prefix + r"/layer_(\d+)/", n))})

    emb = model.get("decoder/embeddings/weight")
    return WhisperDims(
        n_mels=model.get("encoder/conv1/weight").shape[1],
        n_audio_ctx=model.get("encoder/position_encodings/encodings").shape[0],
        n_audio_state=model.get("encoder/conv1/weight").shape[0],
        n_audio_head=model.scalar("encoder/num_heads"),
        n_audio_layer=layers("encoder"),
        n_vocab=emb.shape[0],
        n_text_ctx=model.get("decoder/position_encodings/encodings").shape[0],
        n_text_state=emb.shape[1],
        n_text_head=model.scalar("decoder/num_heads"),
        n_text_layer=layers("decoder"),
    )


# CTranslate2 name (with {i} for the layer) -> ours. Fused projections are split below.
KEY_TABLE = {
    "encoder/conv1/{w}": "encoder.conv1.{w}",
    "encoder/conv2/{w}": "encoder.conv2.{w}",
    "encoder/position_encodings/encodings": "encoder.positional_embedding",
    "encoder/layer_norm/{ln}": "encoder.ln_post.{ln}",
    "encoder/layer_{i}/self_attention/layer_norm/{ln}": "encoder.blocks.{i}.attn_ln.{ln}",
    "encoder/layer_{i}/self_attention/linear_0/{w}": "encoder.blocks.{i}.attn.[query,key,value].{w}",
    "encoder/layer_{i}/self_attention/linear_1/{w}": "encoder.blocks.{i}.attn.out.{w}",
    "encoder/layer_{i}/ffn/layer_norm/{ln}": "encoder.blocks.{i}.mlp_ln.{ln}",
    "encoder/layer_{i}/ffn/linear_0/{w}": "encoder.blocks.{i}.mlp.0.{w}",
    "encoder/layer_{i}/ffn/linear_1/{w}": "encoder.blocks.{i}.mlp.2.{w}",
    "decoder/embeddings/weight": "decoder.token_embedding.weight",
    "decoder/position_encodings/encodings": "decoder.positional_embedding",
    "decoder/layer_norm/{ln}": "decoder.ln.{ln}",
    "decoder/layer_{i}/self_attention/layer_norm/{ln}": "decoder.blocks.{i}.attn_ln.{ln}",
    "decoder/layer_{i}/self_attention/linear_0/{w}": "decoder.blocks.{i}.attn.[query,key,value].{w}",
    "decoder/layer_{i}/self_attention/linear_1/{w}": "decoder.blocks.{i}.attn.out.{w}",
    "decoder/layer_{i}/attention/layer_norm/{ln}": "decoder.blocks.{i}.cross_attn_ln.{ln}",
    "decoder/layer_{i}/attention/linear_0/{w}": "decoder.blocks.{i}.cross_attn.query.{w}",
    "decoder/layer_{i}/attention/linear_1/{w}": "decoder.blocks.{i}.cross_attn.[key,value].{w}",
    "decoder/layer_{i}/attention/linear_2/{w}": "decoder.blocks.{i}.cross_attn.out.{w}",
    "decoder/layer_{i}/ffn/layer_norm/{ln}": "decoder.blocks.{i}.mlp_ln.{ln}",
    "decoder/layer_{i}/ffn/linear_0/{w}": "decoder.blocks.{i}.mlp.0.{w}",
    "decoder/layer_{i}/ffn/linear_1/{w}": "decoder.blocks.{i}.mlp.2.{w}",
}
LAYER_NORM_PARAMS = {"gamma": "weight", "beta": "bias"}


def _patterns() -> list[tuple[re.Pattern, str]]:
    out = []
    for src, dst in KEY_TABLE.items():
        rx = re.escape(src).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{w\}", r"(?P<w>weight|bias)")
        rx = rx.replace(r"\{ln\}", r"(?P<ln>gamma|beta)")
        out.append((re.compile(rx + "$"), dst))
    return out


def state_dict_from_ct2(model: Ct2Model) -> dict[str, torch.Tensor]:
    """Map every tensor variable onto our parameter names, splitting fused projections."""
    state: dict[str, torch.Tensor] = {}
    patterns = _patterns()
    for name, value in model.variables.items():
        if value.dim() == 0:
            continue  # configuration scalars
        for rx, dst in patterns:
            m = rx.match(name)
            if not m:
                continue
            groups = m.groupdict()
            if "ln" in groups and groups["ln"]:
                groups["ln"] = LAYER_NORM_PARAMS[groups["ln"]]
            target = dst.format(**{k: v for k, v in groups.items() if v is not None})
            fused = re.search(r"\[([a-z,]+)\]", target)
            if fused:
                parts = fused.group(1).split(",")
                for part, chunk in zip(parts, value.chunk(len(parts), dim=0)):
                    key = target.replace(fused.group(0), part)
                    if key.endswith("key.bias"):
                        if bool(chunk.float().abs().max() > 0):
                            raise Ct2FormatError(f"{name}: Whisper's key projection has no bias, found non-zero values")
                        continue
                    state[key] = chunk
            else:
                state[target] = value
            break
        else:
            raise Ct2FormatError(f"model.bin variable {name!r} has no place in legato's Whisper (unsupported variant?)")
    return state


def load_ct2_whisper(folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> tuple[Whisper, dict]:
    """A CTranslate2 Whisper folder -> (model in eval mode, config.json contents)."""
    folder = Path(folder)
    ct2 = read_model_bin(folder / "model.bin")
    for flag, expected in (("decoder/activation", 3), ("decoder/pre_norm", 1), ("decoder/scale_embeddings", 0)):
        if flag in ct2.variables and ct2.scalar(flag) != expected:
            raise Ct2FormatError(f"{flag} = {ct2.scalar(flag)}; legato's Whisper expects {expected}")
    dims = dims_of(ct2)
    model = Whisper(dims)
    state = {k: v.to(torch.float32) for k, v in state_dict_from_ct2(ct2).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise Ct2FormatError(f"weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    return model.to(device=device, dtype=dtype).eval(), config
