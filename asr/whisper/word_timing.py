"""Word times from Whisper's cross-attention, by dynamic time warping (openai-whisper's ``word_timestamps``).

For one 30 s window and the text its segments decoded, the decoder is run once more, teacher-forced on
``sot_sequence + <|notimestamps|> + text + <|endoftext|>``. The cross-attention of the alignment heads (a model's
``config.json`` lists them: the heads whose attention follows the speech) gives, per text token, a distribution over
the window's audio frames. Softmax over the window's real frames, standardised per frame across tokens, median
filtered (7 frames) and averaged over heads, it is a token x frame similarity; DTW finds the monotonic path through
it, and each word starts where the path first reaches the word's first token.

openai-whisper then fixes what attention gets wrong, and legato does the same so that its times match:
- a word longer than twice the median word duration (the median capped at 0.7 s) next to a sentence end is cut;
- punctuation joins its neighbour word (opening marks the next, closing marks the previous);
- after a pause, a first word still too long is shortened; a segment's start and end prefer the decoder's timestamps
  when the first or last word runs 0.5 s past them, else take the words' times.

Times are rounded to 10 ms, as openai-whisper's are. Tested against openai-whisper on the same weights, segments and
windows (tests/test_whisper_words.py; fixture by tests/fixtures/make_whisper_word_timestamps.py).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import numba
import numpy as np
import torch
import torch.nn.functional as F

from .model import Whisper
from .tokenizer import WhisperTokenizer

TOKENS_PER_SECOND = 50  # encoder frames (two mel frames of 10 ms)
MEDIAN_FILTER = 7
PREPEND_PUNCTUATION = "\"'“¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END = ".。!！?？"
UNSPACED_LANGUAGES = {"zh", "ja", "th", "lo", "my", "yue"}  # words split where tokens decode to whole characters


@dataclass
class TimedWord:
    word: str  # with its leading space, as decoded
    tokens: list[int]
    start: float  # seconds in the window
    end: float
    probability: float


@dataclass
class AlignedSegment:
    """One decoded segment's input (text tokens, decoder times) and, after ``add_word_times``, its words."""

    tokens: list[int]
    start: float
    end: float
    words: list[dict] = field(default_factory=list)  # {"word", "start", "end", "probability"}, stream seconds


