"""The gRPC TTS service end to end on loopback: streaming order and offsets, encodings, resampling, bad input,
health, reflection, auth, cancellation and deadlines."""

import asyncio
import io

import grpc
import numpy as np
import pytest
import soundfile

from legato.server.grpc_server import GrpcConfig, TtsGrpcServer
from legato.server.tts_proto import load
from legato.server.tts_service import TtsService
from legato.stream.resample import Resampler

from support.tts_toys import ToneVoice

pb2, pb2_grpc = load()


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _server(voices, **config):
    return await TtsGrpcServer(TtsService({v.name: v for v in voices}), GrpcConfig(port=0, **config)).start()


def test_stream_and_unary_agree_and_tile_the_audio():
    voice = ToneVoice()

    async def main():
        server = await _server([voice])
        try:
            async with grpc.aio.insecure_channel(server.target) as ch:
                stub = pb2_grpc.SynthesizerStub(ch)
                chunks = [c async for c in stub.SynthesizeStream(pb2.SynthesizeRequest(text="hello world", request_id="r1"))]
                unary = await stub.Synthesize(pb2.SynthesizeRequest(text="hello world", encoding=pb2.WAV))
                f32 = await stub.Synthesize(pb2.SynthesizeRequest(text="hello world", encoding=pb2.PCM_F32LE))
                voices = await stub.ListVoices(pb2.ListVoicesRequest())
            return chunks, unary, f32, voices
        finally:
            await server.stop(0)

    chunks, unary, f32, voices = _run(main())
    assert chunks[-1].last and not any(c.last for c in chunks[:-1]) and len(chunks) > 3
    offsets = [c.sample_offset for c in chunks]
    assert offsets == [sum(c.num_samples for c in chunks[:i]) for i in range(len(chunks))]
    assert all(c.request_id == "r1" and c.sample_rate_hz == 16000 for c in chunks)
    streamed = np.frombuffer(b"".join(c.audio for c in chunks), "<i2")
    want = voice.audio(type("R", (), {"text": "hello world", "speed": 1.0})())
    assert streamed.shape[0] == want.shape[0] == unary.num_samples
    wav, rate = soundfile.read(io.BytesIO(unary.audio), dtype="int16")
    assert rate == 16000 and np.array_equal(wav, streamed)
    assert np.allclose(np.frombuffer(f32.audio, "<f4"), want.numpy(), atol=1e-7)
    assert [v.name for v in voices.voices] == ["tone"] and voices.default_voice == "tone" and voices.voices[0].native_sample_rate_hz == 16000


def test_resampled_on_the_server_and_speed():
    voice = ToneVoice()

    async def main():
        server = await _server([voice])
        try:
            async with grpc.aio.insecure_channel(server.target) as ch:
                stub = pb2_grpc.SynthesizerStub(ch)
                chunks = [c async for c in stub.SynthesizeStream(pb2.SynthesizeRequest(text="abc", sample_rate_hz=48000, encoding=pb2.PCM_F32LE))]
                fast = await stub.Synthesize(pb2.SynthesizeRequest(text="abcd", speed=2.0))
            return chunks, fast
        finally:
            await server.stop(0)

    chunks, fast = _run(main())
    got = np.frombuffer(b"".join(c.audio for c in chunks), "<f4")
    want = Resampler(16000, 48000)(voice.audio(type("R", (), {"text": "abc", "speed": 1.0})())[:, None])[:, 0]
    assert got.shape[0] == want.shape[0] and np.allclose(got, want.numpy(), atol=1e-6)
    assert fast.num_samples == 4 * 800 // 2


