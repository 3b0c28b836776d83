"""One engine, several routes; generating stages (pending + Tick): ASR and TTS share the engine's workers."""

import dataclasses
import threading
import time

import pytest
import torch

from legato.stream.engine import Engine, UnknownRouteError
from legato.stream.frames import AudioChunk, EndOfStream, FeatureChunk, SpeechRequest, Tick
from legato.stream.graph import PerStreamStage, Pipeline, Stage
from legato.stream.stages import ModelStage
from legato.tts.stage import VoiceStage, voice_route
from legato.tts.voice import Submit, SynthesisRequest, Voice, Wait
from support.streaming_toys import RunningSum, concat_features, feature_chunks


class Scale(PerStreamStage):
    accepts = (FeatureChunk,)

    def __init__(self, k, name):
        self.k, self.name = k, name

    def handle(self, ctx, frame):
        return [dataclasses.replace(frame, features=frame.features * self.k)]


def test_routes_share_a_stage_and_batch_together():
    """Two routes end in one ModelStage object: their streams batch in the same steps, each gets its own result."""
    shared = ModelStage(RunningSum(4), name="sum", capacity=8, max_batch=8)
    routes = {"double": Pipeline([Scale(2.0, "scale"), shared]), "triple": Pipeline([Scale(3.0, "scale"), shared])}
    torch.manual_seed(0)
    xs = {name: torch.randn(16, 4) for name in routes}
    with Engine(routes, default_budget_s=5.0) as engine:
        assert set(engine.metrics()["stages"]) == {"double/scale", "triple/scale", "sum"}
        handles = {name: engine.open_stream(route=name) for name in routes}
        for name, h in handles.items():
            for ch in feature_chunks(xs[name], 4):
                h.push(ch)
            h.end()
        outs = {name: h.results() for name, h in handles.items()}
        sizes = engine.metrics()["stages"]["sum"]["batch_size"]
        with pytest.raises(UnknownRouteError, match="double, triple"):
            engine.open_stream(route="nope")
    torch.testing.assert_close(concat_features(outs["double"]), 2 * xs["double"].cumsum(0))
    torch.testing.assert_close(concat_features(outs["triple"]), 3 * xs["triple"].cumsum(0))
    assert sizes["max"] == 2  # a step held a stream of each route
    assert shared.pool.in_use == 0


class Countdown(Stage):
    """A generating stage: a request for n chunks emits one chunk per step, driven by Ticks."""

    name, max_batch = "countdown", 8

    def __init__(self):
        self.closed, self.ticks, self.batch_sizes = [], 0, []

    def open(self, stream):
        return {"left": 0, "ending": False, "n": 0}

    def close(self, ctx):
        self.closed.append(ctx["left"])

    def pending(self, ctx):
        return ctx["left"] > 0

    def process(self, batch):
        self.batch_sizes.append(len(batch))
        out = []
        for ctx, frame in batch:
            if isinstance(frame, SpeechRequest):
                ctx["left"] = frame.request
            elif isinstance(frame, EndOfStream):
                ctx["ending"] = True
            elif isinstance(frame, Tick):
                self.ticks += 1
            frames = []
            if ctx["left"] > 0:
                ctx["left"] -= 1
                frames.append(AudioChunk(torch.full((10, 1), float(ctx["n"])), 16000, 10 * ctx["n"]))
                ctx["n"] += 1
            if ctx["ending"] and ctx["left"] == 0:
                frames.append(EndOfStream())
                ctx["ending"] = False
            out.append(frames)
        return out


def test_generating_stage_runs_on_ticks_and_ends_after_its_work():
    stage = Countdown()
    with Engine(stage) as engine:
        handles = [engine.open_stream() for _ in range(3)]
        for n, h in zip((5, 20, 1), handles):
            h.push(SpeechRequest(n))
            h.end()  # end arrives long before the work is done
        outs = [h.results() for h in handles]
    for n, frames in zip((5, 20, 1), outs):
        assert isinstance(frames[-1], EndOfStream)
        assert [int(f.samples[0, 0]) for f in frames[:-1]] == list(range(n))
    assert stage.ticks >= 20 - 2 and max(stage.batch_sizes) >= 2  # ticks of several streams in one step


