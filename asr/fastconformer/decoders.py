"""CTC and RNNT heads over FastConformer frames, with batched greedy decoding that streams.

Vocabulary: ``vocab_size`` SentencePiece ids, then blank (id ``vocab_size``).

* CTC (NeMo ``ConvASRDecoder``): a 1x1 conv to ``vocab_size + 1`` log-probs;
  greedy = per-frame argmax, repeats collapsed (also across chunk edges: the
  state keeps the previous frame's argmax), blanks dropped.
* RNNT (NeMo ``RNNTDecoder`` + ``RNNTJoint``): prediction net = embedding
  (blank is the padding row: a zero vector, also the start symbol) -> LSTM;
  joint = ``Linear(act(enc_proj(f) + pred_proj(g)))``. Greedy in the
  label-looping form: every row keeps a frame index; rows whose best symbol is
  blank move to their next frame until they reach a label or run out of
  frames; then all rows with a label emit it and advance the prediction net
  together. At most ``max_symbols`` labels per frame. The state (LSTM state and
  output after the last label) carries across chunks, so a stream decoded
  chunk by chunk emits what a whole-utterance decode emits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from legato.stream.module import StreamingModule
from legato.stream.state import StreamState

JOINT_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
UNLIMITED_SYMBOLS = 1_000_000  # "max_symbols: null" in a NeMo config


class CtcHead(nn.Module):
    """NeMo ``ConvASRDecoder``: keys ``decoder_layers.0.weight`` (V+1, d, 1), ``decoder_layers.0.bias``."""

    def __init__(self, d_model: int, vocab_size: int):
        super().__init__()
        self.decoder_layers = nn.Sequential(nn.Conv1d(d_model, vocab_size + 1, 1))
        self.blank = vocab_size

    def forward(self, enc: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> (B, T, V+1) log-probs."""
        conv = self.decoder_layers[0]
        return F.linear(enc, conv.weight[:, :, 0], conv.bias).log_softmax(dim=-1)


@dataclass(frozen=True, eq=False)
class CtcState(StreamState):
    last: torch.Tensor  # (B,) int64 argmax of the previous frame (blank at the start)


def ctc_init_state(batch_size: int, blank: int, device) -> CtcState:
    return CtcState(last=torch.full((batch_size,), blank, dtype=torch.long, device=device))