@pytest.mark.parametrize(
    "request_fields,code,match",
    [
        ({"text": ""}, grpc.StatusCode.INVALID_ARGUMENT, "text is empty"),
        ({"text": "x" * 2001}, grpc.StatusCode.INVALID_ARGUMENT, "limit is 2000"),
        ({"text": "hi", "voice": "nobody"}, grpc.StatusCode.NOT_FOUND, "unknown voice 'nobody'"),
        ({"text": "hi", "speed": 9.0}, grpc.StatusCode.INVALID_ARGUMENT, "speed"),
        ({"text": "hi", "sample_rate_hz": 100}, grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hz"),
        ({"text": "hi", "encoding": 7}, grpc.StatusCode.INVALID_ARGUMENT, "unknown encoding"),
        ({"text": "hi", "reference_audio": b"RIFF garbage", "reference_text": "hi"}, grpc.StatusCode.INVALID_ARGUMENT, "does not take reference audio"),
        ({"text": "hi", "voice": "zs", "reference_audio": b"RIFF garbage", "reference_text": "hi"}, grpc.StatusCode.INVALID_ARGUMENT, "not a readable audio file"),
        ({"text": "hi", "voice": "zs", "reference_audio": b"x"}, grpc.StatusCode.INVALID_ARGUMENT, "needs reference_text"),
    ],
)
def test_bad_requests_get_the_right_status(request_fields, code, match):
    async def main():
        server = await _server([ToneVoice(), ToneVoice("zs", supports_reference=True)])
        try:
            async with grpc.aio.insecure_channel(server.target) as ch:
                stub = pb2_grpc.SynthesizerStub(ch)
                errors = []
                for call in (stub.Synthesize(pb2.SynthesizeRequest(**request_fields)),):
                    try:
                        await call
                    except grpc.aio.AioRpcError as exc:
                        errors.append(exc)
                try:
                    [c async for c in stub.SynthesizeStream(pb2.SynthesizeRequest(**request_fields))]
                except grpc.aio.AioRpcError as exc:
                    errors.append(exc)
                ok = await stub.Synthesize(pb2.SynthesizeRequest(text="still fine"))  # the server goes on
            return errors, ok
        finally:
            await server.stop(0)

    errors, ok = _run(main())
    assert len(errors) == 2 and all(e.code() == code and match in e.details() for e in errors)
    assert ok.num_samples > 0


def test_wav_is_refused_for_streams():
    async def main():
        server = await _server([ToneVoice()])
        try:
            async with grpc.aio.insecure_channel(server.target) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    [c async for c in pb2_grpc.SynthesizerStub(ch).SynthesizeStream(pb2.SynthesizeRequest(text="hi", encoding=pb2.WAV))]
            return err.value
        finally:
            await server.stop(0)

    assert _run(main()).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_cancel_and_deadline_stop_the_synthesis():
    slow = ToneVoice(delay_s=0.05)

    async def main():
        server = await _server([slow])
        try:
            async with grpc.aio.insecure_channel(server.target) as ch:
                stub = pb2_grpc.SynthesizerStub(ch)
                call = stub.SynthesizeStream(pb2.SynthesizeRequest(text="x" * 400))
                first = await call.read()
                call.cancel()
                await asyncio.sleep(0.5)
                cancelled_stopped = slow.stopped.is_set()
                slow.stopped.clear()
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Synthesize(pb2.SynthesizeRequest(text="x" * 400), timeout=0.3)
                await asyncio.sleep(0.5)
                return first, cancelled_stopped, err.value.code(), slow.stopped.is_set(), server.service.active
        finally:
            await server.stop(0)

    first, cancelled_stopped, code, deadline_stopped, active = _run(main())
    assert first.num_samples > 0 and cancelled_stopped and deadline_stopped and active == 0
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert slow.chunks_made < 2 * 400 * 800 // 1600  # far fewer chunks than two whole requests


def test_health_reflection_and_auth():
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async def main():
        server = await _server([ToneVoice()], auth_token="s3cret")
        try:
            async with grpc.aio.insecure_channel(server.target) as ch:
                hc = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="legato.tts.v1.Synthesizer"))
                stub = pb2_grpc.SynthesizerStub(ch)
                with pytest.raises(grpc.aio.AioRpcError) as denied:
                    await stub.ListVoices(pb2.ListVoicesRequest())
                ok = await stub.ListVoices(pb2.ListVoicesRequest(), metadata=(("authorization", "Bearer s3cret"),))
                refl = reflection_pb2_grpc.ServerReflectionStub(ch)
                services = []
                async for resp in refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=(("authorization", "Bearer s3cret"),)):
                    services = [s.name for s in resp.list_services_response.service]
            return hc, denied.value.code(), ok, services
        finally:
            await server.stop(0)

    hc, denied, ok, services = _run(main())
    assert hc.status == 1  # SERVING
    assert denied == grpc.StatusCode.UNAUTHENTICATED and ok.voices
    assert "legato.tts.v1.Synthesizer" in services and "grpc.health.v1.Health" in services


def test_say_cli_streams_from_the_server_to_a_wav(tmp_path):
    import subprocess
    import sys

    voice = ToneVoice(sample_rate=22050)
    out = tmp_path / "hello.wav"

    async def main():
        server = await _server([voice])
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "legato.clients.cli", "say", "hello there", "--server", server.target, "-o", str(out), "--rate", "16000",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
            _, err = await proc.communicate()
            listing = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "legato.clients.cli", "say", "x", "--server", server.target, "--list-voices", stdout=subprocess.PIPE,
            )
            names, _ = await listing.communicate()
            bad = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "legato.clients.cli", "say", "x", "--server", server.target, "--voice", "nobody", "-o", str(tmp_path / "n.wav"),
                stderr=subprocess.PIPE,
            )
            _, bad_err = await bad.communicate()
            return proc.returncode, err.decode(), names.decode(), bad.returncode, bad_err.decode()
        finally:
            await server.stop(0)

    code, err, names, bad_code, bad_err = _run(main())
    assert code == 0, err
    assert "first audio after" in err
    wav, rate = soundfile.read(out, dtype="float32")
    want = Resampler(22050, 16000)(voice.audio(type("R", (), {"text": "hello there", "speed": 1.0})())[:, None])[:, 0]
    assert rate == 16000 and wav.shape[0] == want.shape[0] and np.allclose(wav, want.numpy(), atol=1e-4)
    assert "* tone" in names
    assert bad_code == 1 and "NOT_FOUND" in bad_err and "unknown voice 'nobody'" in bad_err


