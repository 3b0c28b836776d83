"""F5-TTS voice: continuously batched flow-matching jobs equal the reference sampler; the voice streams chunks."""

import threading

import pytest
import soundfile
import torch

from legato.tts.f5.sampling import initial_noise, sample
from legato.tts.f5.voice import FlowSolver, split_text
from legato.tts.voice import SynthesisRequest
from legato.tts.voices import load_voices

from conftest import FIXTURES

F5 = FIXTURES / "tts" / "f5"


@pytest.fixture(scope="module")
def voice(tmp_path_factory, speech_dir):
    ref = next(iter(sorted(speech_dir.glob("en_*.wav"))))
    path = tmp_path_factory.mktemp("f5") / "voices.yaml"
    path.write_text(
        f"""
voices:
  f5:
    model: f5-tts
    checkpoint: {F5 / 'f5_tiny' / 'model_tiny.safetensors'}
    vocab: {F5 / 'f5_tiny' / 'vocab.txt'}
    arch: {{heads: 2, dim_head: 32}}
    steps: 4
    vocoder: {{config: {F5 / 'vocos_tiny' / 'config.yaml'}, weights: {F5 / 'vocos_tiny' / 'pytorch_model.bin'}}}
    reference_audio: {ref}
    reference_text: "a short reference."
"""
    )
    voices, _ = load_voices(path)
    v = voices["f5"]
    v.ref_audio = v.ref_audio[: 24000]  # 1 s keeps the test fast
    return v


def test_batched_jobs_equal_the_reference_sampler(voice):
    dit = voice.dit
    torch.manual_seed(0)
    cond = torch.randn(12, 100)
    texts, frames = [[3, 4, 5, 0, 6, 7], [8, 9, 10, 11]], [30, 22]
    noises = [initial_noise(torch.tensor([n]), 100, seed=s)[0] for n, s in zip(frames, (1, 2))]
    flow = FlowSolver(dit, cfg_strength=2.0)
    jobs = [flow.job(cond, t, n, steps=5, noise=z) for t, n, z in zip(texts, frames, noises)]
    got = flow.solve(jobs)  # both rows in one DiT call per step
    for t, n, z, mel in zip(texts, frames, noises, got):
        want = sample(dit, cond[None], torch.tensor([t]), n, steps=5, cfg_strength=2.0, sway_coef=-1.0, noise=z[None])[0]
        assert mel.shape == want.shape and torch.allclose(mel, want, atol=1e-4), float((mel - want).abs().max())


def test_epss_schedule_jobs_equal_the_reference_sampler(voice):
    flow = FlowSolver(voice.dit, cfg_strength=2.0)
    torch.manual_seed(1)
    cond, z = torch.randn(10, 100), initial_noise(torch.tensor([24]), 100, seed=3)[0]
    (got,) = flow.solve([flow.job(cond, [3, 4, 5], 24, steps=7, noise=z, schedule="epss")])
    want = sample(voice.dit, cond[None], torch.tensor([[3, 4, 5]]), 24, steps=7, noise=z[None], schedule="epss")[0]
    assert torch.allclose(got, want, atol=1e-4)


def test_split_text_short_first_chunk():
    text = "Hello there, my friend. This is a longer sentence that follows; and one more clause here."
    chunks = split_text(text, max_bytes=60, first_bytes=20)
    assert chunks[0] == "Hello there," and " ".join(chunks) == text
    assert all(len(c.encode()) <= 60 for c in chunks)


def test_a_clause_longer_than_the_budget_is_cut_at_spaces():
    """F5-TTS keeps a long clause whole: 2,000 characters without a comma were one job of minutes of audio."""
    text = "word " * 399 + "end"
    chunks = split_text(text, max_bytes=100, first_bytes=20)
    assert " ".join(chunks) == text.strip()
    assert len(chunks[0].encode()) <= 20 and all(len(c.encode()) <= 100 for c in chunks)
    assert all(len(c.encode()) <= 100 for c in split_text("ü" * 500, max_bytes=100))  # no space: cut mid-word, by bytes


def test_a_reference_whose_transcript_is_far_too_short_is_refused_before_any_work(voice):
    """F5-TTS times speech by the reference's characters per second: a 5 s reference 'transcribed' as one letter asks
    for minutes of audio per chunk. Refused (bounded work per request) before a job runs."""
    from legato.tts.f5.voice import MAX_JOB_S
    from legato.tts.voice import SynthesisError

    ref = torch.sin(torch.arange(5 * 16000) / 16000 * 2 * torch.pi * 200) * 0.1
    with pytest.raises(SynthesisError, match=f"limit is {MAX_JOB_S:g} s"):
        list(voice.chunks(SynthesisRequest("say this much longer sentence, please.", reference_audio=ref, reference_rate=16000, reference_text="a")))


def test_voice_streams_chunks_with_reference_from_the_request(voice):
    text = "hello there, we are talking. and this goes on for a while, in pieces."
    chunks = list(voice.chunks(SynthesisRequest(text)))
    assert len(chunks) >= 2 and all(c.dtype == torch.float32 and torch.isfinite(c).all() for c in chunks)
    total = sum(c.shape[0] for c in chunks)
    assert total > 24000 * 0.5
    ref = torch.sin(torch.arange(16000) / 16000 * 2 * torch.pi * 200) * 0.1
    zs = list(voice.chunks(SynthesisRequest("say this.", reference_audio=ref, reference_rate=16000, reference_text="a tone.")))
    assert sum(c.shape[0] for c in zs) > 0
    stop = threading.Event()
    stop.set()
    assert list(voice.chunks(SynthesisRequest(text), stop)) == []


def test_zero_shot_over_grpc_and_concurrent_requests_share_rounds(voice):
    """Two concurrent SynthesizeStream calls, one with its own reference audio (a WAV file's bytes)."""
    import asyncio
    import io

    import grpc

    from legato.server.grpc_server import GrpcConfig, TtsGrpcServer
    from legato.server.tts_proto import load
    from legato.server.tts_service import TtsService

    pb2, pb2_grpc = load()
    buf = io.BytesIO()
    soundfile.write(buf, (torch.sin(torch.arange(16000) / 16000 * 2 * torch.pi * 200) * 0.1).numpy(), 16000, format="WAV")
    rows = []  # jobs per DiT call
    step = voice.step_jobs
    voice.step_jobs = lambda jobs: (rows.append(len(jobs)), step(jobs))[1]

    async def main():
        server = await TtsGrpcServer(TtsService({"f5": voice}), GrpcConfig(port=0)).start()
        try:
            async with grpc.aio.insecure_channel(server.target) as ch:
                stub = pb2_grpc.SynthesizerStub(ch)

                async def call(**kw):
                    return [c async for c in stub.SynthesizeStream(pb2.SynthesizeRequest(**kw))]

                return await asyncio.gather(
                    call(text="hello there, how are you.", reference_audio=buf.getvalue(), reference_text="a tone.", sample_rate_hz=16000),
                    call(text="we talk, and talk."),
                )
        finally:
            await server.stop(0)

    try:
        zs, plain = asyncio.run(asyncio.wait_for(main(), 120))
    finally:
        del voice.step_jobs
    assert zs[-1].last and zs[0].sample_rate_hz == 16000 and sum(c.num_samples for c in zs) > 0
    assert plain[-1].last and plain[0].sample_rate_hz == 24000 and sum(c.num_samples for c in plain) > 0
    assert max(rows) >= 2