def ctc_greedy_mask(log_probs: torch.Tensor, valid: torch.Tensor, state: CtcState, blank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, V+1) log-probs of a chunk, valid frames (B,) -> (argmax ids (B, T), which of them are new tokens
    (B, T) bool), on the device; updates ``state``."""
    best = log_probs.argmax(dim=-1)  # (B, T)
    prev = torch.cat([state.last[:, None], best[:, :-1]], dim=1)
    t = torch.arange(best.shape[1], device=best.device)[None, :]
    keep = (best != blank) & (best != prev) & (t < valid[:, None])
    last_index = (valid - 1).clamp(min=0)
    state.last.copy_(torch.where(valid > 0, best.gather(1, last_index[:, None])[:, 0], state.last))
    return best, keep


def ctc_greedy(log_probs: torch.Tensor, valid: torch.Tensor, state: CtcState, blank: int) -> tuple[list[list[int]], list[list[int]]]:
    """(B, T, V+1) log-probs of a chunk, valid frames (B,) -> (new token ids, their frame indices) per row; updates ``state``."""
    best, keep = ctc_greedy_mask(log_probs, valid, state, blank)
    best, keep = best.cpu(), keep.cpu()
    frames = torch.arange(best.shape[1])
    return [best[b][keep[b]].tolist() for b in range(best.shape[0])], [frames[keep[b]].tolist() for b in range(best.shape[0])]


class LstmStack(nn.Module):
    """Holds NeMo's ``dec_rnn.lstm`` (a plain torch LSTM, time-major)."""

    def __init__(self, hidden: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(hidden, hidden, layers)


class RnntDecoder(nn.Module):
    """Prediction network. Keys as NeMo: ``prediction.embed.weight`` (V+1, H), ``prediction.dec_rnn.lstm.*``."""

    def __init__(self, vocab_size: int, pred_hidden: int, pred_layers: int):
        super().__init__()
        self.blank = vocab_size
        self.prediction = nn.ModuleDict(
            {"embed": nn.Embedding(vocab_size + 1, pred_hidden, padding_idx=vocab_size), "dec_rnn": LstmStack(pred_hidden, pred_layers)}
        )
        self.hidden, self.layers = pred_hidden, pred_layers

    def predict(self, labels: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """labels (B,), h/c (B, layers, H) -> output (B, H), new h, c."""
        y = self.prediction["embed"](labels)[None]  # (1, B, H)
        out, (h2, c2) = self.prediction["dec_rnn"].lstm(y, (h.transpose(0, 1).contiguous(), c.transpose(0, 1).contiguous()))
        return out[0], h2.transpose(0, 1), c2.transpose(0, 1)


class RnntJoint(nn.Module):
    """Keys as NeMo: ``pred``, ``enc`` (projections), ``joint_net.1`` (output layer; NeMo's ``.2`` when it has dropout)."""

    def __init__(self, d_model: int, pred_hidden: int, joint_hidden: int, vocab_size: int, activation: str = "relu"):
        super().__init__()
        self.pred = nn.Linear(pred_hidden, joint_hidden)
        self.enc = nn.Linear(d_model, joint_hidden)
        self.joint_net = nn.Sequential(JOINT_ACTIVATIONS[activation](), nn.Linear(joint_hidden, vocab_size + 1))

    def after_projection(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.joint_net(f + g)


@dataclass(frozen=True, eq=False)
class RnntState(StreamState):
    h: torch.Tensor  # (B, layers, H) LSTM state after the last emitted label
    c: torch.Tensor  # (B, layers, H)
    g: torch.Tensor  # (B, H) prediction-net output for the last label (the start symbol at first)


def rnnt_init_state(decoder: RnntDecoder, batch_size: int, device) -> RnntState:
    dtype = decoder.prediction["embed"].weight.dtype
    h = torch.zeros(batch_size, decoder.layers, decoder.hidden, device=device, dtype=dtype)
    blank = torch.full((batch_size,), decoder.blank, dtype=torch.long, device=device)
    with torch.inference_mode():
        g, h2, c2 = decoder.predict(blank, h, h.clone())
    return RnntState(h=h2.clone(), c=c2.clone(), g=g.clone())


def rnnt_greedy(
    decoder: RnntDecoder, joint: RnntJoint, enc: torch.Tensor, valid: torch.Tensor, state: RnntState, max_symbols: int
) -> tuple[list[list[int]], list[list[int]]]:
    """Label-looping greedy over one chunk for all rows.

    enc (B, T, d), valid (B,) frames -> (token ids per row, frame index of each token); updates ``state``.
    """
    b, t_max, _ = enc.shape
    blank = decoder.blank
    f = joint.enc(enc)  # (B, T, J)
    gp = joint.pred(state.g)  # (B, J)
    rows = torch.arange(b, device=enc.device)
    t = torch.zeros(b, dtype=torch.long, device=enc.device)
    symbols = torch.zeros_like(t)
    emitted: list[torch.Tensor] = []  # per label step (B,): the label, or -1 for rows that emitted none
    emitted_at: list[torch.Tensor] = []  # (B,) their frames
    active = t < valid
    while bool(active.any()):
        label = joint.after_projection(f[rows, t.clamp(max=t_max - 1)], gp).argmax(dim=-1)
        blank_rows = active & (label == blank)
        while bool(blank_rows.any()):  # rows on a blank move on to their next frame
            t = t + blank_rows.long()
            symbols = torch.where(blank_rows, 0, symbols)
            active = t < valid
            blank_rows &= active
            fresh = joint.after_projection(f[rows, t.clamp(max=t_max - 1)], gp).argmax(dim=-1)
            label = torch.where(blank_rows, fresh, label)
            blank_rows &= label == blank
        if not bool(active.any()):
            break
        g, h, c = decoder.predict(torch.where(active, label, blank), state.h, state.c)
        keep = active[:, None]
        state.h.copy_(torch.where(keep[:, :, None], h, state.h))
        state.c.copy_(torch.where(keep[:, :, None], c, state.c))
        state.g.copy_(torch.where(keep, g, state.g))
        gp = torch.where(keep, joint.pred(g), gp)
        emitted.append(torch.where(active, label, -1))  # read back once at the end: no sync per label
        emitted_at.append(t)
        symbols = symbols + active.long()
        force = active & (symbols >= max_symbols)  # a frame emits at most max_symbols labels
        t = t + force.long()
        symbols = torch.where(force, 0, symbols)
        active = t < valid
    tokens: list[list[int]] = [[] for _ in range(b)]
    frames: list[list[int]] = [[] for _ in range(b)]
    if emitted:
        labels, at = torch.stack(emitted, 1).cpu(), torch.stack(emitted_at, 1).cpu()
        for r in range(b):
            keep = labels[r] >= 0
            tokens[r], frames[r] = labels[r][keep].tolist(), at[r][keep].tolist()
    return tokens, frames


class CtcGreedyDecoder(StreamingModule):
    """CTC greedy over pooled per-stream state: ``decode(enc, valid, state)`` per chunk."""

    def __init__(self, head: CtcHead):
        super().__init__()
        self.head = head

    def init_state(self, batch_size: int, device=None) -> CtcState:
        return ctc_init_state(batch_size, self.head.blank, device or self.param_device())

    def decode(self, enc: torch.Tensor, valid: torch.Tensor, state: CtcState) -> tuple[list[list[int]], list[list[int]]]:
        return ctc_greedy(self.head(enc), valid, state, self.head.blank)


class RnntGreedyDecoder(StreamingModule):
    """RNNT label-looping greedy over pooled per-stream state: ``decode(enc, valid, state)`` per chunk."""

    def __init__(self, decoder: RnntDecoder, joint: RnntJoint, max_symbols: int):
        super().__init__()
        self.decoder, self.joint, self.max_symbols = decoder, joint, max_symbols

    def init_state(self, batch_size: int, device=None) -> RnntState:
        return rnnt_init_state(self.decoder, batch_size, device or self.param_device())

    def decode(self, enc: torch.Tensor, valid: torch.Tensor, state: RnntState) -> tuple[list[list[int]], list[list[int]]]:
        return rnnt_greedy(self.decoder, self.joint, enc, valid, state, self.max_symbols)
