"""Engine: batching across streams, deadlines, back-pressure, metrics, failure isolation."""

import asyncio
import threading
import time

import pytest
import torch

from legato.stream.engine import Engine
from legato.stream.errors import CapacityError, ClosedError, NonFiniteAudioError
from legato.stream.frames import AudioChunk, EndOfStream, ErrorEvent, FeatureChunk
from legato.stream.graph import PerStreamStage, Pipeline
from legato.stream.metrics import format_metrics
from legato.stream.stages import ModelStage
from legato.stream.testing import run_streams
from support.streaming_toys import RunningSum, SlowStage, concat_features, feature_chunks


def _model_stage(max_batch=8, capacity=8):
    return ModelStage(RunningSum(4), name="sum", capacity=capacity, max_batch=max_batch)


def test_streams_join_and_leave_mid_batch():
    """Streams start and end at different chunks yet share steps, and each gets its own result."""
    torch.manual_seed(0)
    stage = _model_stage()
    xs = {name: torch.randn(n, 4) for name, n in [("a", 40), ("b", 24), ("c", 8)]}
    with Engine(stage) as engine:
        a = engine.open_stream(stream_id="a")
        chunks_a = feature_chunks(xs["a"], 4)
        for ch in chunks_a[:3]:
            a.push(ch)
        b = engine.open_stream(stream_id="b")  # joins while a is mid-stream
        for ch_a, ch_b in zip(chunks_a[3:], feature_chunks(xs["b"], 4)):
            a.push(ch_a)
            b.push(ch_b)
        b.end()  # leaves before a
        c = engine.open_stream(stream_id="c")  # takes a freed slot, maybe b's
        for ch in feature_chunks(xs["c"], 4):
            c.push(ch)
        c.end()
        for ch in chunks_a[3 + 6 :]:
            a.push(ch)
        a.end()
        outs = {h.stream_id: h.results() for h in (a, b, c)}
        sizes = engine.metrics()["stages"]["sum"]["batch_size"]
    for name, frames in outs.items():
        assert isinstance(frames[-1], EndOfStream)
        torch.testing.assert_close(concat_features(frames), xs[name].cumsum(0))
    assert stage.pool.in_use == 0  # every slot went back
    assert sizes["count"] > 0


def test_batches_really_form_across_streams():
    stage = _model_stage(max_batch=4)
    xs = {str(i): torch.randn(32, 4) for i in range(4)}
    # A long budget lets the scheduler wait for every stream's chunk.
    out = run_streams(stage, {k: feature_chunks(v, 4) for k, v in xs.items()}, default_budget_s=5.0)
    for k, v in xs.items():
        torch.testing.assert_close(concat_features(out[k]), v.cumsum(0))


def test_deadline_releases_a_partial_batch():
    """With other streams idle, a lone frame waits for company only until its deadline."""
    slow = SlowStage(max_batch=4)
    with Engine(slow, default_budget_s=0.3) as engine:
        a = engine.open_stream()
        engine.open_stream()  # idle streams that could have joined the batch
        engine.open_stream()
        t0 = time.monotonic()
        a.push(FeatureChunk(torch.zeros(1, 1), 0, 160, 16000))
        assert a.get(timeout=5.0) is not None
        waited = time.monotonic() - t0
    assert 0.2 < waited < 0.6, waited  # released close to the 0.3 s deadline, not at once, not never


def test_full_batch_releases_at_once():
    slow = SlowStage(max_batch=2)
    with Engine(slow, default_budget_s=10.0) as engine:
        hs = [engine.open_stream() for _ in range(3)]
        t0 = time.monotonic()
        for h in hs[:2]:
            h.push(FeatureChunk(torch.zeros(1, 1), 0, 160, 16000))
        assert all(h.get(timeout=5.0) is not None for h in hs[:2])
        assert time.monotonic() - t0 < 1.0  # full batch of 2: no waiting for the 10 s deadline
    assert slow.calls[0][1] == 2


def test_bounded_queue_pushes_back_without_dropping():
    gate = threading.Event()
    slow = SlowStage(gate=gate)
    frames = [FeatureChunk(torch.full((1, 1), float(i)), i, 160, 16000) for i in range(8)]
    with Engine(slow, queue_frames=2) as engine:
        h = engine.open_stream()
        h.push(frames[0])  # taken into the (blocked) step
        time.sleep(0.1)
        h.push(frames[1], timeout=1)
        h.push(frames[2], timeout=1)
        with pytest.raises(TimeoutError, match="queue full"):
            h.push(frames[3], timeout=0.2)  # queue of 2 is full: the producer is held back
        gate.set()
        for f in frames[3:]:
            h.push(f, timeout=5)
        h.end()
        out = h.results()
    values = [float(f.features) for f in out if isinstance(f, FeatureChunk)]
    assert values == [float(i) for i in range(8)]  # nothing dropped, order kept


