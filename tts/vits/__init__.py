"""Piper VITS voices in our own PyTorch: ``.onnx`` (or training ``.ckpt``) + ``.onnx.json`` in, streamed speech out.

- `config.py`: the architecture (:class:`VitsConfig`) and a voice's inference defaults.
- `text_encoder.py`: relative-attention transformer over phoneme ids -> the prior per phoneme.
- `duration.py`: the deterministic and stochastic duration predictors (inference direction).
- `flow.py`: the residual-coupling flow, run in reverse; its receptive field.
- `model.py`: :class:`Vits`: ``encode`` (sentence -> prior sample per frame) and ``decode`` (frames -> waveform).
- `loader.py`: weights from ONNX initializers (name map, graph checks) or Lightning checkpoints.
- `streaming.py`: decoding a sentence in frame windows with exactly enough overlap.
- `voice.py`: the TTS voice: Piper's phonemes, requests batched in the voice stage.
"""