def test_say_plays_while_streaming(virtual_mic, tmp_path):
    """`legato say --play` into a PulseAudio null sink; its monitor records what was played."""
    import subprocess
    import sys

    from support import mic_env

    voice = ToneVoice(sample_rate=16000, samples_per_char=1600)
    raw = tmp_path / "played.f32"

    async def main():
        server = await _server([voice])
        rec = subprocess.Popen(
            ["parec", f"--device={mic_env.SOURCE}", "--raw", "--format=float32le", "--rate=16000", "--channels=1", str(raw)], env=virtual_mic.env,
        )
        try:
            await asyncio.sleep(0.3)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "legato.clients.cli", "say", "a" * 10, "--server", server.target, "--play",
                env=virtual_mic.env, stderr=subprocess.PIPE,
            )
            _, err = await proc.communicate()
            await asyncio.sleep(0.3)
            return proc.returncode, err.decode()
        finally:
            rec.terminate()
            rec.wait(5)
            await server.stop(0)

    code, err = _run(main())
    assert code == 0, err
    played = np.fromfile(raw, "<f4")
    loud = np.abs(played) > 0.1
    assert loud.sum() > 0.5 * 10 * 1600, (played.shape, loud.sum())  # most of the 1 s tone came out of the sink


def test_tls_from_cert_paths(tmp_path):
    import shutil
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    from legato.clients.tts_client import channel, synthesize_stream

    async def main():
        server = await _server([ToneVoice()], certfile=str(cert), keyfile=str(key))
        try:
            async with channel(server.target, tls=True, root_cert=cert.read_bytes()) as ch:
                got = [c async for _, c, _ in synthesize_stream(ch, "hi")]
            async with grpc.aio.insecure_channel(server.target) as plain:  # plaintext to a TLS port fails
                with pytest.raises(grpc.aio.AioRpcError):
                    await pb2_grpc.SynthesizerStub(plain).ListVoices(pb2.ListVoicesRequest(), timeout=2)
            return got
        finally:
            await server.stop(0)

    got = _run(main())
    assert sum(c.shape[0] for c in got) == 2 * 800


def test_asr_and_tts_share_one_engine(recognizer, speech_dir):
    """`legato serve` with voices: one engine carries the ASR model's route and the voice's; both serve at once."""
    from legato.clients.ws_client import stream_audio
    from legato.server.models import pipeline_for
    from legato.server.tts_service import voice_routes
    from legato.server.ws_server import ServerConfig, TranscriptionServer
    from legato.stream.audio_io import read_audio
    from legato.stream.engine import Engine

    voice = ToneVoice(delay_s=0.01)
    routes = {recognizer.name: pipeline_for(recognizer, max_streams=4), **voice_routes({"tone": voice})}
    audio, rate = read_audio(str(speech_dir / "en_one_two_three.wav"), sample_rate=16000)

    async def main():
        with Engine(routes, max_streams=8) as engine:
            asr = await TranscriptionServer(engine, [recognizer.name], ServerConfig(port=0), own_engine=False).start()
            tts = await TtsGrpcServer(TtsService({"tone": voice}, engine=engine), GrpcConfig(port=0)).start()
            try:
                async with grpc.aio.insecure_channel(tts.target) as ch:
                    stub = pb2_grpc.SynthesizerStub(ch)

                    async def speak():
                        return [c async for c in stub.SynthesizeStream(pb2.SynthesizeRequest(text="x" * 40))]

                    async def listen():
                        return [m async for m in stream_audio(asr.url, audio, rate, chunk_ms=100)]

                    spoken, heard = await asyncio.gather(speak(), listen())
                return spoken, heard, engine.metrics()["stages"]
            finally:
                await tts.stop(0)
                await asr.drain()

    spoken, heard, stages = _run(main())
    assert spoken[-1].last and sum(c.num_samples for c in spoken) == 40 * 800
    finals = " ".join(m["text"] for m in heard if m["type"] == "final").lower()
    assert "one" in finals and "three" in finals
    assert stages["tts:tone"]["batch_size"]["count"] > 0 and stages["whisper"]["batch_size"]["count"] > 0, sorted(stages)