def test_slow_consumer_holds_back_the_pipeline():
    slow = SlowStage()
    with Engine(slow, queue_frames=2, output_frames=2) as engine:
        h = engine.open_stream()
        pushed = 0
        with pytest.raises(TimeoutError):
            for i in range(100):
                h.push(FeatureChunk(torch.zeros(1, 1), i, 160, 16000), timeout=0.3)
                pushed += 1
        assert pushed <= 2 + 2 + 2  # output queue + stage queue + slack of one step
        h.cancel()


def test_per_stage_metrics_are_recorded():
    stages = Pipeline([SlowStage(name="first", delay_s=0.002), _model_stage()])
    xs = {str(i): torch.randn(12, 4) for i in range(3)}
    with Engine(stages) as engine:
        hs = [engine.open_stream() for _ in xs]
        for h, x in zip(hs, xs.values()):
            for ch in feature_chunks(x, 4):
                h.push(ch)
            h.end()
        for h in hs:
            h.results()
        snap = engine.metrics()
    assert set(snap["stages"]) == {"first", "sum"}
    first = snap["stages"]["first"]
    assert first["compute_s"]["count"] == first["batch_size"]["count"] > 0
    assert first["compute_s"]["p50"] >= 0.002 * 0.9
    assert first["frames_in"] == 3 * 4  # 3 data chunks + end, per stream
    assert snap["stages"]["sum"]["queue_wait_s"]["count"] > 0
    assert snap["end_to_end_s"]["count"] == 9
    text = format_metrics(snap)
    assert "end-to-end" in text and "compute" in text


class CheckFinite(PerStreamStage):
    name = "check"
    accepts = (FeatureChunk,)
    max_batch = 8

    def process(self, batch):
        for _, f in batch:
            if isinstance(f, FeatureChunk) and not torch.isfinite(f.features).all():
                raise NonFiniteAudioError("NaN in features")
        return super().process(batch)

    def handle(self, ctx, frame):
        return [frame]


def test_stage_failure_ends_only_the_affected_stream():
    model = _model_stage()
    pipe = Pipeline([CheckFinite(), model])
    good = torch.randn(16, 4)
    bad = good.clone()
    bad[9, 2] = float("nan")
    out = run_streams(pipe, {"good1": feature_chunks(good, 4), "bad": feature_chunks(bad, 4), "good2": feature_chunks(good, 4)}, default_budget_s=2.0)
    for name in ("good1", "good2"):
        assert isinstance(out[name][-1], EndOfStream)
        torch.testing.assert_close(concat_features(out[name]), good.cumsum(0))
    err = out["bad"][-1]
    assert isinstance(err, ErrorEvent) and err.code == "non_finite_audio" and err.stage == "check"
    assert model.pool.in_use == 0  # the failed stream's slot was released too


def test_push_after_end_is_an_error():
    with Engine(SlowStage()) as engine:
        h = engine.open_stream()
        h.end()
        with pytest.raises(ClosedError):
            h.push(FeatureChunk(torch.zeros(1, 1), 0, 160, 16000))
        h.results()


def test_capacity_limits_are_clear_errors():
    with Engine(_model_stage(capacity=2), max_streams=3) as engine:
        engine.open_stream()
        engine.open_stream()
        with pytest.raises(CapacityError, match="full"):
            engine.open_stream()  # the model's pool holds 2
        assert engine.active_streams == 2
    with Engine(SlowStage(), max_streams=1) as engine:
        engine.open_stream()
        with pytest.raises(CapacityError, match="maximum of 1"):
            engine.open_stream()


def test_asyncio_api_never_blocks_the_loop():
    stage = _model_stage()
    x = torch.randn(20, 4)

    async def main():
        with Engine(stage, queue_frames=1) as engine:
            h = engine.open_stream()
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.001)

            t = asyncio.create_task(ticker())

            async def produce():
                for ch in feature_chunks(x, 2):
                    await h.apush(ch)
                await h.aend()

            p = asyncio.create_task(produce())
            frames = [f async for f in h]
            await p
            t.cancel()
            return frames, ticks

    frames, ticks = asyncio.run(main())
    assert isinstance(frames[-1], EndOfStream)
    torch.testing.assert_close(concat_features(frames), x.cumsum(0))
    assert ticks > 0