def test_generation_pauses_for_a_slow_reader_and_cancel_stops_it():
    stage = Countdown()
    with Engine(stage, output_frames=3) as engine:
        h = engine.open_stream()
        h.push(SpeechRequest(1000))
        time.sleep(0.2)
        assert 1000 - stage.ticks > 900  # back-pressure: no room after the stage, no ticks
        assert h.get(1.0) is not None
        h.cancel()
        deadline = time.monotonic() + 5
        while not stage.closed and time.monotonic() < deadline:
            time.sleep(0.01)
    assert stage.closed and stage.closed[0] > 900  # closed mid-generation


class Job:
    def __init__(self, steps):
        self.left, self.done, self.result = steps, False, None


class JobVoice(Voice):
    """Each request: two jobs of ``len(text)`` steps, waited for in order; yields one chunk per job."""

    name, model, sample_rate, max_jobs = "jobs", "toy", 8000, 3

    def __init__(self):
        self.calls = []

    def stream(self, request, cancelled):
        jobs = [Job(len(request.text)), Job(len(request.text) + 1)]
        yield Submit(jobs)
        for j in jobs:
            steps = yield Wait(j)
            yield torch.full((steps,), 0.5)

    def step_jobs(self, jobs):
        self.calls.append(len(jobs))
        for j in jobs:
            j.left -= 1
            if j.left == 0:
                j.done, j.result = True, 100 + len(self.calls)


def test_voice_stage_steps_the_jobs_of_all_requests_together():
    voice = JobVoice()
    route = voice_route(voice)
    with Engine({"tts:jobs": route}, default_budget_s=0.2) as engine:
        handles = [engine.open_stream(options={"sample_rate": 8000}, route="tts:jobs") for _ in range(3)]
        for h in handles:
            h.push(SpeechRequest(SynthesisRequest("abcd")))
            h.end()
        outs = [h.results() for h in handles]
    for frames in outs:
        chunks = [f for f in frames if isinstance(f, AudioChunk)]
        assert isinstance(frames[-1], EndOfStream) and len(chunks) == 2
        assert [c.start_sample for c in chunks] == [0, chunks[0].num_samples]
    assert max(voice.calls) == voice.max_jobs  # jobs of different requests in one call, capped
    assert len(voice.calls) < 3 * (4 + 5)  # far fewer calls than job steps


def test_voice_chunks_drives_one_request_alone():
    voice = JobVoice()
    chunks = list(voice.chunks(SynthesisRequest("abc")))
    assert [c.shape[0] for c in chunks] == [103, 104]  # results sent back into the generator
    stop = threading.Event()
    stop.set()
    assert list(voice.chunks(SynthesisRequest("abc"), stop)) == []


def test_a_failing_request_ends_alone():
    class Flaky(JobVoice):
        def stream(self, request, cancelled):
            if request.text == "bad":
                raise ValueError("no")
            yield from super().stream(request, cancelled)

    with Engine(voice_route(Flaky())) as engine:
        good, bad = (engine.open_stream(options={"sample_rate": 8000}) for _ in range(2))
        good.push(SpeechRequest(SynthesisRequest("fine")))
        bad.push(SpeechRequest(SynthesisRequest("bad")))
        good.end()
        bad.end()
        g, b = good.results(), bad.results()
    assert isinstance(g[-1], EndOfStream) and b[-1].code == "stage_failed" and "no" in b[-1].message


def test_voice_stage_steps_the_most_urgent_jobs_first():
    """Capped steps take jobs earliest-due first across requests (first chunks before chunks due later)."""
    voice = JobVoice()
    stepped = []
    voice.step_jobs = lambda jobs: stepped.append([j.due for j in jobs])
    stage = VoiceStage(voice)
    a, b = stage.open(None), stage.open(None)
    for ctx, dues in ((a, [5.0, 9.0, 1.0]), (b, [3.0, 2.0])):
        for d in dues:
            job = Job(3)
            job.due = d
            ctx.jobs.append(job)
    stage._step_jobs([a, b])
    assert stepped == [[1.0, 2.0, 3.0]]  # max_jobs = 3
