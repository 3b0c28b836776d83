"""GPU: the bulk step replayed from CUDA graphs (one per phase and batch bucket, padding rows on a scratch pool row)
gives every stream exactly the eager step's tokens, whatever the batch sizes and phases that mix; the bulk server
over graphs gives the words it gives eagerly. Skipped without CUDA (CI has none); run on the device machine."""

import numpy as np
import pytest
import torch

from legato.asr.fastconformer.bulk import BulkTranscriber
from legato.asr.fastconformer.recognizer import FastConformerRecognizer

from conftest import FIXTURES

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"), pytest.mark.gpu,
              pytest.mark.usefixtures("exact_fp32")]  # true fp32 on both sides
NEMO = FIXTURES / "nemo"


def _run(rec, decoder: str, graphs: bool, audios: list[np.ndarray], joins: dict[int, int], max_batch: int, pipeline: bool = False,
         graph_rows: int = 4096):
    """Streams joining at the given ticks, random push sizes (same seed both sides), stepped every tick."""
    bulk = BulkTranscriber(rec, capacity=len(audios) + 3, decoder=decoder, max_batch=max_batch, cuda_graphs=graphs,
                           pipeline=pipeline, graph_rows=graph_rows)
    if not graphs:  # the reference: audio copied on the step's own stream (no side-stream uploads)
        bulk.uploads = None
    rng = np.random.default_rng(1)
    slots, sent = {}, {}
    for tick in range(60):
        for i, t in joins.items():
            if t == tick:
                slots[i], sent[i] = bulk.open(), 0
        for i, slot in slots.items():
            if sent[i] < len(audios[i]):
                n = min(int(rng.integers(bulk.chunk // 2, 2 * bulk.chunk)), len(audios[i]) - sent[i])
                try:
                    bulk.push(slot, audios[i][sent[i]:sent[i] + n])
                    sent[i] += n
                except Exception:  # a full queue: send it again next tick
                    pass
        bulk.step()
    while bulk.step():
        pass
    return {i: (bulk.streams[s].tokens, bulk.streams[s].token_frames) for i, s in slots.items()}, bulk


@pytest.mark.parametrize("graph_rows", [4096, 16], ids=["one-replay", "pieces"])
@pytest.mark.parametrize("pipeline", [False, True], ids=["serial", "pipelined"])
@pytest.mark.parametrize("name,decoder", [("ctc_tiny", "ctc"), ("hybrid_tiny", "rnnt")])
def test_graph_steps_equal_eager_steps(name, decoder, pipeline, graph_rows):
    """``pipeline``: the graph steps' outputs read back asynchronously, each step completed during the next; the
    graph side's audio crosses on the upload stream (double-buffered), the eager side's on the step's stream;
    ``graph_rows`` 16: steps of up to 37 rows replay the 16-row graph on pieces (one graph's buffers reused within
    a step)."""
    rec = FastConformerRecognizer.from_nemo(NEMO / f"{name}.nemo", device="cuda")
    rng = np.random.default_rng(0)
    n = 37  # joins spread so that first and steady steps of many batch sizes (1 .. 37, buckets 16/32/64) mix
    audios = [(rng.standard_normal(int(rng.integers(4, 12)) * 2560) * 0.3).astype(np.float32) for _ in range(n)]
    joins = {i: (0 if i < 20 else int(rng.integers(1, 20))) for i in range(n)}  # 20 at once: buckets 32 and 64
    eager, eager_bulk = _run(rec, decoder, False, audios, joins, max_batch=64)
    graphed, bulk = _run(rec, decoder, True, audios, joins, max_batch=64, pipeline=pipeline, graph_rows=graph_rows)
    assert bulk.graphs is not None and len(bulk.graphs._graphs) >= 2
    assert graphed == eager
    assert any(tokens for tokens, _ in eager.values())
    for slot in sorted(bulk.streams)[:3]:  # finish: its own steps and the end, outputs read back from the device
        done, want = bulk.finish(slot), eager_bulk.finish(slot)
        assert (done.tokens, done.token_frames) == (want.tokens, want.token_frames)


def test_capture_touches_no_stream():
    """Capturing every bucket (warm-up runs on the scratch row) leaves open streams' state as it was."""
    rec = FastConformerRecognizer.from_nemo(NEMO / "ctc_tiny.nemo", device="cuda")
    bulk = BulkTranscriber(rec, capacity=5, max_batch=32)
    slots = bulk.open_many(4)
    bulk.push_many(slots, (np.random.default_rng(0).standard_normal((4, bulk.chunk)) * 0.3).astype(np.float32))
    bulk.step()
    before = [t[:5].clone() for _, t in bulk.pool.state.leaves()] + [bulk._tail[:5].clone(), bulk._mel_carry[:5].clone()]
    bulk.graphs.capture_all()
    after = [t[:5] for _, t in bulk.pool.state.leaves()] + [bulk._tail[:5], bulk._mel_carry[:5]]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
