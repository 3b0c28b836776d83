"""An F5-TTS + Vocos voice with continuous batching across requests.

Each text chunk of each request is one flow-matching job: reference mel +
zero-padded noise, ``steps`` Euler steps of the DiT with classifier-free
guidance (conditional and unconditional rows in one doubled batch). All jobs
of all requests run on the engine's voice stage (``tts/stage.py``): every
round advances the active jobs by one ODE step in one DiT call
(``FlowSolver.step``), each row at its own time on the grid, so requests that
arrive at any moment batch with the ones running.

A request's text is cut into chunks (F5-TTS's byte budget, so reference +
chunk stay near 22 s) with a short first chunk for fast first audio; the
first chunk runs alone, the rest are submitted together when it is done (they
generate while the first plays). Chunks are joined with F5-TTS's 0.15 s
linear cross-fade; a chunk's fade tail is held back until the next arrives.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from legato.codecs.vocos import Vocos, load_vocos
from legato.stream.resample import Resampler
from legato.tts.f5.duration import max_chunk_bytes, normalise_reference, prompt_text, reference_frames, total_frames, utf8_len
from legato.tts.f5.config import F5Config
from legato.tts.f5.dit import F5DiT
from legato.tts.f5.loader import load_f5
from legato.tts.f5.sampling import guided_flow, initial_noise, time_grid
from legato.tts.f5.vocab import Vocab
from legato.tts.text.f5_tokens import text_to_ids
from legato.tts.voice import Submit, SynthesisError, SynthesisRequest, Voice, Wait

CROSS_FADE_S = 0.15  # F5-TTS's default join between chunks
FIRST_CHUNK_BYTES = 60  # a short first chunk: first audio after one small job
NFE_STEPS = 32
CFG_STRENGTH = 2.0
SWAY = -1.0
MAX_BATCH = 16  # jobs per DiT call
MAX_JOB_S = 40.0  # reference + chunk of one job: F5-TTS aims at 22 s; past this a reference's transcript is far too short for its audio
_CLAUSE_END = re.compile(r"(?<=[.!?;:,。！？；：，])\s*")


@dataclass(eq=False)
class FlowJob:
    """One chunk's ODE solve. Tensors without batch axis; frames T = reference + generated."""

    x: torch.Tensor  # (T, M) current sample
    cond: torch.Tensor  # (T, M) reference mel, zeros after it
    text: torch.Tensor  # (T, E) text embedding, conditional
    text_drop: torch.Tensor  # (T, E) text embedding with the text dropped (CFG's unconditional row)
    grid: torch.Tensor  # (steps + 1,) ODE times
    ref_frames: int
    step: int = 0
    done: bool = False
    result: torch.Tensor | None = None  # (T, M) once done: reference frames, then generated ones
    due: float = 0.0  # monotonic s when its audio must start playing: jobs run earliest-due first


def _pad(rows: list[torch.Tensor], t: int) -> torch.Tensor:
    return torch.stack([torch.nn.functional.pad(r, (0, 0, 0, t - r.shape[0])) for r in rows])


