"""F5-TTS: flow-matching text-to-speech over 24 kHz Vocos mels.

``config.py`` (F5Config, v1 Base defaults), ``dit.py`` (the DiT), ``vocab.py`` (vocab.txt),
``loader.py`` (official ``.pt``/``.safetensors`` -> model + vocab, one key table), ``sampling.py``
(Euler ODE, sway, EPSS, CFG as one doubled batch), ``duration.py`` (F5-TTS's frames-per-byte rule).
The vocoder is ``legato.codecs.vocos``.
"""
