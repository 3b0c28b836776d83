"""legato: a streaming, real-time audio and speech runtime.

The subpackages live in the repository-root folders (``stream/``, ``asr/``,
``tts/``, ...) and are mapped under this package by ``pyproject.toml``.
"""

__version__ = "0.1.0"
