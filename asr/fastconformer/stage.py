"""FastConformer as an engine stage: NeMo mel FeatureChunks in, partial and final TextEvents out.

Pipeline: ``ResampleStage | RechunkStage | FrontendStage(NemoMel) | FastConformerStage``.
Each stream holds a :class:`MelChunker`, a slot in the encoder's state pool and
one in its decoder's (CTC or RNNT greedy) pool. A call steps, in rounds, the
next ready chunk of every stream; rows that share lookahead, decoder and
phase (first chunk or not) go through the encoder and decoder as one batch,
so streams join and leave at any chunk.

Stream options: ``lookahead_ms`` (one of the model's right contexts),
``decoder`` (``rnnt`` or ``ctc`` for hybrids), ``interim_results``, and
``endpointing`` ``{"enabled", "min_silence_ms"}``: an utterance is finalised
when that long has passed (in encoder frames) since its last token.

The mel front-end's last frame of a stream is never valid (NeMo counts
``samples // hop`` frames), so each stream holds its newest frame back until
the next arrives and drops it at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from legato.asr.endpointing import Endpointing
from legato.asr.fastconformer.chunking import MelChunker, MelStep
from legato.asr.fastconformer.recognizer import FastConformerRecognizer
from legato.asr.fastconformer.utterance_text import UtteranceText
from legato.stream.grouped_steps import run_grouped
from legato.stream.frames import EndOfStream, FeatureChunk, Frame
from legato.stream.graph import BatchItem, Stage, StreamInfo
from legato.stream.pool import StatePool

DEFAULT_MIN_SILENCE_MS = 500


@dataclass
class _FastConformerContext:
    lookahead: int
    decoder: str
    chunker: MelChunker
    enc_slot: int
    dec_slot: int
    interim: bool
    endpoint_frames: int | None  # encoder frames of silence after the last token that end an utterance
    held: torch.Tensor | None = None  # newest mel frame (1, F), held back
    frames_done: int = 0  # encoder frames decoded so far
    text: UtteranceText = field(init=False)  # the current utterance (tokens, words, last partial)

    def __post_init__(self) -> None:
        self.text = UtteranceText(self.interim)


class FastConformerStage(Stage):
    def __init__(self, recognizer: FastConformerRecognizer, *, capacity: int = 256, max_batch: int = 64, name: str = "fastconformer"):
        self.recognizer, self.name, self.max_batch = recognizer, name, max_batch
        model = recognizer.model
        self.device = str(model.param_device())
        self.dtype = next(model.parameters()).dtype  # the mel front-end runs in fp32; a bf16 model takes bf16 mel
        self.encoder = model.encoder
        self.enc_pool = StatePool(model.encoder, capacity, self.device)
        self.decoders = {kind: model.greedy_decoder(kind) for kind in model.cfg.heads.decoders}
        self.dec_pools = {kind: StatePool(dec, capacity, self.device) for kind, dec in self.decoders.items()}
        self.num_features = model.cfg.encoder.feat_in

    def open(self, stream: StreamInfo) -> _FastConformerContext:
        rec = self.recognizer
        opts = stream.options
        lookahead = rec.lookahead_index(opts.get("lookahead_ms"))
        decoder = rec.check_decoder(opts.get("decoder"))
        endpoint = Endpointing.from_options(opts, DEFAULT_MIN_SILENCE_MS).frames(rec.frame_s)
        enc_slot = self.enc_pool.acquire()
        try:
            dec_slot = self.dec_pools[decoder].acquire()
        except Exception:
            self.enc_pool.release(enc_slot)
            raise
        chunker = MelChunker(self.encoder.expected_mel(lookahead, True), self.encoder.expected_mel(lookahead, False))
        return _FastConformerContext(lookahead, decoder, chunker, enc_slot, dec_slot, bool(opts.get("interim_results", True)), endpoint)

    def close(self, ctx: _FastConformerContext) -> None:
        self.enc_pool.release(ctx.enc_slot)
        self.dec_pools[ctx.decoder].release(ctx.dec_slot)

    def _feed(self, ctx: _FastConformerContext, mel: torch.Tensor) -> list[MelStep]:
        if mel.shape[0] == 0:
            return []
        if ctx.held is not None:
            mel = torch.cat([ctx.held, mel])
        ctx.held = mel[-1:]
        return ctx.chunker.push(mel[:-1])

    @torch.inference_mode()
    def process(self, batch: Sequence[BatchItem]) -> list[list[Frame] | Exception]:
        out: list[list[Frame] | Exception] = [[] for _ in batch]
        pending: dict[int, list[MelStep]] = {}
        for i, (ctx, frame) in enumerate(batch):
            try:
                if isinstance(frame, FeatureChunk):
                    pending[i] = self._feed(ctx, frame.features)
                elif isinstance(frame, EndOfStream):
                    last = ctx.chunker.finish(self.num_features)  # the held frame is the invalid one: dropped
                    pending[i] = [last] if last is not None else []
                else:
                    out[i] = [frame]
            except Exception as exc:  # this stream fails alone
                out[i] = exc
        pending = {i: steps for i, steps in pending.items() if not isinstance(out[i], Exception)}
        run_grouped(pending, lambda i, s: (batch[i][0].lookahead, batch[i][0].decoder, s.first),
                    lambda rows, steps: self._run(batch, rows, steps), out.__setitem__)
        for i, (ctx, frame) in enumerate(batch):
            if isinstance(out[i], Exception) or not isinstance(frame, (FeatureChunk, EndOfStream)):
                continue
            out[i] = self._events(ctx, isinstance(frame, EndOfStream)) + ([frame] if isinstance(frame, EndOfStream) else [])
        return out

    def _run(self, batch, rows: list[int], steps: list[MelStep]) -> None:
        """One encoder + decoder step for rows in the same phase (lookahead, decoder, first chunk or not)."""
        ctxs: list[_FastConformerContext] = [batch[i][0] for i in rows]
        first, kind, lookahead = steps[0].first, ctxs[0].decoder, ctxs[0].lookahead
        dev = self.enc_pool.device
        mel = torch.stack([s.mel for s in steps]).to(dev, self.dtype)
        valid = torch.tensor([s.valid for s in steps], device=dev)
        final = torch.tensor([s.final for s in steps], device=dev) if any(s.final for s in steps) else None
        enc_slots, dec_slots = [c.enc_slot for c in ctxs], [c.dec_slot for c in ctxs]
        enc_state = self.enc_pool.gather(enc_slots)
        dec_state = self.dec_pools[kind].gather(dec_slots)
        y, y_valid = self.encoder.stream_step(mel, enc_state, lookahead=lookahead, first=first, valid=valid, final=final)
        tokens, frames = self.decoders[kind].decode(y, y_valid, dec_state)
        self.enc_pool.scatter(enc_slots, enc_state)  # commit only after both steps succeeded
        self.dec_pools[kind].scatter(dec_slots, dec_state)
        for ctx, toks, frs, n in zip(ctxs, tokens, frames, y_valid.tolist()):
            ctx.text.add(toks, [ctx.frames_done + f for f in frs])
            ctx.frames_done += n

    def _events(self, ctx: _FastConformerContext, end: bool) -> list[Frame]:
        if not ctx.text.tokens:
            return []
        silent = ctx.frames_done - 1 - ctx.text.frames[-1]
        final = end or (ctx.endpoint_frames is not None and silent >= ctx.endpoint_frames)
        return ctx.text.events(self.recognizer.tokenizer, self.recognizer.frame_s, final)
