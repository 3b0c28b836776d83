"""Whisper: encoder-decoder ASR (legato's embedded default, tiny.en).

* ``model``: the network (OpenAI module names), with a decoder KV cache.
* ``ct2``: reader for CTranslate2 ``model.bin`` folders; ``openai_ckpt``: OpenAI ``.pt`` files.
* ``tokenizer``, ``decoding`` (greedy, beam, timestamp rules), ``transcribe`` (long-form).
"""
