"""``legato say TEXT``: speak text, playing (or writing) audio while the rest is still being synthesised."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from legato.clients.progress import seconds_counter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "say",
        help="synthesise speech (from a legato server over gRPC, or in-process) and play or save it",
        description="Speak TEXT. With --server the text goes to a legato TTS service (legato serve) and audio streams "
        "back; without it, the voice runs in this process: the embedded voice 'joe' (Piper en_US-joe-medium), or "
        "--voices FILE. Audio plays as it arrives (--play) and/or is written to a WAV file (-o). Time to first audio "
        "is printed on stderr.",
    )
    p.add_argument("text", help="what to say (quote it)")
    src = p.add_argument_group("voice")
    src.add_argument("--server", metavar="HOST:PORT", help="a legato gRPC TTS service, e.g. 127.0.0.1:50051")
    src.add_argument("--voices", metavar="FILE", help="without --server: voices YAML to load in-process (see docs/TTS.md; "
                     "default: the embedded voice joe)")
    src.add_argument("--voice", default="", help="voice name (default: the server's or file's default)")
    src.add_argument("--list-voices", action="store_true", help="list the voices and exit")
    src.add_argument("--speed", type=float, default=1.0, help="speaking rate, 0.25..4 (default 1; > 1 is faster)")
    src.add_argument("--reference-audio", metavar="FILE", help="zero-shot voices: audio of the voice to imitate")
    src.add_argument("--reference-text", default="", help="transcript of --reference-audio")
    out = p.add_argument_group("output")
    out.add_argument("-o", "--output", metavar="FILE.wav", help="write the audio to this WAV file")
    out.add_argument("--play", action="store_true", help="play through the default output device as audio arrives")
    out.add_argument("--device", help="with --play: output device (name or index; default the system's)")
    out.add_argument("--rate", type=int, default=0, help="sample rate of the output (default: the voice's)")
    net = p.add_argument_group("connection")
    net.add_argument("--token", help="bearer token the server requires")
    net.add_argument("--tls", action="store_true", help="connect with TLS (system root certificates)")
    p.set_defaults(func=run)


class _Sink:
    """Plays and/or writes float32 mono chunks; opened at the first chunk (when the rate is known)."""

    def __init__(self, output: str | None, play: bool, device: str | None):
        self.output, self.play, self.device = output, play, device
        self.file = self.stream = None
        self.samples = 0
        self.rate = 0

    def write(self, chunk, rate: int) -> None:
        import numpy as np

        if self.rate == 0:
            self.rate = rate
            if self.output:
                import soundfile

                self.file = soundfile.SoundFile(self.output, "w", samplerate=rate, channels=1, subtype="PCM_16")
            if self.play:
                import sounddevice

                dev = int(self.device) if self.device and self.device.isdigit() else self.device
                self.stream = sounddevice.OutputStream(samplerate=rate, channels=1, dtype="float32", device=dev)
                self.stream.start()
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        if self.file is not None:
            self.file.write(chunk)
        if self.stream is not None:
            self.stream.write(chunk[:, None])
        self.samples += chunk.shape[0]

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.stream is not None:
            self.stream.stop()  # waits for the buffered audio to play out
            self.stream.close()


LONG_TEXT_CHARS = 200  # texts longer than this show a progress counter


def run(args: argparse.Namespace) -> int:
    if not (args.output or args.play or args.list_voices):
        print("legato say: say where the audio goes: -o FILE.wav and/or --play", file=sys.stderr)
        return 2
    reference = b""
    if args.reference_audio:
        try:
            with open(args.reference_audio, "rb") as f:
                reference = f.read()
        except OSError as exc:
            print(f"legato say: {exc}", file=sys.stderr)
            return 2
    sink = _Sink(args.output, args.play, args.device)
    t0 = time.perf_counter()
    first = [None]
    # a long text takes a while to speak into a file: count the audio made (a terminal only; playing shows itself)
    add, close_bar = seconds_counter("speaking") if len(args.text) > LONG_TEXT_CHARS and not args.play else (None, None)

    def on_chunk(chunk, rate):
        if first[0] is None:
            first[0] = time.perf_counter() - t0
        sink.write(chunk, rate)
        if add is not None:
            add(len(chunk) / rate)

    try:
        if args.server:
            code = asyncio.run(_remote(args, reference, on_chunk))
        else:
            code = _local(args, reference, on_chunk)
    except KeyboardInterrupt:
        code = 130
    finally:
        sink.close()
        if close_bar is not None:
            close_bar()
    if code == 0 and not args.list_voices:
        total = time.perf_counter() - t0
        audio_s = sink.samples / sink.rate if sink.rate else 0.0
        ttfa = f"{first[0] * 1000:.0f} ms" if first[0] is not None else "-"
        print(f"({audio_s:.2f} s of audio at {sink.rate} Hz; first audio after {ttfa}, all in {total:.2f} s)", file=sys.stderr)
    return code


async def _remote(args, reference: bytes, on_chunk) -> int:
    import grpc

    from legato.clients.tts_client import channel, list_voices, synthesize_stream

    async with channel(args.server, tls=args.tls) as ch:
        try:
            if args.list_voices:
                resp = await list_voices(ch, args.token)
                for v in resp.voices:
                    mark = "*" if v.name == resp.default_voice else " "
                    print(f"{mark} {v.name:20s} {v.model:24s} {v.native_sample_rate_hz} Hz{'  zero-shot' if v.supports_reference_audio else ''}")
                return 0
            async for _, chunk, rate in synthesize_stream(
                ch, args.text, voice=args.voice, sample_rate=args.rate, speed=args.speed,
                reference_audio=reference, reference_text=args.reference_text, token=args.token,
            ):
                if chunk.size:
                    await asyncio.to_thread(on_chunk, chunk, rate)  # playback blocks; keep the channel serviced
        except grpc.aio.AioRpcError as exc:
            print(f"legato say: server said {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0


def _local(args, reference: bytes, on_chunk) -> int:
    from legato.server.tts_requests import TtsRequestError, parse_request
    from legato.server.tts_service import TtsService
    from legato.stream.intra_op import serial_main_thread
    from legato.tts.voices import VoiceConfigError, default_voices, load_voices

    serial_main_thread()  # the voice loads here but runs on the engine's worker (stream/intra_op.py)

    try:
        voices, default = load_voices(args.voices) if args.voices else default_voices()
        if args.list_voices:
            for name, v in voices.items():
                print(f"{'*' if name == default else ' '} {name:20s} {v.model:24s} {v.sample_rate} Hz")
            return 0
        parsed = parse_request(
            text=args.text, voice=args.voice, sample_rate_hz=args.rate, encoding=0, speed=args.speed, reference_audio=reference,
            reference_text=args.reference_text, request_id="", voices=voices, default_voice=default, streaming=True,
        )
    except (VoiceConfigError, TtsRequestError) as exc:
        print(f"legato say: {exc}", file=sys.stderr)
        return 2

    async def speak() -> None:
        service = TtsService(voices, default)  # the same engine route as the server's, in this process
        try:
            async for _, chunk in service.stream(parsed):
                await asyncio.to_thread(on_chunk, chunk.numpy(), parsed.sample_rate)
        finally:
            service.close()

    try:
        asyncio.run(speak())
    except ValueError as exc:  # the voice refused the request (SynthesisError)
        print(f"legato say: {exc}", file=sys.stderr)
        return 2
    return 0