def test_resample_and_rechunk_pipeline_through_the_engine():
    from legato.stream.resample import Resampler
    from legato.stream.stages import RechunkStage, ResampleStage
    from legato.stream.testing import audio_chunks, concat_audio

    x = torch.randn(4410 * 3, 1)
    pipe = ResampleStage(16000) | RechunkStage(320)
    out = run_streams(pipe, {"s": audio_chunks(x, 44100, [1000, 37, 2500])})["s"]
    chunks = [f for f in out if isinstance(f, AudioChunk)]
    assert all(c.num_samples == 320 for c in chunks[:-1]) and chunks[-1].num_samples <= 320
    assert [c.start_sample for c in chunks] == [i * 320 for i in range(len(chunks))]
    torch.testing.assert_close(concat_audio(out), Resampler(44100, 16000)(x), atol=1e-6, rtol=0)


class CountingCheck(PerStreamStage):
    """Per-stream stage that fails on NaN and counts how often each frame is handled."""

    name = "count"
    accepts = (FeatureChunk,)
    max_batch = 8

    def __init__(self):
        self.handled = {}

    def handle(self, ctx, frame):
        key = (id(ctx), frame.start_frame)
        self.handled[key] = self.handled.get(key, 0) + 1
        if not torch.isfinite(frame.features).all():
            raise NonFiniteAudioError("NaN in features")
        return [frame]

    def open(self, stream):
        return object()


def test_per_stream_failure_does_not_replay_other_streams():
    stage = CountingCheck()
    good = torch.randn(16, 4)
    bad = good.clone()
    bad[5, 0] = float("nan")
    out = run_streams(stage, {"a": feature_chunks(good, 4), "bad": feature_chunks(bad, 4), "b": feature_chunks(good, 4)}, default_budget_s=2.0)
    assert isinstance(out["bad"][-1], ErrorEvent) and out["bad"][-1].code == "non_finite_audio"
    for name in ("a", "b"):
        torch.testing.assert_close(concat_features(out[name]), good)
    assert set(stage.handled.values()) == {1}  # no frame of any stream was handled twice


class _Record(PerStreamStage):
    """Passes frames on; records each stream's audio frames as (start_sample, samples)."""

    accepts = (AudioChunk,)
    name, max_batch = "record", 8

    def __init__(self, gate: threading.Event | None = None):
        self.seen: dict[str, list[tuple[int, int]]] = {}
        self.gate = gate

    def open(self, stream):
        return self.seen.setdefault(stream.stream_id, [])

    def process(self, batch):
        if self.gate is not None:
            self.gate.wait(10)
        return super().process(batch)

    def handle(self, ctx, frame):
        ctx.append((frame.start_sample, frame.num_samples))
        return [frame]


def _audio(seconds: float, start: int = 0) -> AudioChunk:
    n = round(seconds * 16000)
    return AudioChunk(torch.arange(start, start + n, dtype=torch.float32)[:, None], 16000, start)


def test_a_long_audio_frame_enters_as_pieces_of_max_frame_s():
    """One frame is one stream's share of a step: 1.2 s pushed at once is three steps' worth, not one."""
    from legato.stream.engine import MAX_FRAME_S

    stage = _Record()
    out = run_streams(stage, {"s": [_audio(1.2, 320)]})["s"]
    piece = round(MAX_FRAME_S * 16000)
    assert stage.seen["s"] == [(320, piece), (320 + piece, piece), (320 + 2 * piece, 19200 - 2 * piece)]
    assert torch.equal(torch.cat([f.samples for f in out if isinstance(f, AudioChunk)])[:, 0], torch.arange(320, 320 + 19200, dtype=torch.float32))


def test_queued_small_frames_are_joined_up_to_max_frame_s():
    """A stream whose 100 ms frames queued up while a step ran gets up to MAX_FRAME_S of them in its next step, as a
    stream that sent big messages does: fair share counts audio, not frames."""
    gate = threading.Event()
    stage = _Record(gate)
    with Engine(stage, queue_frames=16) as engine:
        h = engine.open_stream(stream_id="s")
        h.push(_audio(0.1))
        time.sleep(0.2)  # the worker is in its first step, held at the gate
        for k in range(1, 9):
            h.push(_audio(0.1, 1600 * k))
        h.end()
        gate.set()
        out = h.results(10)
    assert stage.seen["s"] == [(0, 1600), (1600, 8000), (9600, 4800)]
    assert torch.equal(torch.cat([f.samples for f in out if isinstance(f, AudioChunk)])[:, 0], torch.arange(0, 14400, dtype=torch.float32))
