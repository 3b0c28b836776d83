"""Piper voices into :class:`Vits`: weights from the ``.onnx`` file's initializers, or from a training ``.ckpt``.

The ONNX file (Piper's export: opset 15, TorchScript exporter) keeps most initializer names of the
PyTorch module, which are ours except where noted. The map:

==========================================  ==============================================  =================
ONNX initializer                            ours                                            how found
==========================================  ==============================================  =================
``enc_p.*``, ``dec.*``, ``dp.*`` (det.)     same name                                       by name
the ``Gather`` table indexed by ``input``   ``enc_p.emb.weight`` (named e.g. ``sid``)       by graph
the ``Gather`` table indexed by ``sid``     ``emb_g.weight``                                by graph
``flow.flows.{2i}.*``                       ``flow.flows.{i}.*`` (the odd ones are flips)   by name
``onnx::Conv_N`` (weight-normed convs)      the consuming Conv's module path + ``.weight``  by graph
``dp.flows.0.m``                            ``dp.affine.m``                                 by name
``/dp/flows.0/Exp_output_0``                ``dp.affine.logs = -log(value)``                folded exp(-logs)
the input of ``/dp/flows.0/Exp``            ``dp.affine.logs = -value``                     folded -logs
``dp.flows.{2i+3}.*``                       ``dp.conv_flows.{i}.*`` (ConvFlow_1 is unused)  by name
other int64 tensors and float scalars       graph constants (shape arithmetic, eps, scales) skipped
==========================================  ==============================================  =================

Everything else fails loudly: an initializer that maps to nothing, a shape that differs from the
architecture the shapes imply, a parameter left unfilled, an operator outside the set a Piper VITS
graph uses, or inputs/outputs other than Piper's. The decoder's upsampling strides and dilations, and
the flow's dilation, are read from the consuming nodes' attributes.

A Piper training checkpoint (``.ckpt``, PyTorch Lightning: ``state_dict`` with ``model_g.`` keys, weight
norm unfolded) maps the same way by name; its ``hyper_parameters`` give the decoder's strides and
dilations.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from legato.codecs.hifigan import HifiGanConfig, fold_weight_norm
from legato.stream.errors import LegatoError

from .config import InferenceDefaults, VitsConfig
from .model import Vits

# Operators of Piper's exported VITS graphs; any other means a graph we have not checked against.
KNOWN_OPS = frozenset(
    "Add Mul Unsqueeze Slice Gather Reshape Shape Transpose Concat Conv Sub Expand Div ReduceMean Pad ConstantOfShape "
    "Range Pow Sqrt Where ScatterND MatMul Equal Erf GatherElements Tanh Sigmoid LeakyRelu GatherND Squeeze Softmax "
    "NonZero Cast Neg Split CumSum Relu GreaterOrEqual Exp ReduceSum Less LessOrEqual And Not Softplus ConvTranspose "
    "RandomNormalLike RandomNormal Ceil Clip ReduceMax Constant Identity Max Min Greater Log Floor Or Flatten Tile "
    "Xor Sign Abs".split()
)
FOLDED_LOGS = "/dp/flows.0/Exp_output_0"


class VitsLoadError(LegatoError, ValueError):
    """A Piper voice file legato cannot load; the message names the file and what differs."""

    code = "unsupported_model"


@dataclass(frozen=True)
class PiperVoiceFile:
    """A loaded Piper voice: network, architecture and its ``.onnx.json``."""

    model: Vits
    config: VitsConfig
    voice_json: dict[str, Any]
    inference: InferenceDefaults


def read_voice_json(path: str | Path) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise VitsLoadError(f"{path}: cannot read the voice config: {exc}") from None
    for key in ("audio", "phoneme_id_map", "num_speakers"):
        if key not in doc:
            raise VitsLoadError(f"{path}: not a Piper voice config (no {key!r})")
    return doc


def inference_defaults(doc: dict[str, Any]) -> InferenceDefaults:
    inf = doc.get("inference") or {}
    d = InferenceDefaults()
    return InferenceDefaults(
        noise_scale=float(inf.get("noise_scale", d.noise_scale)),
        length_scale=float(inf.get("length_scale", d.length_scale)),
        noise_w=float(inf.get("noise_w", d.noise_w)),
    )


def load_piper_voice(model_path: str | Path, json_path: str | Path | None = None, device: str | torch.device = "cpu") -> PiperVoiceFile:
    """A Piper voice from ``voice.onnx`` (or a training ``.ckpt``) and its ``voice.onnx.json`` (default: model path + .json)."""
    model_path = Path(model_path)
    json_path = Path(json_path) if json_path else Path(str(model_path) + ".json")
    doc = read_voice_json(json_path)
    if model_path.suffix == ".ckpt":
        state, attrs = _ckpt_state(model_path)
    else:
        state, attrs = _onnx_state(model_path)
    cfg = config_from_state(state, attrs, sample_rate=int(doc["audio"]["sample_rate"]), where=model_path)
    if int(doc["num_speakers"]) != cfg.n_speakers:
        raise VitsLoadError(f"{json_path}: num_speakers {doc['num_speakers']} but {model_path.name} has {cfg.n_speakers}")
    model = Vits(cfg)
    _fill(model, state, model_path)
    return PiperVoiceFile(model.to(device).eval(), cfg, doc, inference_defaults(doc))


# --------------------------------------------------------------------------- ONNX


def _onnx_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import onnx
    from onnx import numpy_helper

    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise VitsLoadError(f"{path}: cannot read as ONNX: {exc}") from None
    g = proto.graph
    inputs = [i.name for i in g.input]
    if inputs[:3] != ["input", "input_lengths", "scales"] or inputs[3:] not in ([], ["sid"]) or [o.name for o in g.output] != ["output"]:
        raise VitsLoadError(f"{path}: inputs {inputs} / outputs {[o.name for o in g.output]} are not a Piper voice's (input, input_lengths, scales[, sid] -> output)")
    unknown = sorted({n.op_type for n in g.node} - KNOWN_OPS)
    if unknown:
        raise VitsLoadError(f"{path}: operators {unknown} are not in a Piper VITS graph as legato knows it")
    consumers: dict[str, list] = {}
    for node in g.node:
        for slot, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, slot))

    state: dict[str, torch.Tensor] = {}
    for init in g.initializer:
        arr = numpy_helper.to_array(init)
        name = init.name
        uses = consumers.get(name, [])
        target = _onnx_target(name, arr, uses)
        if target is None:
            if arr.dtype.kind in "iub" or arr.ndim == 0 or arr.size == 1:
                continue  # a graph constant
            where = ", ".join(f"{n.op_type} {n.name!r}" for n, _ in uses) or "no node"
            raise VitsLoadError(f"{path}: initializer {name!r} {list(arr.shape)} (used by {where}) maps to no VITS parameter")
        key, value = target
        if key in state:
            raise VitsLoadError(f"{path}: two initializers map to {key!r}")
        state[key] = torch.from_numpy(np.array(value, dtype=np.float32))

    attrs = {"strides": {}, "dilations": {}}
    for node in g.node:
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
            weight = _onnx_target(node.input[1], None, [(node, 1)])
            if weight is None:
                continue
            module = weight[0].rsplit(".", 1)[0]
            for a in node.attribute:
                if a.name == "strides":
                    attrs["strides"][module] = int(a.ints[0])
                if a.name == "dilations":
                    attrs["dilations"][module] = int(a.ints[0])
    return state, attrs


def _module_of(node) -> str | None:
    """'/flow/flows.0/enc/in_layers.0/Conv' -> 'flow.flows.0.enc.in_layers.0'."""
    parts = node.name.strip("/").split("/")
    return ".".join(parts[:-1]) if len(parts) > 1 else None


def _onnx_target(name: str, arr, uses) -> tuple[str, Any] | None:
    """(our parameter name, value) for an initializer, or None for a graph constant."""
    for node, slot in uses:
        if node.op_type == "Gather" and slot == 0 and len(node.input) > 1:
            if node.input[1] == "input":
                return "enc_p.emb.weight", arr
            if node.input[1] == "sid":
                return "emb_g.weight", arr
    if name == FOLDED_LOGS:
        return "dp.affine.logs", None if arr is None else -np.log(arr)
    for node, slot in uses:  # -logs folded, exp left in the graph (newer exporters)
        if node.op_type == "Exp" and _module_of(node) == "dp.flows.0":
            return "dp.affine.logs", None if arr is None else -arr
    if re.fullmatch(r"(enc_p|dec|flow|dp|emb_g)\..*\.(weight|bias|gamma|beta|emb_rel_k|emb_rel_v|m|logs)", name):
        return _our_name(name), arr
    for node, slot in uses:
        if node.op_type in ("Conv", "ConvTranspose") and slot in (1, 2):
            module = _module_of(node)
            if module and module.split(".")[0] in ("enc_p", "dec", "flow", "dp"):
                return _our_name(f"{module}.{'weight' if slot == 1 else 'bias'}"), arr
    return None


def _our_name(ref: str) -> str:
    """A reference (Piper SynthesizerTrn) parameter name -> ours."""
    m = re.match(r"flow\.flows\.(\d+)\.(.*)", ref)
    if m:
        i = int(m.group(1))
        return f"flow.flows.{i // 2}.{m.group(2)}" if i % 2 == 0 else f"flow.flip{i}.{m.group(2)}"
    m = re.match(r"dp\.flows\.(\d+)\.(.*)", ref)
    if m:
        i = int(m.group(1))
        if i == 0:
            return f"dp.affine.{m.group(2)}"
        if i >= 3 and i % 2 == 1:
            return f"dp.conv_flows.{(i - 3) // 2}.{m.group(2)}"
        return f"dp.unused_flow{i}.{m.group(2)}"
    return ref


# --------------------------------------------------------------------------- .ckpt

TRAINING_ONLY = re.compile(r"(enc_q\.|dp\.post_|dp\.flows\.[12]\.|model_d\.)")


def _ckpt_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise VitsLoadError(f"{path}: cannot read as a PyTorch checkpoint: {exc}") from None
    raw = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(raw, dict) or not any(k.startswith("model_g.") for k in raw):
        raise VitsLoadError(f"{path}: no 'model_g.' weights: not a Piper training checkpoint")
    folded = fold_weight_norm({k[len("model_g."):]: v for k, v in raw.items() if k.startswith("model_g.")})
    state = {_our_name(k): v for k, v in folded.items() if not TRAINING_ONLY.match(k)}
    hp = dict(ckpt.get("hyper_parameters") or {})
    attrs: dict[str, Any] = {"strides": {}, "dilations": {}}
    rates = hp.get("upsample_rates")
    if rates:
        attrs["strides"] = {f"dec.ups.{i}": int(u) for i, u in enumerate(rates)}
    dil = hp.get("resblock_dilation_sizes")
    if dil:
        n_ups = len(rates or [])
        for stage in range(max(n_ups, 1)):
            for j, ds in enumerate(dil):
                for c, d in enumerate(ds):
                    block = stage * len(dil) + j
                    attrs["dilations"][f"dec.resblocks.{block}.convs.{c}"] = int(d)
                    attrs["dilations"][f"dec.resblocks.{block}.convs1.{c}"] = int(d)
    if not rates or not dil:
        raise VitsLoadError(f"{path}: hyper_parameters lack upsample_rates / resblock_dilation_sizes (the decoder's shape)")
    return state, attrs


# --------------------------------------------------------------------------- architecture from shapes


def config_from_state(state: dict[str, torch.Tensor], attrs: dict[str, Any], *, sample_rate: int, where: Path) -> VitsConfig:
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise VitsLoadError(f"{where}: no {key!r}: not a Piper VITS voice")
        return tuple(state[key].shape)

    def count(pattern: str) -> int:
        rx = re.compile(pattern)
        return len({rx.match(k).group(1) for k in state if rx.match(k)})

    n_vocab, hidden = shape("enc_p.emb.weight")
    inter = shape("enc_p.proj.weight")[0] // 2
    filt, _, kernel = shape("enc_p.encoder.ffn_layers.0.conv_1.weight")
    _, rel, d_head = shape("enc_p.encoder.attn_layers.0.emb_rel_k")
    use_sdp = "dp.pre.weight" in state
    n_speakers, gin = shape("emb_g.weight") if "emb_g.weight" in state else (1, 0)
    if use_sdp:
        dp_filter, dp_kernel = hidden, shape("dp.convs.convs_sep.0.weight")[2]
        bins = (shape("dp.conv_flows.0.proj.weight")[0] + 1) // 3
    else:
        dp_filter, _, dp_kernel = shape("dp.conv_1.weight")
        bins = VitsConfig.spline_bins
    n_ups = count(r"dec\.ups\.(\d+)\.weight")
    n_blocks = count(r"dec\.resblocks\.(\d+)\.")
    kind = "1" if "dec.resblocks.0.convs1.0.weight" in state else "2"
    nk = n_blocks // max(n_ups, 1)
    conv_names = ("convs1",) if kind == "1" else ("convs",)
    n_dil = count(rf"dec\.resblocks\.0\.{conv_names[0]}\.(\d+)\.weight")
    try:
        rates = tuple(attrs["strides"][f"dec.ups.{i}"] for i in range(n_ups))
        dilations = tuple(
            tuple(attrs["dilations"][f"dec.resblocks.{j}.{conv_names[0]}.{c}"] for c in range(n_dil)) for j in range(nk)
        )
    except KeyError as exc:
        raise VitsLoadError(f"{where}: cannot find the decoder's stride/dilation for {exc.args[0]}") from None
    up_init = shape("dec.conv_pre.weight")[0]
    flow_dil = attrs["dilations"].get("flow.flows.0.enc.in_layers.1", 1)
    try:
        decoder = HifiGanConfig(
            resblock=kind, upsample_rates=rates, upsample_kernel_sizes=tuple(shape(f"dec.ups.{i}.weight")[2] for i in range(n_ups)),
            upsample_initial_channel=up_init,
            resblock_kernel_sizes=tuple(shape(f"dec.resblocks.{j}.{conv_names[0]}.0.weight")[2] for j in range(nk)),
            resblock_dilation_sizes=dilations, n_mels=inter, sample_rate=sample_rate, hop_length=math.prod(rates),
            post_bias="dec.conv_post.bias" in state, gin_channels=gin,
        )
    except ValueError as exc:
        raise VitsLoadError(f"{where}: decoder: {exc}") from None
    return VitsConfig(
        n_vocab=n_vocab, inter_channels=inter, hidden_channels=hidden, filter_channels=filt, n_heads=hidden // d_head,
        n_layers=count(r"enc_p\.encoder\.attn_layers\.(\d+)\."), kernel_size=kernel, window_size=(rel - 1) // 2,
        use_sdp=use_sdp, dp_filter_channels=dp_filter, dp_kernel_size=dp_kernel,
        sdp_flows=count(r"dp\.conv_flows\.(\d+)\.") + 1 if use_sdp else VitsConfig.sdp_flows,
        sdp_conv_layers=count(r"dp\.convs\.convs_sep\.(\d+)\.") if use_sdp else VitsConfig.sdp_conv_layers,
        spline_bins=bins, flow_kernel_size=shape("flow.flows.0.enc.in_layers.0.weight")[2], flow_dilation_rate=flow_dil,
        flow_wn_layers=count(r"flow\.flows\.0\.enc\.in_layers\.(\d+)\."), n_flows=count(r"flow\.flows\.(\d+)\.pre\."),
        n_speakers=n_speakers, gin_channels=gin, decoder=decoder,
    )


def _fill(model: Vits, state: dict[str, torch.Tensor], where: Path) -> None:
    ours = model.state_dict()
    extra = sorted(set(state) - set(ours))
    if extra:
        raise VitsLoadError(f"{where}: weights {extra[:8]}{' ...' if len(extra) > 8 else ''} have no place in the VITS architecture their shapes imply")
    missing = sorted(set(ours) - set(state))
    if missing:
        raise VitsLoadError(f"{where}: no weights for {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(ours[key].shape):
            raise VitsLoadError(f"{where}: {key} has shape {list(value.shape)}, the architecture needs {list(ours[key].shape)}")
    model.load_state_dict(state)