class FlowSolver:
    """Builds :class:`FlowJob` s for one DiT and advances any set of them by one batched ODE step."""

    def __init__(self, model: F5DiT, cfg_strength: float = CFG_STRENGTH):
        self.model, self.cfg_strength = model, cfg_strength

    @torch.inference_mode()
    def step(self, states: list[FlowJob]) -> None:
        t = max(s.x.shape[0] for s in states)
        dev = states[0].x.device
        lengths = torch.tensor([s.x.shape[0] for s in states], device=dev)
        mask = torch.arange(t, device=dev)[None] < lengths[:, None]
        x, cond = _pad([s.x for s in states], t), _pad([s.cond for s in states], t)
        text = torch.cat([_pad([s.text for s in states], t), _pad([s.text_drop for s in states], t)])
        t0 = torch.stack([s.grid[s.step] for s in states])
        dt = torch.stack([s.grid[s.step + 1] - s.grid[s.step] for s in states])
        cond2, mask2 = torch.cat([cond, torch.zeros_like(cond)]), torch.cat([mask, mask])
        v = guided_flow(self.model, x, cond2, text, mask2, t0, self.cfg_strength, mask_keys=True)
        for i, s in enumerate(states):
            n = s.x.shape[0]
            s.x = s.x + dt[i] * v[i, :n]
            s.step += 1
            if s.step == s.grid.shape[0] - 1:
                s.x[: s.ref_frames] = s.cond[: s.ref_frames]
                s.done, s.result = True, s.x

    def solve(self, jobs: list[FlowJob]) -> list[torch.Tensor]:
        """Run the jobs to the end together (tests, scripts)."""
        while not all(j.done for j in jobs):
            self.step([j for j in jobs if not j.done])
        return [j.result for j in jobs]

    @torch.inference_mode()
    def job(self, cond_mel: torch.Tensor, text_ids: list[int], frames: int, steps: int, noise: torch.Tensor | None = None,
            seed: int | None = None, schedule: str = "uniform") -> FlowJob:
        """cond_mel (T_ref, M) -> a job for ``frames`` total frames (at least text length and reference + 1)."""
        dev = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        t_ref, channels = cond_mel.shape
        frames = max(frames, len(text_ids) + 1, t_ref + 1)
        ids = torch.tensor([text_ids], device=dev)
        mask = torch.ones(1, frames, dtype=torch.bool, device=dev)
        cond = torch.zeros(frames, channels, device=dev, dtype=dtype)
        cond[:t_ref] = cond_mel.to(dev, dtype)
        if noise is None:
            noise = initial_noise(torch.tensor([frames], device=dev), channels, seed=seed, dtype=dtype, device=dev)[0]
        return FlowJob(
            x=noise.to(dev, dtype), cond=cond, text=self.model.embed_text(ids, mask)[0], text_drop=self.model.embed_text(ids, mask, drop_text=True)[0],
            grid=time_grid(steps, schedule, SWAY, dtype=dtype, device=dev), ref_frames=t_ref,
        )


def split_text(text: str, max_bytes: int, first_bytes: int = FIRST_CHUNK_BYTES) -> list[str]:
    """Clauses grouped into chunks of at most ``max_bytes`` UTF-8 bytes; the first chunk at most ``first_bytes``.

    A clause longer than its chunk's budget is cut at spaces (F5-TTS keeps it whole: 2,000 characters without a
    comma then made one job of minutes of audio, its attention quadratic in that)."""
    chunks: list[str] = []
    for clause in (c.strip() for c in _CLAUSE_END.split(text)):
        if not clause:
            continue
        limit = min(first_bytes, max_bytes) if len(chunks) == 1 else max_bytes
        if chunks and utf8_len(chunks[-1] + " " + clause) <= limit:
            chunks[-1] += " " + clause
        else:
            chunks += _cut(clause, max_bytes if chunks else min(first_bytes, max_bytes), max_bytes)
    return chunks


def _cut(clause: str, first: int, limit: int) -> list[str]:
    """A clause in pieces of at most ``first`` then ``limit`` UTF-8 bytes, each cut at the last space that fits
    (mid-word for a word longer than that)."""
    pieces = []
    while utf8_len(clause) > (cap := limit if pieces else first):
        n = len(clause.encode("utf-8")[:cap].decode("utf-8", "ignore"))  # characters that fit
        cut = clause.rfind(" ", 0, n + 1)
        cut = cut if cut > 0 else max(1, n)
        pieces.append(clause[:cut].strip())
        clause = clause[cut:].strip()
    return pieces + ([clause] if clause else [])


