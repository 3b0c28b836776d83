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
    started = bulk._stepped[np.asarray(slots, np.int64)] > 0
    for phase in (False, True):  # rows that never stepped take a first step (another width) apart
        pick = np.flatnonzero(started == phase)
        if not len(pick):
            continue
        group = [slots[i] for i in pick]
        if not phase:  # never stepped: their state is reset by a first step, this one
            bulk.reset_rows(torch.as_tensor(group, dtype=torch.long, device=dev))
        mel, left = _last_mel(bulk, group, [partials[i] for i in pick], phase)
        live = left >= 0  # -1: no audio at all, nothing to step
        if not live.any():
            continue
        rows_all, mel, left = np.asarray(group, np.int64)[live], mel[torch.from_numpy(live).to(dev)], left[live]
        active = np.ones(len(rows_all), bool)
        first, pos = not phase, 0
        while active.any():
            idx = np.flatnonzero(active)
            rows_np = rows_all[idx]
            rows = torch.as_tensor(rows_np, device=dev)
            width = bulk.first_mel if first else bulk.step_mel
            n = np.minimum(width, left[idx] - pos)  # every row still active has taken whole steps: one position
            final = n < width
            n_dev = torch.as_tensor(n, device=dev)
            chunk = mel[torch.as_tensor(idx, device=dev), pos:pos + width]
            chunk = chunk * (torch.arange(width, device=dev)[None, :, None] < n_dev[:, None, None])  # padding: zeros
            y, valid = bulk.encoder.stream_step(chunk.to(bulk.dtype), bulk.pool.state, lookahead=bulk.lookahead, first=first,
                                                valid=n_dev, final=torch.as_tensor(final, device=dev) if final.any() else None,
                                                rows=rows)
            tokens, frames = bulk.decode(y, valid, rows_np)
            done = bulk._frames[rows_np]
            for r, s in enumerate(rows_np.tolist()):
                out[s][0].extend(tokens[r])
                out[s][1].extend(int(done[r]) + f for f in frames[r])
            bulk._frames[rows_np] += valid.cpu().numpy()
            pos += width
            active[idx[final]] = False
            first = False
    return out


def _last_mel(bulk, slots: list[int], partials: list[np.ndarray], started: bool) -> tuple[torch.Tensor, np.ndarray]:
    """The remaining mel frames of streams in one phase, batched: (m, frames, n_mels) padded (past a row's count
    the values are not zeros: the caller masks), and how many count per row (NeMo's valid frames; -1 for a
    stream with no audio at all). The streams' partial chunks, pre-emphasised and framed with the right padding,
    in one log-mel call; a stream that has stepped puts its carried context and mel frames in front."""
    dev, m = bulk.device, len(slots)
    rows_np = np.asarray(slots, np.int64)
    rows = torch.as_tensor(rows_np, device=dev)
    lengths = np.array([len(p) for p in partials], np.int64)
    audio = np.zeros((m, max(1, int(lengths.max()))), np.float32)
    for i, p in enumerate(partials):
        audio[i, :len(p)] = p
    x = torch.from_numpy(audio).to(dev)
    inside = torch.arange(x.shape[1], device=dev)[None, :] < torch.as_tensor(lengths, device=dev)[:, None]
    y = bulk.mel.preemphasis(x, bulk._last_raw[rows]) * inside  # samples past the partial: the right padding's zeros
    context = bulk._tail[rows] if started else torch.zeros(m, bulk.pad, device=dev)
    full = torch.cat([context, y, torch.zeros(m, bulk.pad, device=dev)], dim=1)
    if full.shape[1] >= bulk.window:
        logmel = bulk.mel.log_mel_frames(full.unfold(1, bulk.window, bulk.hop))
    else:
        logmel = full.new_zeros(m, 0, bulk._mel_carry.shape[2])
    mel = torch.cat([bulk._mel_carry[rows], logmel], dim=1) if started else logmel
    stepped = bulk._stepped[rows_np]
    total = stepped * bulk.chunk + lengths
    used = bulk.first_mel + (stepped - 1) * bulk.step_mel if started else np.zeros(m, np.int64)
    left = total // bulk.hop - used
    if not started:
        left[total == 0] = -1
    need = int(max(0, left.max())) + bulk.first_mel + bulk.step_mel  # room for the last step's whole width
    if mel.shape[1] < need:
        mel = torch.cat([mel, mel.new_zeros(m, need - mel.shape[1], mel.shape[2])], dim=1)
    return mel, left