def cross_attention(model: Whisper, mel: torch.Tensor, tokens: torch.Tensor, heads: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """mel (n_mels, 3000), tokens (T,) -> logits (T, vocab) and the alignment heads' attention scores (heads, T, 1500):
    ``q . k / sqrt(d_head)`` before the softmax."""
    dec = model.decoder
    audio = model.encoder(mel[None])
    cache = dec.new_cache(audio)
    t = tokens.shape[0]
    x = dec.token_embedding(tokens[None]) + dec.positional_embedding[:t]
    wanted = {layer for layer, _ in heads}
    scores: dict[int, torch.Tensor] = {}
    for i, block in enumerate(dec.blocks):
        h = block.attn_ln(x)
        x = x + block.attn.attend(h, *block.attn.project_kv(h), causal=True)
        h = block.cross_attn_ln(x)
        keys, values = cache.cross_kv[i]
        if i in wanted:
            q = block.cross_attn.heads(block.cross_attn.query(h))
            scores[i] = (q @ keys.transpose(-1, -2))[0] / (q.shape[-1] ** 0.5)  # (H, T, frames)
        x = x + block.cross_attn.attend(h, keys, values)
        x = block._mlp(x)
    logits = (dec.ln(x) @ dec.token_embedding.weight.T)[0].float()
    return logits, torch.stack([scores[layer][head] for layer, head in heads]).float()


def _median_filter(x: torch.Tensor, width: int) -> torch.Tensor:
    """Along the last axis, reflect-padded; unchanged when too short to pad."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padded = F.pad(x[None], (pad, pad, 0, 0), mode="reflect")[0]
    return padded.unfold(-1, width, 1).sort()[0][..., pad]


@numba.njit(cache=True)
def _dtw(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost monotonic path through x (N, M): (row indices, column indices). Ties go to the left move
    (then up), and the cost table is float32, as openai-whisper's."""
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    trace = -np.ones((n + 1, m + 1), dtype=np.float32)
    cost[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            cost[i, j] = x[i - 1, j - 1] + c
            trace[i, j] = t
    i, j = n, m
    trace[0, :] = 2
    trace[:, 0] = 1
    rows, cols = [], []
    while i > 0 or j > 0:
        rows.append(i - 1)
        cols.append(j - 1)
        if trace[i, j] == 0:
            i -= 1
            j -= 1
        elif trace[i, j] == 1:
            i -= 1
        else:
            j -= 1
    return np.array(rows[::-1]), np.array(cols[::-1])


def split_words(tok: WhisperTokenizer, tokens: list[int], language: str = "en") -> tuple[list[str], list[list[int]]]:
    """Tokens -> words and their tokens: first into pieces that decode to whole characters, then (spaced languages)
    a piece joins the previous word unless it starts with a space, is punctuation or a special token."""
    decode = lambda ids: tok.tok.decode(ids, skip_special_tokens=False)  # noqa: E731
    full = decode(tokens)
    pieces, piece_tokens, current, offset = [], [], [], 0
    for t in tokens:
        current.append(t)
        text = decode(current)
        if "\ufffd" not in text or full[offset + text.index("\ufffd")] == "\ufffd":
            pieces.append(text)
            piece_tokens.append(current)
            current = []
            offset += len(text)
    if language in UNSPACED_LANGUAGES:
        return pieces, piece_tokens
    words: list[str] = []
    word_tokens: list[list[int]] = []
    for text, ids in zip(pieces, piece_tokens):
        if ids[0] >= tok.eot or text.startswith(" ") or text.strip() in string.punctuation or not words:
            words.append(text)
            word_tokens.append(list(ids))
        else:
            words[-1] += text
            word_tokens[-1].extend(ids)
    return words, word_tokens


def find_alignment(model: Whisper, tok: WhisperTokenizer, heads: list[tuple[int, int]], text_tokens: list[int], mel: torch.Tensor,
                   num_frames: int, language: str = "en") -> list[TimedWord]:
    """Words of ``text_tokens`` with their times in the window (``mel``: (n_mels, 3000), ``num_frames`` real)."""
    if not text_tokens:
        return []
    sot = tok.sot_sequence
    tokens = torch.tensor([*sot, tok.no_timestamps, *text_tokens, tok.eot], device=mel.device)
    with torch.inference_mode():
        logits, scores = cross_attention(model, mel, tokens, heads)
        probs = logits[len(sot):, : tok.eot].softmax(dim=-1)
        token_probs = probs[torch.arange(len(text_tokens)), torch.tensor(text_tokens)].tolist()
        weights = scores[:, :, : num_frames // 2].softmax(dim=-1)
        std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
        weights = _median_filter((weights - mean) / std, MEDIAN_FILTER)
        matrix = weights.mean(dim=0)[len(sot) : -1]
    rows, cols = _dtw(-matrix.double().cpu().numpy())
    words, word_tokens = split_words(tok, text_tokens + [tok.eot], language)
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(rows), (1, 0), constant_values=1).astype(bool)
    jump_times = cols[jumps] / TOKENS_PER_SECOND
    starts, ends = jump_times[boundaries[:-1]], jump_times[boundaries[1:]]
    probabilities = [np.mean(token_probs[i:j]) for i, j in zip(boundaries[:-1], boundaries[1:])]
    return [TimedWord(w, t, s, e, p) for w, t, s, e, p in zip(words, word_tokens, starts, ends, probabilities)]


def _merge_punctuation(words: list[TimedWord]) -> None:
    i, j = len(words) - 2, len(words) - 1
    while i >= 0:  # opening marks join the following word
        before, after = words[i], words[j]
        if before.word.startswith(" ") and before.word.strip() in PREPEND_PUNCTUATION:
            after.word, after.tokens = before.word + after.word, before.tokens + after.tokens
            before.word, before.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(words):  # closing marks join the previous word
        before, after = words[i], words[j]
        if not before.word.endswith(" ") and after.word in APPEND_PUNCTUATION:
            before.word, before.tokens = before.word + after.word, before.tokens + after.tokens
            after.word, after.tokens = "", []
        else:
            i = j
        j += 1


def add_word_times(model: Whisper, tok: WhisperTokenizer, heads: list[tuple[int, int]], segments: list[AlignedSegment],
                   mel: torch.Tensor, num_frames: int, time_offset: float, last_speech: float, language: str = "en") -> float:
    """Fill each segment's ``words`` (times in stream seconds: ``time_offset`` is the window's start) and adjust its
    start/end as openai-whisper does; returns the last speech time (the next window's ``last_speech``)."""
    if not segments:
        return last_speech
    per_segment = [[t for t in s.tokens if t < tok.eot] for s in segments]
    alignment = find_alignment(model, tok, heads, [t for ts in per_segment for t in ts], mel, num_frames, language)
    durations = np.array([w.end - w.start for w in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    longest = median * 2
    if len(durations):  # a word at a sentence boundary is not longer than twice the median
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > longest:
                if alignment[i].word in SENTENCE_END:
                    alignment[i].end = alignment[i].start + longest
                elif alignment[i - 1].word in SENTENCE_END:
                    alignment[i].start = alignment[i].end - longest
    _merge_punctuation(alignment)
    k = 0
    for segment, tokens in zip(segments, per_segment):
        taken, words = 0, []
        while k < len(alignment) and taken < len(tokens):
            w = alignment[k]
            if w.word:
                words.append({"word": w.word, "start": round(time_offset + w.start, 2), "end": round(time_offset + w.end, 2),
                              "probability": w.probability})
            taken += len(w.tokens)
            k += 1
        if words:
            first, second = words[0], words[1] if len(words) > 1 else None
            if first["end"] - last_speech > median * 4 and (
                    first["end"] - first["start"] > longest or (second is not None and second["end"] - first["start"] > longest * 2)):
                if second is not None and second["end"] - second["start"] > longest:  # the first word after a pause
                    boundary = max(second["end"] / 2, second["end"] - longest)
                    first["end"] = second["start"] = boundary
                first["start"] = max(0, first["end"] - longest)
            if segment.start < first["end"] and segment.start - 0.5 > first["start"]:
                first["start"] = max(0, min(first["end"] - median, segment.start))
            else:
                segment.start = first["start"]
            if segment.end > words[-1]["start"] and segment.end + 0.5 < words[-1]["end"]:
                words[-1]["end"] = max(words[-1]["start"] + median, segment.end)
            else:
                segment.end = words[-1]["end"]
            last_speech = segment.end
        segment.words = words
    return last_speech
