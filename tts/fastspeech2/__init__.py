"""FastSpeech 2 (ming024/FastSpeech2 checkpoints): phoneme ids -> log-mel frames.

``config.py`` (settings from preprocess.yaml + model.yaml + stats.json), ``symbols.py`` (ming024's
symbol table, phones -> ids), ``model.py`` (encoder, variance adaptor, length regulator, decoder,
postnet), ``loader.py`` (``load_fastspeech2``, key table). The vocoder is ``legato.codecs.hifigan``.
"""
