"""The end of many bulk streams at once: their last partial chunks, NeMo's right padding and final steps, batched.

A stream's end (``MelChunker.finish``'s steps) depends on how much audio it has left: its partial chunk plus
NeMo's right padding completes some mel frames (up to NeMo's valid count ``samples // hop``), which take steady
steps while a full one remains, then one final zero-padded step with its valid frames (even none: the
subsampling's end may still emit a frame). Done one stream at a time, every end is a few steps of batch one
(launch-bound: ~10 ms each for FastConformer-L on a GPU), so a server where hundreds of streams end each second
would spend its time there. Here the ending streams step together: step k of every stream that still has one,
rows in their own phase (first step or not), per-row valid frames and final flags, as the encoder takes them.
"""

from __future__ import annotations

import numpy as np
import torch



@torch.inference_mode()
def flush(bulk, slots: list[int], partials: list[np.ndarray]) -> dict[int, tuple[list[int], list[int]]]:
    """Step the ends of ``slots`` (of ``bulk``, a ``BulkTranscriber``, under its step lock) whose unstepped audio
    is ``partials`` (each shorter than a chunk); returns each slot's last tokens and their encoder frames."""
    dev = bulk.device
    out: dict[int, tuple[list[int], list[int]]] = {s: ([], []) for s in slots}
    mels, remaining, started = _last_mel(bulk, slots, partials)
    for phase in (False, True):  # rows that never stepped take a first step (another width) apart
        pick = [i for i in range(len(slots)) if started[i] == phase and remaining[i] is not None]
        if not pick:
            continue
        pos = np.zeros(len(pick), np.int64)
        active = np.ones(len(pick), bool)
        first = not phase
        while active.any():
            idx = np.flatnonzero(active)
            rows_np = np.array([slots[pick[j]] for j in idx], np.int64)
            rows = torch.as_tensor(rows_np, device=dev)
            width = bulk.first_mel if first else bulk.step_mel
            n = np.minimum(width, np.array([remaining[pick[j]] for j in idx]) - pos[idx])
            final = n < width
            chunk = torch.zeros(len(idx), width, bulk._mel_carry.shape[2], device=dev)
            for r, j in enumerate(idx):
                if n[r]:
                    chunk[r, :n[r]] = mels[pick[j]][0, pos[j]:pos[j] + n[r]]
            y, valid = bulk.encoder.stream_step(chunk.to(bulk.dtype), bulk.pool.state, lookahead=bulk.lookahead, first=first,
                                                valid=torch.as_tensor(n, device=dev),
                                                final=torch.as_tensor(final, device=dev) if final.any() else None, rows=rows)
            tokens, frames = bulk.decode(y, valid, rows_np)
            done = bulk._frames[rows_np]
            for r, s in enumerate(rows_np.tolist()):
                out[s][0].extend(tokens[r])
                out[s][1].extend(int(done[r]) + f for f in frames[r])
            bulk._frames[rows_np] += valid.cpu().numpy()
            pos[idx] += n
            active[idx[final]] = False
            first = False
    return out


def _last_mel(bulk, slots: list[int], partials: list[np.ndarray]):
    """Per stream: its remaining mel frames (1, m, F) or None, how many count (NeMo's valid frames; None for a
    stream with no audio at all), and whether it has stepped before. The log-mel of every stream's last frames is one batched call."""
    dev = bulk.device
    started = [bool(bulk._stepped[s]) for s in slots]
    fulls, counts = [], []
    for s, partial, st in zip(slots, partials, started):
        rows = torch.tensor([s], device=dev)
        audio = torch.from_numpy(np.ascontiguousarray(partial, np.float32)).to(dev)[None]
        if audio.shape[1]:
            audio = bulk.mel._preemphasis(audio, bulk._last_raw[rows])
        context = bulk._tail[rows] if st else torch.zeros(1, bulk.pad, device=dev)
        full = torch.cat([context, audio, torch.zeros(1, bulk.pad, device=dev)], dim=1)
        frames = full.unfold(1, bulk.window, bulk.hop)[0] if full.shape[1] >= bulk.window else full.new_zeros(0, bulk.window)
        fulls.append(frames)
        counts.append(frames.shape[0])
    logmel = bulk.mel._log_mel(torch.cat(fulls)[None])[0] if sum(counts) else None  # (all frames, F), one call
    mels, remaining, at = [], [], 0
    for s, st, n, partial in zip(slots, started, counts, partials):
        mel = logmel[at:at + n][None] if n else None
        at += n
        if st:
            carry = bulk._mel_carry[s][None]
            mel = carry if mel is None else torch.cat([carry, mel], dim=1)
        total = int(bulk._stepped[s]) * bulk.chunk + len(partial)
        used = bulk.first_mel + (int(bulk._stepped[s]) - 1) * bulk.step_mel if st else 0
        left = total // bulk.hop - used
        mels.append(mel[:, :left] if mel is not None else None)
        remaining.append(left if (st or total) else None)  # None: no audio at all, nothing to step
    return mels, remaining, started
