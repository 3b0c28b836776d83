"""A Llasa + XCodec2 voice: the Llama writes speech tokens, continuously batched across requests; XCodec2 decodes
them to audio in groups as they come.

Each request is one :class:`ArJob` on the voice's :class:`ArStepper` (all requests share one KV cache of
``max_requests`` slots and every fused step; prompts are prefilled in chunks beside the running decodes). The
request's generator waits for the first ``first_group`` tokens (fast first audio), then ``group`` at a time,
and pushes each group through the codec's streaming decoder. Zero-shot: the reference clip is encoded by
XCodec2 (the voice's default clip once, at load; a request's own clip in its request), its codes follow
``<|SPEECH_GENERATION_START|>`` in the prompt (its transcript precedes the text), and they prime the streaming
decoder as left context (decoded, not emitted). A clip the encoder refuses, or a prompt longer than the KV cache
holds per request, is the request's fault (``SynthesisError``). Generation stops at
``<|SPEECH_GENERATION_END|>`` or at a length cap from the text (``CAP_S_BASE + CAP_S_PER_CHAR`` per character).
"""

from __future__ import annotations

import math
import random
import threading
from typing import Iterator, Protocol

import torch

from legato.stream.autoregressive import ArJob, ArStepper, TokenMark
from legato.tts.llasa.llama import Llama
from legato.tts.llasa.prompt import LlasaTokenizer, LlasaTokenizerError
from legato.tts.llasa.sampling import SamplingParams, sample
from legato.tts.voice import Submit, SynthesisError, SynthesisRequest, Voice, Wait

TOKENS_PER_S = 50  # XCodec2
FIRST_GROUP = 10  # tokens before the first audio: 0.2 s of speech
GROUP = 25  # then 0.5 s at a time
CAP_S_BASE, CAP_S_PER_CHAR = 2.0, 0.15  # generation cap: generous for ~7 characters per second of speech
MAX_REQUESTS = 64
MAX_TOKENS = 2048  # per request, prompt included (Llasa's max_length)
TOKEN_BUDGET = 2048  # tokens per fused step
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class StreamingCodec(Protocol):
    sample_rate: int

    def encode(self, audio: torch.Tensor) -> list[int]: ...

    def streamer(self, context: list[int] | None = None): ...


class LlasaVoice(Voice):
    model = "llasa+xcodec2"
    supports_reference = True

    def __init__(self, name: str, llama: Llama, tokenizer: LlasaTokenizer, codec: StreamingCodec, *,
                 params: SamplingParams = SamplingParams(), seed: int | None = None, max_requests: int = MAX_REQUESTS,
                 max_tokens: int = MAX_TOKENS, token_budget: int = TOKEN_BUDGET, first_group: int = FIRST_GROUP, group: int = GROUP,
                 ref_audio: torch.Tensor | None = None, ref_text: str = ""):
        self.name, self.llama, self.tokenizer, self.codec = name, llama, tokenizer, codec
        self.sample_rate = codec.sample_rate
        self.supports_reference = bool(getattr(codec, "can_encode", True))
        self.params, self.seed = params, seed
        self.first_group, self.group = first_group, group
        # the default clip is encoded once, here: a bad clip fails at load time, not in every request
        self.ref_codes = codec.encode(ref_audio) if ref_audio is not None and self.supports_reference else []
        self.ref_text = ref_text if self.ref_codes else ""
        tokenizer.speech_tokens(self.ref_codes)  # every code has its token
        self.cache = llama.new_cache(max_requests, max_tokens)
        self.stepper = ArStepper(llama, self.cache, sample, token_budget=token_budget)
        if self.stepper.graphs is not None:
            self.stepper.graphs.prepare()  # capture decode graphs now, not in the middle of serving
        self.max_jobs = max_requests
        self.device = str(next(llama.parameters()).device)

    def step_jobs(self, jobs: list[ArJob]) -> None:
        self.stepper.step(jobs)

    def cap_tokens(self, text: str) -> int:
        return math.ceil((CAP_S_BASE + CAP_S_PER_CHAR * len(text)) * TOKENS_PER_S)

    def _reference(self, request: SynthesisRequest) -> tuple[list[int], str]:
        if request.reference_audio is not None:
            from legato.stream.resample import Resampler

            audio = Resampler(request.reference_rate, self.sample_rate)(request.reference_audio[:, None])[:, 0]
            try:
                return self.codec.encode(audio), request.reference_text
            except ValueError as exc:  # the clip's fault (too short, not finite): a bad request, not a failure
                raise SynthesisError(f"reference_audio: {exc}") from None
        return self.ref_codes, self.ref_text

    @torch.inference_mode()
    def stream(self, request: SynthesisRequest, cancelled: threading.Event) -> Iterator:
        codes, ref_text = self._reference(request)
        prompt = self.tokenizer.prompt_ids(request.text, ref_text, codes)
        if len(prompt) >= self.cache.max_tokens:
            raise SynthesisError(f"the prompt is {len(prompt)} tokens (reference clip {len(codes)} at 50 per second, and the "
                                 f"texts); this voice holds {self.cache.max_tokens} per request: shorten the reference or the text")
        seed = self.seed if self.seed is not None else random.getrandbits(62)
        params = SamplingParams(self.params.temperature, self.params.top_p, self.params.top_k, self.params.repetition_penalty, seed)
        job = ArJob(prompt, params, frozenset({self.tokenizer.speech_end}), self.cap_tokens(request.text))
        decoder = self.codec.streamer(context=codes)
        try:
            yield Submit([job])
            done, target = 0, self.first_group
            while True:
                ids = yield Wait(TokenMark(job, target))
                fresh = self.tokenizer.codes(ids[done:])
                done = len(ids)
                audio = decoder.push(fresh) if fresh else torch.zeros(0)
                if audio.numel():
                    yield audio
                if job.done and done == len(job.generated):
                    break
                target = done + self.group
            tail = decoder.flush()
            if tail.numel():
                yield tail
        finally:
            if not job.done:  # cancelled or failed: free the KV slot at once
                self.stepper.finish(job, "cancelled")


