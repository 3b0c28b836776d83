"""Streaming Paraformer on the engine: any client chunking gives FunASR's chunk-loop tokens; streams batch."""

import threading

import numpy as np
import pytest
import torch

from legato.asr.paraformer.recognizer import ParaformerRecognizer
from legato.asr.paraformer.stage import ParaformerStage
from legato.stream.engine import Engine
from legato.stream.frames import EndOfStream, TextEvent, TextKind
from legato.stream.graph import Pipeline
from legato.stream.stages import RechunkStage, ResampleStage
from legato.stream.testing import audio_chunks

from conftest import FIXTURES

PARA = FIXTURES / "paraformer"


@pytest.fixture(scope="module")
def rec():
    return ParaformerRecognizer.from_folder(PARA / "paraformer_streaming_tiny")


@pytest.fixture(scope="module")
def clips():
    z = np.load(PARA / "paraformer_streaming_tiny.npz")
    return [torch.from_numpy(z["audio"][c, : int(z["audio_len"][c])]) for c in (0, 1)], z


def pipeline(rec):
    return Pipeline([ResampleStage(16000), RechunkStage(rec.chunk_samples), ParaformerStage(rec, capacity=8, max_batch=8)], name=rec.name)


def test_any_client_chunking_gives_funasr_tokens_and_streams_batch(rec, clips):
    (zh, en), z = clips
    want = {c: [z[k].tolist() for k in sorted(k for k in z.files if k.startswith(f"c0_10_5/s{c}/") and k.endswith("token_ids"))] for c in (0, 1)}
    assert rec.streaming_ids(zh) == want[0] and rec.streaming_ids(en) == want[1]
    texts = [rec.text([i for step in want[c] for i in step]) for c in (0, 1)]
    gen = torch.Generator().manual_seed(3)
    feeds = {
        "zh_random": (zh, [int(x) for x in torch.randint(100, 5000, (200,), generator=gen)], texts[0]),
        "en_exact": (en, [rec.chunk_samples], texts[1]),
        "zh_small": (zh, [333], texts[0]),
        "en_whole": (en, [en.shape[0]], texts[1]),
    }
    stage_pipe = pipeline(rec)
    results = {}
    with Engine(stage_pipe, default_budget_s=5.0) as engine:
        handles = {k: engine.open_stream(options={"endpointing": False}, stream_id=k) for k in feeds}

        def feed(k):
            audio, sizes, _ = feeds[k]
            for ch in audio_chunks(audio, 16000, sizes):
                handles[k].push(ch, timeout=30)
            handles[k].end(timeout=30)

        threads = [threading.Thread(target=feed, args=(k,)) for k in feeds]
        for t in threads:
            t.start()
        for k, h in handles.items():
            results[k] = h.results(timeout=60)
        for t in threads:
            t.join()
        batch = engine.metrics()["stages"]["paraformer"]["batch_size"]
    for k, frames in results.items():
        assert isinstance(frames[-1], EndOfStream), frames[-1]
        finals = [f for f in frames if isinstance(f, TextEvent) and f.kind is TextKind.FINAL]
        assert [f.text for f in finals] == [feeds[k][2]], k
        assert any(f.kind is TextKind.PARTIAL for f in frames if isinstance(f, TextEvent))
    assert batch["max"] >= 2
    stage = stage_pipe.stages[-1]
    assert stage.pool.in_use == 0 and stage.fe_pool.in_use == 0


@pytest.mark.parametrize("extra", [0, 500, 959, 960, 5000])
def test_the_end_of_stream_follows_funasr_tail_rule(rec, clips, extra):
    """A last piece shorter than one LFR hop ends with FunASR's tail chunk, a longer one with a final step."""
    (zh, _), _ = clips
    audio = zh[: rec.chunk_samples * 3 + extra]
    want = rec.text([i for step in rec.streaming_ids(audio) for i in step])
    with Engine(pipeline(rec)) as engine:
        h = engine.open_stream(options={"endpointing": False})
        for ch in audio_chunks(audio, 16000, 777):
            h.push(ch)
        h.end()
        frames = h.results(timeout=30)
    finals = [f.text for f in frames if isinstance(f, TextEvent) and f.kind is TextKind.FINAL]
    assert finals == ([want] if want else [])


def test_offline_folder_is_refused_for_live_streaming():
    offline = ParaformerRecognizer.from_folder(PARA / "paraformer_tiny")
    with pytest.raises(ValueError, match="offline Paraformer"):
        ParaformerStage(offline)
