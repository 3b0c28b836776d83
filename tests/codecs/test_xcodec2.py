"""XCodec2 decoder against the xcodec2 package (fixture by tests/fixtures/make_xcodec2_fixture.py); the windowed
streaming decoder; a Llasa voice (tiny Llama + tiny XCodec2) served end to end over gRPC."""

import numpy as np
import pytest
import torch

from legato.codecs.xcodec2 import XCodec2Error, XCodec2Streamer, load_xcodec2_decoder

from conftest import FIXTURES

XC = FIXTURES / "xcodec2"


@pytest.fixture(scope="module")
def fx():
    return load_xcodec2_decoder(XC / "xcodec2_tiny"), np.load(XC / "xcodec2_reference.npz")


@pytest.mark.parametrize("pre", ["", "random_"])
def test_decoder_matches_the_package(fx, pre):
    dec, z = fx
    codes = torch.from_numpy(z[f"{pre}codes"][0].astype(np.int64))
    with torch.inference_mode():
        feats = dec.features(codes)
        torch.testing.assert_close(feats[0], torch.from_numpy(z[f"{pre}dec_post_a"]), rtol=0, atol=1e-5)
        torch.testing.assert_close(dec.generator.backbone(feats)[0], torch.from_numpy(z[f"{pre}dec_backbone"]), rtol=0, atol=1e-4)
    wav = dec(codes)[0]
    assert wav.shape[0] == 320 * codes.shape[1]
    torch.testing.assert_close(wav, torch.from_numpy(z[f"{pre}decode_wav"][0, 0]), rtol=0, atol=1e-5)
    for n in z["prefix_lengths"].tolist() if not pre else []:
        torch.testing.assert_close(dec(codes[:, :n])[0], torch.from_numpy(z[f"prefix_decode_{n}"][0, 0]), rtol=0, atol=1e-5)


def test_streaming_decode_tiles_the_utterance(fx):
    """Whole context: the streamed audio is the whole decode; finite windows: same length, bounded difference."""
    dec, z = fx
    codes = z["codes"][0, 0].astype(np.int64).tolist()
    whole = dec(torch.tensor([codes]))[0]
    for left, right, tol in ((1000, 1000, 1e-5), (16, 8, 0.2)):
        s = XCodec2Streamer(dec, left, right)
        pieces = [s.push(codes[i : i + 10]) for i in range(0, len(codes), 10)] + [s.flush()]
        streamed = torch.cat(pieces)
        assert streamed.shape == whole.shape
        assert float((streamed - whole).abs().max()) <= tol  # the tiny random model's spread: NOTES.md, streaming study


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(XCodec2Error, match="model.safetensors"):
        load_xcodec2_decoder(tmp_path)


def test_llasa_voice_streams_over_grpc(tmp_path):
    import asyncio

    import grpc

    from legato.server.grpc_server import GrpcConfig, TtsGrpcServer
    from legato.server.tts_proto import load
    from legato.server.tts_service import TtsService
    from legato.tts.voices import load_voices

    yaml_file = tmp_path / "voices.yaml"
    yaml_file.write_text(f"voices:\n  llasa:\n    model: llasa\n    checkpoint: {FIXTURES / 'llasa' / 'llama_tiny'}\n"
                         f"    codec: {XC / 'xcodec2_tiny'}\n    seed: 5\n    date: 26 Jul 2024\n    max_requests: 4\n")
    voices, _ = load_voices(yaml_file)
    voice = voices["llasa"]
    voice.cap_tokens = lambda text: 60  # the random tiny model never says END: a fixed length
    pb2, pb2_grpc = load()

    async def main():
        server = await TtsGrpcServer(TtsService(voices), GrpcConfig(port=0)).start()
        try:
            async with grpc.aio.insecure_channel(server.target) as ch:
                stub = pb2_grpc.SynthesizerStub(ch)

                async def call(text):
                    return [c async for c in stub.SynthesizeStream(pb2.SynthesizeRequest(text=text, encoding=pb2.PCM_F32LE))]

                return await asyncio.gather(call("hello there"), call("a second request"), call("hello there"))
        finally:
            await server.stop(0)

    a, b, again = asyncio.run(asyncio.wait_for(main(), 120))
    for chunks in (a, b):
        assert chunks[-1].last and len(chunks) >= 3  # first group, then more groups, then the end
        total = sum(c.num_samples for c in chunks)  # 320 per speech token (the random model also writes text tokens: dropped)
        assert 0 < total <= 60 * 320 and total % 320 == 0 and chunks[0].sample_rate_hz == 16000
    same = lambda x: np.concatenate([np.frombuffer(c.audio, "<f4") for c in x])  # noqa: E731
    assert np.array_equal(same(a), same(again))  # a fixed seed gives the same audio whatever shares the batch
    assert voice.cache.in_use == 0


def test_streamed_seams_are_cross_faded_from_the_previous_window(fx):
    dec, z = fx
    codes = z["codes"][0, 0].astype(np.int64).tolist()
    s = XCodec2Streamer(dec, 16, 8)
    first = s.push(codes[:20])
    ahead = s.ahead.clone()  # what the first window decoded past its end (held back for more context)
    second = s.push(codes[20:30])
    assert ahead.numel() == 320 and first.numel() == 12 * 320 and second.numel() == 10 * 320
    plain = XCodec2Streamer(dec, 16, 8, fade=0)
    plain.push(codes[:20])
    unfaded = plain.push(codes[20:30])
    torch.testing.assert_close(second[320:], unfaded[320:])  # only the first 320 samples are blended
    w = 0.5 - 0.5 * torch.cos(torch.pi * (torch.arange(320) + 0.5) / 320)
    # the seam starts on the old window's waveform and ends on the new one's
    torch.testing.assert_close(second[:320], ahead * (1 - w) + unfaded[:320] * w)