def llasa_from_spec(name: str, spec: dict, path) -> LlasaVoice:
    """voices.yaml: ``model: llasa``, ``checkpoint`` (HF Llama folder with its tokenizer), ``codec`` (XCodec2 folder);
    optional ``device``, ``dtype`` (``bfloat16`` on CUDA, ``float32`` on the CPU by default), ``temperature``,
    ``top_p``, ``top_k``, ``repetition_penalty``, ``seed``, ``max_requests``, ``max_tokens``,
    ``codec_left``/``codec_right`` (streaming decode context, codes), ``codec_encoder`` (default true: load XCodec2's
    encoder, 0.44 B float32 parameters (w2v-BERT's first 16 layers and the acoustic convs), so requests may bring
    reference audio; false saves its memory and the voice takes no reference), ``reference_audio`` +
    ``reference_text`` (a default zero-shot prompt clip and its transcript, both or neither; encoded at load),
    ``date`` (the chat template's "Today Date"; default today, as transformers)."""
    from legato.codecs.xcodec2 import XCodec2Codec, XCodec2Error, load_xcodec2_decoder
    from legato.codecs.xcodec2_encoder import load_xcodec2_encoder

    for key in ("checkpoint", "codec"):
        if not spec.get(key):
            raise SynthesisError(f"voice {name!r}: llasa voices need {key!r} (the Llama folder and the XCodec2 folder)")
    device = spec.get("device", "cpu")
    dtype_name = spec.get("dtype", "bfloat16" if str(device).startswith("cuda") else "float32")
    if dtype_name not in DTYPES:
        raise SynthesisError(f"voice {name!r}: dtype {dtype_name!r} is not one of {', '.join(DTYPES)}")
    llama = Llama.from_pretrained(path(spec["checkpoint"]), device, DTYPES[dtype_name])
    tokenizer = LlasaTokenizer.from_folder(path(spec["checkpoint"]))
    tokenizer.date = spec.get("date")
    encoder = load_xcodec2_encoder(path(spec["codec"]), device) if spec.get("codec_encoder", True) else None
    codec = XCodec2Codec(load_xcodec2_decoder(path(spec["codec"]), device), int(spec.get("codec_left", 50)),
                         int(spec.get("codec_right", 8)), encoder)
    params = SamplingParams(float(spec.get("temperature", 0.8)), float(spec.get("top_p", 1.0)), int(spec.get("top_k", 50)),
                            float(spec.get("repetition_penalty", 1.0)))
    ref_audio, ref_text = None, str(spec.get("reference_text", ""))
    if bool(spec.get("reference_audio")) != bool(ref_text.strip()):
        raise SynthesisError(f"voice {name!r}: reference_audio and reference_text go together (a clip and its transcript)")
    if spec.get("reference_audio"):
        if encoder is None:
            raise SynthesisError(f"voice {name!r}: reference_audio needs the XCodec2 encoder (codec_encoder: true)")
        from legato.stream.audio_io import read_audio

        ref_audio = read_audio(str(path(spec["reference_audio"])), codec.sample_rate)[0][:, 0]
    seed = spec.get("seed")
    try:
        return LlasaVoice(name, llama, tokenizer, codec, params=params, seed=None if seed is None else int(seed),
                          max_requests=int(spec.get("max_requests", MAX_REQUESTS)),
                          max_tokens=int(spec.get("max_tokens", MAX_TOKENS)), ref_audio=ref_audio, ref_text=ref_text)
    except (XCodec2Error, LlasaTokenizerError) as exc:  # the default clip would not encode, or fit the prompt
        raise SynthesisError(f"voice {name!r}: reference_audio: {exc}") from None