class F5Voice(Voice):
    model = "f5-tts+vocos"
    supports_reference = True

    def __init__(self, name: str, dit: F5DiT, vocab: Vocab, vocoder: Vocos, ref_audio: torch.Tensor, ref_text: str, *,
                 steps: int = NFE_STEPS, schedule: str = "uniform", cfg_strength: float = CFG_STRENGTH, max_batch: int = MAX_BATCH):
        self.name, self.dit, self.vocab, self.vocoder = name, dit, vocab, vocoder
        self.sample_rate = vocoder.cfg.sample_rate
        if schedule not in ("uniform", "epss"):
            raise SynthesisError(f"voice {name!r}: schedule must be 'uniform' or 'epss' (F5-TTS's few-step schedule), got {schedule!r}")
        self.ref_audio, self.ref_text, self.steps, self.schedule = ref_audio, ref_text, steps, schedule
        self.flow, self.max_jobs = FlowSolver(dit, cfg_strength), max_batch
        self.device = str(next(dit.parameters()).device)

    def step_jobs(self, jobs: list[FlowJob]) -> None:
        self.flow.step(jobs)

    @classmethod
    def from_spec(cls, name: str, spec: dict[str, Any], path: Callable[[str], Path]) -> "F5Voice":
        import soundfile

        device = spec.get("device", "cpu")
        # The architecture: the official model yaml (F5TTS_v1_Base.yaml), or fields of F5Config ("arch"), else v1 Base.
        arch = F5Config.from_yaml(path(spec["model_config"])) if spec.get("model_config") else F5Config(**(spec.get("arch") or {}))
        dit, vocab = load_f5(path(spec["checkpoint"]), path(spec["vocab"]), arch, device=device)
        voc = spec.get("vocoder") or {}
        if "config" not in voc or "weights" not in voc:
            raise SynthesisError(f"voice {name!r}: 'vocoder' needs 'config' and 'weights' (Vocos config.yaml and pytorch_model.bin)")
        vocoder = load_vocos(path(voc["config"]), path(voc["weights"]), device)
        if not spec.get("reference_audio") or not spec.get("reference_text"):
            raise SynthesisError(f"voice {name!r}: F5-TTS voices need reference_audio and reference_text (the default voice prompt)")
        audio, rate = soundfile.read(path(spec["reference_audio"]), dtype="float32", always_2d=True)
        ref = Resampler(rate, vocoder.cfg.sample_rate)(torch.from_numpy(audio).mean(dim=1, keepdim=True))[:, 0]
        return cls(name, dit, vocab, vocoder, ref, str(spec["reference_text"]), steps=int(spec.get("steps", NFE_STEPS)),
                   schedule=str(spec.get("schedule", "uniform")))

    def _reference(self, request: SynthesisRequest) -> tuple[torch.Tensor, str]:
        if request.reference_audio is None:
            return self.ref_audio, self.ref_text
        audio = Resampler(request.reference_rate, self.sample_rate)(request.reference_audio[:, None])[:, 0]
        return audio, request.reference_text

    @torch.inference_mode()
    def stream(self, request: SynthesisRequest, cancelled: threading.Event) -> Iterator[torch.Tensor]:
        ref, ref_text = self._reference(request)
        ref, gain = normalise_reference(ref)
        dev = next(self.vocoder.parameters()).device
        cond = self.vocoder.features(ref[None].to(dev))[0].T  # (T_ref, M)
        budget = max(max_chunk_bytes(ref.shape[0], ref_text, request.speed, self.sample_rate), FIRST_CHUNK_BYTES)
        chunks = split_text(request.text, budget)
        if not chunks:
            raise SynthesisError("nothing to say after splitting the text")
        hop = self.vocoder.cfg.mel_hop
        ref_frames = reference_frames(ref.shape[0], hop)

        frames = [total_frames(ref.shape[0], ref_text, chunk, request.speed, hop) for chunk in chunks]
        if max(frames) * hop / self.sample_rate > MAX_JOB_S:  # bounded work per request, checked before any
            raise SynthesisError(f"a chunk of this request would be {max(frames) * hop / self.sample_rate:.0f} s of audio with its "
                                 f"reference (the limit is {MAX_JOB_S:g} s): F5-TTS times speech by the reference's "
                                 f"characters per second, and this reference's transcript is much shorter than its audio")

        def job(k: int) -> FlowJob:
            ids = text_to_ids(prompt_text(ref_text) + chunks[k], self.vocab.index)
            return self.flow.job(cond, ids, frames[k], self.steps, schedule=self.schedule)

        fade = int(CROSS_FADE_S * self.sample_rate)
        jobs = [job(0)]
        jobs[0].due = time.monotonic()  # the first chunk runs alone: first audio as early as possible
        yield Submit(jobs)
        first = yield Wait(jobs[0])
        # The rest generate while it plays; each is due when the audio before it has played out.
        due = time.monotonic()
        for k in range(1, len(chunks)):
            due += (jobs[-1].x.shape[0] - jobs[-1].ref_frames) * hop / self.sample_rate
            jobs.append(job(k))
            jobs[-1].due = due
        yield Submit(jobs[1:])
        held = torch.zeros(0)
        for i, j in enumerate(jobs):
            mel = first if i == 0 else (yield Wait(j))
            if cancelled.is_set():
                return
            wav = self.vocoder.decode(mel[ref_frames:].T[None])[0].float().cpu() * gain
            n = min(fade, held.shape[0], wav.shape[0])
            if n:
                ramp = torch.linspace(0, 1, n)
                wav = torch.cat([held[: held.shape[0] - n], held[held.shape[0] - n :] * (1 - ramp) + wav[:n] * ramp, wav[n:]])
            else:
                wav = torch.cat([held, wav])
            cut = wav.shape[0] if i == len(jobs) - 1 else max(0, wav.shape[0] - fade)
            if cut:
                yield wav[:cut]
            held = wav[cut:]
