"""Bulk streaming transcription: thousands of FastConformer streams stepped as arrays, not per-chunk objects.

The general engine (``stream/engine.py``) moves every chunk of every stream through Python objects, queues and
stages: about 20 us of CPU per chunk per stage, so one engine carries a few thousand 160 ms streams however fast
the GPU step is. This path is for the scale the GPU reaches (tens of thousands of streams): audio is pushed
into a per-slot host array; a worker takes every slot with a complete model chunk queued (oldest first, up to
``max_batch``) and runs, on the whole batch at once, pre-emphasis, framing and NeMo log-mel, the encoder step over
the state pool, and greedy decoding (CTC: argmax and collapse on the device, one host sync; RNNT: label-looping
over the decoder's pooled state); per-stream Python runs only for streams that emitted a token.

Mel geometry (160 ms chunks of 2560 samples at 16 kHz, hop 160, window 400, centred frames): a stream's first
chunk, with NeMo's 200 samples of zero padding in front, completes 15 frames; every later chunk, with the
360 samples from the next frame's start carried from the previous one, exactly 16. The encoder's first step takes ``1 + 8 R`` frames and
every later step ``8 (R + 1)`` (16 at R = 1), so after the first chunk a stream carries the same number of mel
frames between steps (6 at R = 1, the newest of which the general stage would hold back): each chunk is one
encoder step, the same frames as the engine's ``FastConformerStage`` feeds it, so the tokens are the same.

The encoder's state lives in a pool of ``capacity`` rows that the kernels read and update in place by slot
(``stream_step(rows=...)``): a step that raises part way leaves its streams' state part-updated (their chunk is
lost either way), so such streams should be finished and reopened.

On CUDA a step replays CUDA graphs of its device work (``bulk_graphs.py``), one per phase and batch bucket up to
``graph_rows`` rows (4,096 by default; first steps up to 4,096); a larger step replays one several times on equal
pieces of its rows. A stream's state is reset by its first step, so opening is host bookkeeping. A step's new tokens go to ``on_step`` as flat arrays
(``bulk_tokens.py``), not as per-stream Python objects.

Steady chunks are stepped in batches. A stream's end (its queued chunks, its partial last chunk, NeMo's right
padding and the final short step, as the engine stage's last steps) runs either at once for that stream alone
(``finish``) or, after ``end``, inside ``step`` batched with every other stream ending then (``bulk_flush``),
its result handed to ``on_finish``.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from legato.asr.fastconformer.bulk_flush import flush
from legato.asr.fastconformer.bulk_graphs import MAX_GRAPH_ROWS, BulkGraphs
from legato.asr.fastconformer.bulk_launch import AudioUploads, LaunchedGroup, LaunchedStep, to_device, to_host
from legato.asr.fastconformer.bulk_tokens import TokenUpdates
from legato.asr.fastconformer.decoders import CtcState, ctc_greedy_mask
from legato.asr.fastconformer.recognizer import FastConformerRecognizer
from legato.stream.chunk_queues import ChunkQueues
from legato.stream.errors import CapacityError
from legato.stream.metrics import Histogram
from legato.stream.pool import StatePool
from legato.stream.slots import SlotAllocator
from legato.stream.step_window import StepWindows

PHASES = ("take", "launch", "wait", "finish", "ends")  # a step call's parts, timed (``windows`` lines)

QUEUED_CHUNKS = 4  # complete chunks a stream may have waiting; a push beyond is refused (bounded input)
FLUSH_BATCH = 256  # ended streams flushed together at once ...
FLUSH_WAIT_S = 0.1  # ... or once the oldest has waited this long (their final text waits as much)
# ... and at most about this share of the stepping thread's time goes to flushes while other streams step (a flush
# costs about the same for 1 or 1,000 streams: in a loaded server, 800 ends a second flushed every 0.1 s took the
# worker's whole time, 78-190 ms a step on an H200; docs/PERFORMANCE.md): after a flush of f seconds the next waits f (1/share - 1),
# but never more than FLUSH_MAX_GAP_S: a flush's cost also grows with its rows, and in a wave of ends a gap growing
# with it would let the ends pile up (the final text of each waits for the gap)
FLUSH_SHARE = 0.25
FLUSH_MAX_GAP_S = 0.5
LATENCIES_KEPT = 1 << 22  # chunk latencies kept for ``latencies()`` (32 MB): a server runs for days


@dataclass
class BulkStream:
    tokens: list[int] = field(default_factory=list)
    token_frames: list[int] = field(default_factory=list)  # encoder frame of each token
    frames_done: int = 0  # encoder frames decoded (set at finish)


class BulkTranscriber:
    """``open() -> slot``, ``push(slot, samples)`` (float32 16 kHz mono, any length), ``step()`` on a worker,
    ``finish(slot) -> BulkStream`` (now) or ``end(slot)`` (by a later step, batched; ``on_finish``), ``cancel``.
    ``latencies()`` returns each stepped chunk's seconds from its arrival (the completing push, or the stamp
    given to ``push_many``) to its tokens being on the host (the latest ``LATENCIES_KEPT``); ``windows.read()``
    what the steps did since the last read (a server's stats log)."""

    def __init__(self, recognizer: FastConformerRecognizer, capacity: int, *, lookahead_ms: int | None = None, max_batch: int = 4096,
                 decoder: str | None = "ctc", on_step: Callable[[np.ndarray, TokenUpdates], None] | None = None,
                 on_finish: Callable[[list[tuple[int, "BulkStream"]]], None] | None = None, keep_tokens: bool = True,
                 cuda_graphs: bool = True, graph_rows: int = MAX_GRAPH_ROWS, pipeline: bool = False):
        """``decoder``: "ctc" (default), "rnnt", or None for the model's own (RNNT for a hybrid).
        ``on_step(stepped_slots, updates)``: called at the end of every ``step`` that stepped rows, on the stepping
        thread, before another step, ``open`` or ``finish`` can run, with the step's new tokens as arrays (a
        server's hook for text events and endpointing). ``on_finish([(slot, stream), ...])``: the streams ended
        with ``end`` whose last steps a ``step`` has just run, before their slots are free. ``keep_tokens``: each
        ``BulkStream`` gathers its tokens (Python lists, ~5 us per stream with news per step); a consumer of
        ``on_step`` passes False and the streams ``on_finish`` hands over hold only their last steps' tokens.
        ``cuda_graphs``: on CUDA, steps replay a graph per batch bucket (``bulk_graphs.py``), captured on first use
        of a bucket or all at once by ``graphs.capture_all()``, buckets up to ``graph_rows`` rows (larger steps
        replay them on pieces of their rows; without graphs a step runs eager).
        ``pipeline`` (CTC): a ``step`` launches its device work and then completes the step before it
        (``bulk_launch.py``): the host's work overlaps the device's; ``settle()`` completes the one in flight."""
        model = recognizer.model
        self.decoder = model.check_decoder(decoder)  # ValueError for a head the model lacks
        self.greedy = model.greedy_decoder(self.decoder)
        mel = recognizer.mel
        if mel.config.normalize != "NA":
            raise ValueError(f"normalize={mel.config.normalize!r} cannot stream; the bulk path needs normalize='NA'")
        self.recognizer, self.encoder = recognizer, model.encoder
        self.mel, self.capacity, self.max_batch, self.on_step, self.on_finish = mel, capacity, max_batch, on_step, on_finish
        self.keep_tokens = keep_tokens
        self.lookahead = recognizer.lookahead_index(lookahead_ms)
        c = mel.config
        self.hop, self.window, self.pad = c.hop_samples, c.window_samples, c.window_samples // 2
        self.first_mel = self.encoder.expected_mel(self.lookahead, True)
        self.step_mel = self.encoder.expected_mel(self.lookahead, False)
        self.chunk = self.step_mel * self.hop  # samples of one model chunk
        first_frames = (self.pad + self.chunk - self.window) // self.hop + 1
        self.carry = first_frames - self.first_mel  # mel frames kept between steps (constant after the first)
        tail = self.pad + self.chunk - first_frames * self.hop  # samples from the next frame's start on
        if self.carry < 1 or (tail + self.chunk - self.window) // self.hop + 1 != self.step_mel or self.step_mel * self.hop != self.chunk:
            raise ValueError(f"mel geometry (window {self.window}, hop {self.hop}) does not give one step per chunk")
        self.device = model.param_device()
        self.dtype = next(model.parameters()).dtype
        dev = self.device
        # host side: queued audio, page-locked on CUDA (pageable copies took 23 ms of a 16,384-stream step on an H200)
        self.queues = ChunkQueues(capacity, self.chunk, max_take=max_batch, pinned=self.device.type == "cuda", depth=QUEUED_CHUNKS)
        self._frames = np.zeros(capacity, np.int64)  # encoder frames decoded
        self._stepped = np.zeros(capacity, np.int64)  # chunks stepped (0: the next step is the stream's first)
        self._lock = threading.Lock()
        self._step_lock = threading.Lock()  # a slot is not reopened (reset) or released while a step holds it
        self._slots = SlotAllocator(capacity, f"bulk transcriber is full ({capacity} streams)")
        self.streams: dict[int, BulkStream] = {}
        self._ending: dict[int, float] = {}  # ended (``end``), their last steps not yet run: when they ended
        # device side: per-slot state, and one scratch row past the streams' (CUDA graphs' padding rows use it)
        rows = capacity + 1
        self.pool = StatePool(self.encoder, rows, dev)
        self._last_raw = torch.zeros(rows, device=dev)  # previous raw sample (pre-emphasis)
        self._tail = torch.zeros(rows, tail, device=dev)  # pre-emphasised samples carried to the next frame
        self._mel_carry = torch.zeros(rows, self.carry, c.n_mels, device=dev)
        self.dec_pool = StatePool(self.greedy, rows, dev)  # CTC: the previous frame's argmax; RNNT: LSTM state
        self.graphs = BulkGraphs(self, scratch=capacity, max_rows=graph_rows) if cuda_graphs and dev.type == "cuda" else None
        self.uploads = AudioUploads(min(max_batch, capacity), self.chunk, dev) if dev.type == "cuda" else None
        self._latencies: collections.deque[np.ndarray] = collections.deque()
        self._latencies_kept = 0
        self.latency_s = Histogram.latency()  # every stepped chunk since start, for /metrics
        self.windows = StepWindows()
        self.steps_done = 0  # steps that stepped rows (a producer waiting for queue room watches it)
        self.pipeline = pipeline and self.decoder == "ctc"  # RNNT decodes on the host between steps anyway
        self._inflight: LaunchedStep | None = None  # pipelined: the step launched, not yet completed
        self._launches = 0  # alternates the queues' staging buffers
        # seconds of the last step call's phases (take, launch, wait for the device, finish: tokens and on_step,
        # ends), added to ``windows``: where the stepping thread's time goes, without a profiler
        self._phases = dict.fromkeys(PHASES, 0.0)
        self._flushed_at, self._flush_s = 0.0, 0.0  # when the last flush of ended streams finished, its seconds

    # -- producers ---------------------------------------------------------------

    def open(self) -> int:
        return int(self.open_many(1)[0])

    def open_many(self, n: int) -> np.ndarray:
        """Open ``n`` streams at once: their slots. Raises ``CapacityError``, opening none, when fewer than ``n``
        slots are free. Host bookkeeping only: a stream's device state is reset by its first step
        (``reset_rows``, inside that step's graph), not here (eager, ~70 launches per call: at a thousand opens a
        second in a server the worker spent three quarters of its time resetting, measured on an H200)."""
        with self._step_lock:
            with self._lock:
                if self._slots.in_use + n > self.capacity:
                    raise CapacityError(f"bulk transcriber is full ({self.capacity} streams)")
                slots = np.array([self._slots.acquire() for _ in range(n)], np.int64)
                self._frames[slots] = self._stepped[slots] = 0
            self.queues.reset(slots)
            with self._lock:
                for s in slots.tolist():
                    self.streams[s] = BulkStream()
        return slots

    def push(self, slot: int, samples: np.ndarray) -> None:
        """Queue float32 audio (any length); ``CapacityError`` (nothing queued) beyond ``QUEUED_CHUNKS`` complete
        chunks waiting, ``NonFiniteAudioError`` for NaN or infinite samples, ``KeyError`` for a slot not open."""
        if slot not in self.streams or slot in self._ending:
            raise KeyError(f"slot {slot} is not open")
        self.queues.push(slot, samples)

    def push_many(self, slots: np.ndarray, chunks: np.ndarray, arrived: np.ndarray | None = None) -> np.ndarray:
        """One whole model chunk for each of ``slots`` (open, distinct, none mid-chunk) from ``chunks`` (n, chunk)
        float32 in one array operation, as a front end gathering many streams' audio would hand it over;
        ``arrived``: ``time.monotonic()`` when each chunk's last sample came in (default now), the start of its
        latency. Returns the mask of slots refused for a full queue."""
        return self.queues.push_many(slots, chunks, arrived)

    @torch.inference_mode()
    def finish(self, slot: int) -> BulkStream:
        """End the stream: step its queued chunks, then its last partial chunk and the end of its audio (NeMo's
        right padding, the subsampling's last window) as the engine stage does, and return what it decoded: the
        tokens offline decoding of the same audio gives."""
        with self._step_lock:
            with self._lock:
                if slot not in self.streams:
                    raise KeyError(f"slot {slot} is not open")
            self._settle()
            while (audio := self.queues.take_one(slot)) is not None:
                group = self._launch_group(np.array([slot]), audio, bool(self._stepped[slot] == 0))
                if self.device.type == "cuda":
                    torch.cuda.current_stream(self.device).synchronize()  # its outputs' copies to the host
                self._collect(self._tokens(group))
            return self._finish_many([slot])[0][1]

    def end(self, slot: int) -> None:
        """No more audio for the stream: a later ``step`` steps what it has queued, then its end (batched with
        every other stream ending then), and hands ``(slot, BulkStream)`` to ``on_finish``; the slot is then free."""
        with self._lock:
            if slot not in self.streams or slot in self._ending:
                raise KeyError(f"slot {slot} is not open")
            self._ending[slot] = time.monotonic()

    def _finish_many(self, slots: list[int]) -> list[tuple[int, BulkStream]]:
        """The ends of streams with nothing queued but their partial chunk (step lock held); frees their slots."""
        results = flush(self, slots, [self.queues.drain_partial(s) for s in slots])
        done = []
        with self._lock:
            for s in slots:
                stream = self.streams.pop(s)
                tokens, frames = results[s]
                stream.tokens += tokens
                stream.token_frames += frames
                stream.frames_done = int(self._frames[s])
                self._ending.pop(s, None)
                done.append((s, stream))
        if self.on_finish is not None:
            self.on_finish(done)  # before the slots are free: nothing can reopen them meanwhile
        with self._lock:
            for s in slots:
                self._slots.release(s)
        return done

    # -- the worker ----------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> int:
        """Step every slot with a complete chunk queued (up to ``max_batch``); returns how many were stepped (with
        ``pipeline``: launched; the step before is completed meanwhile, and an idle call completes the last)."""
        with self._step_lock:
            started = time.monotonic()
            rows, audio, ready = self.queues.take(self.max_batch, buffer=self._launches % 2)
            if not len(rows):
                return self._settle() + self._finish_ended(force=True)
            took = time.monotonic()
            self._phases = dict.fromkeys(PHASES, 0.0)
            launched = self._launch(rows, audio, ready, started)
            self._launches += 1
            self._phases["take"] = took - started
            self._phases["launch"] = time.monotonic() - took
            if self.pipeline:  # complete the step before while this one runs on the device
                previous, self._inflight = self._inflight, launched  # in flight while ``on_step`` sees the previous
                if previous is not None:
                    self._complete(previous)
            else:
                self._complete(launched)
            ended = time.monotonic()
            stepped = len(rows) + self._finish_ended()
            self._phases["ends"] = time.monotonic() - ended
            self.windows.add_phases(self._phases)
            return stepped

    def settle(self) -> int:
        """Complete the step in flight (``pipeline``), if any: its rows."""
        with self._step_lock:
            return self._settle()

    def _settle(self) -> int:
        launched, self._inflight = self._inflight, None
        return 0 if launched is None else self._complete(launched)

    def _launch(self, rows: np.ndarray, audio: torch.Tensor, ready: np.ndarray, started: float) -> LaunchedStep:
        """The step's device work for every phase group, outputs on their way to the host."""
        buffer = self._launches % 2
        if self.uploads is not None:
            audio = self.uploads.upload(audio, buffer)
        first = self._stepped[rows] == 0
        groups = []
        for phase in (True, False):
            pick = first == phase
            if not pick.any():
                continue
            part_rows, part = rows, audio
            if not pick.all():
                part_rows, part = rows[pick], audio.index_select(0, to_device(np.flatnonzero(pick), audio.device))
            for lo, hi in self._pieces(len(part_rows), phase):
                groups.append(self._launch_group(part_rows[lo:hi], part[lo:hi], phase))
        if self.uploads is not None:
            self.uploads.release(buffer)
        done = None
        if self.device.type == "cuda":
            done = torch.cuda.Event()
            done.record()
        return LaunchedStep(rows, ready, started, groups, done)

    def _complete(self, launched: LaunchedStep) -> int:
        """Wait for a launched step's outputs; its tokens to ``on_step`` (and the streams); stats."""
        waited = time.monotonic()
        if launched.done is not None:
            launched.done.synchronize()
        finished = time.monotonic()
        self._phases["wait"] = finished - waited
        updates = TokenUpdates.concat([self._tokens(g) for g in launched.groups])
        if self.keep_tokens:
            self._collect(updates)
        if self.on_step is not None:
            self.on_step(launched.rows, updates)
        done = time.monotonic()
        self.steps_done += 1
        latencies = done - launched.ready
        self.windows.record(len(launched.rows), done - launched.started, latencies)
        self._keep(latencies)
        self._phases["finish"] = time.monotonic() - finished
        return len(launched.rows)

    def _keep(self, latencies: np.ndarray) -> None:
        self.latency_s.record_many(latencies)
        self._latencies.append(latencies)
        self._latencies_kept += len(latencies)
        while self._latencies_kept > LATENCIES_KEPT and len(self._latencies) > 1:
            self._latencies_kept -= len(self._latencies.popleft())

    def _finish_ended(self, force: bool = False) -> int:
        """Step the ends of the ended streams with no complete chunk left queued (step lock held): when ``force``
        (the worker is idle), when ``FLUSH_BATCH`` are ready or one has waited ``FLUSH_WAIT_S``, and the last flush
        was long enough ago (``FLUSH_SHARE``). Ends take
        eager steps (their last chunks are short and masked: no graph), a fixed ~3 launch-bound steps whatever
        their number: flushing a few streams after every step would slow every step of the others."""
        if not self._ending:
            return 0
        now = time.monotonic()
        if not force and now - self._flushed_at < min(self._flush_s * (1 / FLUSH_SHARE - 1), FLUSH_MAX_GAP_S):
            return 0  # the last flush was recent for what it cost
        with self._lock:
            ending = np.fromiter(self._ending, np.int64, len(self._ending))
            since = np.fromiter(self._ending.values(), np.float64, len(ending))
        ready = self.queues.counts(ending) == 0
        if self._inflight is not None:  # their tokens not yet read
            ready &= ~np.isin(ending, self._inflight.rows)
        if not ready.any() or (not force and ready.sum() < FLUSH_BATCH and now - since[ready].min() < FLUSH_WAIT_S):
            return 0
        self._finish_many(np.sort(ending[ready]).tolist())
        self._flushed_at = time.monotonic()
        self._flush_s = self._flushed_at - now
        return int(ready.sum())

    def _log_mel(self, rows: torch.Tensor, audio: torch.Tensor, first: bool) -> torch.Tensor:
        """(B, chunk) raw audio -> (B, the step's mel frames, n_mels); updates pre-emphasis, tail and mel carry."""
        y = self.mel.preemphasis(audio, self._last_raw[rows])
        self._last_raw[rows] = audio[:, -1]
        context = torch.zeros(len(rows), self.pad, device=audio.device) if first else self._tail[rows]
        full = torch.cat([context, y], dim=1)
        self._tail[rows] = full[:, full.shape[1] - self._tail.shape[1]:]
        mel = self.mel.log_mel_frames(full.unfold(1, self.window, self.hop))
        if not first:
            mel = torch.cat([self._mel_carry[rows], mel], dim=1)
        take = self.first_mel if first else self.step_mel
        self._mel_carry[rows] = mel[:, take:]
        return mel[:, :take]

    def reset_rows(self, rows: torch.Tensor) -> None:
        """Fresh state for streams about to take their first step (encoder pool, pre-emphasis, decoder)."""
        self.pool.reset_rows(rows)
        self._last_raw.index_fill_(0, rows, 0.0)  # a fill, not an indexed assignment of a host scalar: graph-safe
        self.dec_pool.reset_rows(rows)

    def _collect(self, updates: TokenUpdates) -> None:
        """The new tokens onto their streams' lists."""
        for slot, tokens, frames, _, _ in updates.rows():
            stream = self.streams.get(slot)
            if stream is not None:
                stream.tokens += tokens
                stream.token_frames += frames

    # inference mode whoever calls (a server's warm-up captures graphs outside ``step``): without it the first step's
    # PyTorch ops recorded autograd history into the pool's rows, keeping each capture's activations alive (~1.2 MB a
    # row per first-step graph: 113 GB by the 10,240-row one at a 12,288-stream server's warm-up on an H200)
    @torch.inference_mode()
    def device_step(self, rows: torch.Tensor, audio: torch.Tensor, first: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's device work for pool ``rows`` (B,) and their chunks (B, chunk) on the device, no host sync
        (what ``BulkGraphs`` captures): CTC -> (best, keep) (B, T) with the pooled previous argmax updated;
        RNNT -> the encoder's (y, valid) for the host-side decoder. A first step resets the rows' state first."""
        if first:
            self.reset_rows(rows)
        mel = self._log_mel(rows, audio, first)
        # the kernels read and write the pool's rows in place: no gathered copy (a 16,384-stream step's gather and
        # scatter of 2.6 MB rows took 25 ms of its 120 on an H200, and their copy of the state needs the memory
        # of 16,384 more streams)
        y, valid = self.encoder.stream_step(mel.to(self.dtype), self.pool.state, lookahead=self.lookahead, first=first, rows=rows)
        if self.decoder != "ctc":
            return y, valid
        state = self.dec_pool.state  # argmax and collapse on the device
        ctc = CtcState(last=state.last[rows])
        best, keep = ctc_greedy_mask(self.greedy.head(y), valid, ctc, self.greedy.head.blank)
        state.last[rows] = ctc.last
        return best, keep

    def _pieces(self, n: int, first: bool) -> list[tuple[int, int]]:
        """A phase's ``n`` rows as (start, end) pieces of equal size that graphs cover (one piece without graphs):
        a step larger than the largest graph replays a graph several times instead of launching ~1,000 kernels
        from Python, and first steps stay within the first-step graphs' smaller buckets (memory)."""
        if self.graphs is None or self.graphs.covers(n, first):
            return [(0, n)]
        top = (self.graphs.first_buckets if first else self.graphs.buckets)[-1]
        count = -(-n // top)
        size = -(-n // count)
        return [(lo, min(lo + size, n)) for lo in range(0, n, size)]

    def _launch_group(self, slots: np.ndarray, audio: torch.Tensor, first: bool) -> LaunchedGroup:
        """Launch these slots' step (one phase); the host state the next launch needs advances now."""
        if self.graphs is not None and self.graphs.covers(len(slots), first):
            out = self.graphs.run(slots, audio, first)
            if self.decoder != "ctc":  # decoded on the host later: another piece may replay the same graph first
                out = tuple(t.clone() for t in out)
        else:
            out = self.device_step(to_device(slots, self.device), audio.to(self.device, non_blocking=True), first)
        frames = self._frames[slots].copy()
        self._frames[slots] += out[0].shape[1]  # CTC: (best, keep) (B, T); RNNT: y (B, T, d)
        self._stepped[slots] += 1
        return LaunchedGroup(slots, frames, out[0].shape[1], to_host(out) if self.decoder == "ctc" else out)

    def _tokens(self, group: LaunchedGroup) -> TokenUpdates:
        """A launched group's new tokens (its outputs on the host: CTC array operations; RNNT greedy decoding)."""
        if self.decoder == "ctc":
            best, keep = (t.numpy() for t in group.outputs)
            return TokenUpdates.from_mask(group.slots, keep, best, group.frames)
        y, valid = group.outputs
        tokens, token_frames = self.decode(y, valid, group.slots)
        start = group.frames.tolist()
        return TokenUpdates.from_lists(group.slots, tokens, [[s + f for f in fr] for s, fr in zip(start, token_frames)])

    def decode(self, y: torch.Tensor, valid: torch.Tensor, slots: np.ndarray) -> tuple[list[list[int]], list[list[int]]]:
        """Greedy decoding of encoder frames ``y`` for ``slots`` over their pooled decoder state: new tokens and
        their frames (within ``y``) per row. (RNNT's state is a few kB a stream, so it is gathered and scattered.)"""
        state = self.dec_pool.gather(slots.tolist())
        out = self.greedy.decode(y, valid, state)
        self.dec_pool.scatter(slots.tolist(), state)
        return out

    @property
    def in_use(self) -> int:
        """Streams open (slots taken)."""
        return self._slots.in_use

    def frames_decoded(self, slots: np.ndarray) -> np.ndarray:
        """Encoder frames decoded so far for each of ``slots`` (by completed steps: not a step in flight)."""
        frames = self._frames[slots]
        if self._inflight is not None:
            frames = frames.copy()
            for group in self._inflight.groups:
                frames -= np.isin(slots, group.slots) * group.step_frames
        return frames

    def cancel(self, slot: int) -> None:
        """Drop the stream: its queued audio and state are discarded, nothing is decoded; the slot is free again."""
        with self._step_lock:
            self._settle()  # its chunk may be in flight
            with self._lock:
                if self.streams.pop(slot, None) is None:
                    raise KeyError(f"slot {slot} is not open")
                self._ending.pop(slot, None)
                self._slots.release(slot)
            self.queues.reset(np.array([slot]))

    def latencies(self, clear: bool = False) -> np.ndarray:
        """Seconds from each stepped chunk's completing push to its tokens on the host, oldest first; ``clear``
        forgets them (a benchmark's warm-up)."""
        out = np.concatenate(list(self._latencies)) if self._latencies else np.zeros(0)
        if clear:
            self._latencies.clear()
            self._latencies_kept = 0
        return out
