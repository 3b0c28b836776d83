"""Whisper decoding for one 30 s window: greedy or beam search, with Whisper's logit rules.

Rules applied to every step's logits, in this order (as OpenAI's and
CTranslate2's decoders do):

1. suppress tokens: non-speech symbols and control tokens, always;
2. suppress blank: at the first sampled position, the space and end-of-text;
3. timestamp rules (unless ``without_timestamps``): timestamps come in pairs,
   never decrease, the first token is a timestamp no later than
   ``max_initial_timestamp_s``, and a timestamp is forced when the timestamp
   tokens together outweigh the best text token.

``no_speech_prob`` is the probability of ``<|nospeech|>`` at the
``<|startoftranscript|>`` position, before any rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from legato.asr.whisper.model import Whisper
from legato.asr.whisper.tokenizer import SECONDS_PER_TIMESTAMP, WhisperTokenizer

NEG_INF = float("-inf")
MAX_NEW_TOKENS = 224  # half the decoder context, as OpenAI's sample_len


@dataclass(frozen=True)
class DecodingOptions:
    beam_size: int = 1  # 1 = greedy
    patience: float = 1.0  # beam search: stop after beam_size * patience finished hypotheses
    length_penalty: float | None = None  # None: rank by sum logprob / length
    without_timestamps: bool = False
    max_initial_timestamp_s: float = 1.0
    suppress_blank: bool = True
    max_new_tokens: int = MAX_NEW_TOKENS


@dataclass
class DecodingResult:
    tokens: list[int]  # sampled tokens, without the prompt and without end-of-text
    sum_logprob: float
    no_speech_prob: float
    avg_logprob: float = field(init=False)

    def __post_init__(self) -> None:
        self.avg_logprob = self.sum_logprob / (len(self.tokens) + 1)


class LogitRules:
    """Whisper's suppression and timestamp rules over a (B, V) logits batch, as batched tensor ops.

    Per-row decisions (is the last token a timestamp? the first sampled position?)
    are read off each row's short token list in Python; the masking itself is a
    few whole-batch operations, so a batch of streams costs about what one does.
    ``sample_begin``: where sampling starts in each row's sequence (its prompt length).
    """

    def __init__(self, tok: WhisperTokenizer, options: DecodingOptions, sample_begin: int | list[int], n_vocab: int):
        self.tok, self.options = tok, options
        self.sample_begin = sample_begin
        self.suppress = torch.tensor(tok.suppressed_tokens(), dtype=torch.long)
        self.blank = torch.tensor(tok.encode(" ") + [tok.eot], dtype=torch.long)
        self.max_initial = round(options.max_initial_timestamp_s / SECONDS_PER_TIMESTAMP)
        self.n_vocab = n_vocab

    def _begin(self, row: int) -> int:
        return self.sample_begin if isinstance(self.sample_begin, int) else self.sample_begin[row]

    def apply(self, logits: torch.Tensor, sequences: list[list[int]]) -> torch.Tensor:
        logits = logits.clone()
        dev = logits.device
        logits[:, self.suppress.to(dev)] = NEG_INF
        sampled = [seq[self._begin(r) :] for r, seq in enumerate(sequences)]
        if self.options.suppress_blank:
            first = [r for r, s in enumerate(sampled) if not s]
            if first:
                logits[torch.tensor(first, device=dev)[:, None], self.blank.to(dev)[None, :]] = NEG_INF
        if not self.options.without_timestamps:
            self._timestamps(logits, sampled)
        return logits

    def _timestamps(self, logits: torch.Tensor, sampled: list[list[int]]) -> None:
        tb, eot = self.tok.timestamp_begin, self.tok.eot
        logits[:, self.tok.no_timestamps] = NEG_INF
        no_text, no_stamp, floor, first = [], [], [], []
        for s in sampled:
            last_ts = len(s) >= 1 and s[-1] >= tb
            penultimate_ts = len(s) < 2 or s[-2] >= tb
            no_stamp.append(last_ts and penultimate_ts)  # a pair just closed: text (or end) next
            no_text.append(last_ts and not penultimate_ts)  # a lone timestamp: another or the end next
            stamps = [t for t in s if t >= tb]
            # Never go back in time; after a closed pair, strictly forward.
            floor.append((stamps[-1] if (last_ts and not penultimate_ts) else stamps[-1] + 1) if stamps else tb)
            first.append(not s)  # the first token is a timestamp, no later than max_initial
        dev = logits.device
        v = torch.arange(logits.shape[1], device=dev)[None, :]
        is_stamp = v >= tb
        flag = lambda values: torch.tensor(values, device=dev)[:, None]  # noqa: E731
        mask = (flag(no_stamp) & is_stamp) | (flag(no_text) & (v < eot))
        mask |= is_stamp & (v < flag(floor))
        mask |= flag(first) & (~is_stamp | (v > tb + self.max_initial))
        logits.masked_fill_(mask, NEG_INF)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        force = logprobs[:, tb:].logsumexp(dim=-1) > logprobs[:, :tb].max(dim=-1).values
        logits.masked_fill_(force[:, None] & ~is_stamp, NEG_INF)


@torch.inference_mode()
def decode_window(model: Whisper, tok: WhisperTokenizer, mel: torch.Tensor, prompt: list[int], options: DecodingOptions = DecodingOptions()) -> DecodingResult:
    """Decode one (n_mels, 3000) window given a prompt (sot sequence, maybe preceded by previous text)."""
    audio = model.encoder(mel[None].to(next(model.parameters()).dtype))
    if options.beam_size > 1:
        return _beam_search(model, tok, audio, prompt, options)
    return _greedy(model, tok, audio, [prompt], options)[0]


def _start(model: Whisper, tok: WhisperTokenizer, audio: torch.Tensor, prompt: list[int], batch: int):
    cache = model.decoder.new_cache(audio.expand(batch, -1, -1))
    logits = model.decoder(torch.tensor([prompt] * batch, device=audio.device), cache)
    sot_index = prompt.index(tok.sot)
    no_speech = torch.softmax(logits[0, sot_index], dim=-1)[tok.no_speech].item()
    return cache, logits[:, -1], no_speech


def _beam_search(model, tok, audio, prompt, options) -> DecodingResult:
    beam = options.beam_size
    rules = LogitRules(tok, options, len(prompt), model.dims.n_vocab)
    cache, logits, no_speech = _start(model, tok, audio, prompt, beam)
    seqs = [list(prompt)]  # the first step expands one hypothesis
    scores = torch.zeros(1, device=audio.device)
    logits = logits[:1]
    finished: list[tuple[list[int], float]] = []
    max_finished = round(beam * options.patience)
    for _ in range(options.max_new_tokens):
        logprobs = torch.log_softmax(rules.apply(logits, seqs).float(), dim=-1)  # (n, V)
        total = (scores[:, None] + logprobs).flatten()
        top = torch.topk(total, k=min(2 * beam, total.numel()))
        keep_rows, new_seqs, new_scores = [], [], []
        for value, index in zip(top.values.tolist(), top.indices.tolist()):
            row, token = divmod(index, logprobs.shape[1])
            if value == NEG_INF:
                break
            if token == tok.eot:
                if len(finished) < max_finished:
                    finished.append((seqs[row][len(prompt) :], value))
                continue
            keep_rows.append(row)
            new_seqs.append(seqs[row] + [token])
            new_scores.append(value)
            if len(new_seqs) == beam:
                break
        if len(finished) >= max_finished or not new_seqs or len(new_seqs[0]) >= model.dims.n_text_ctx:
            break
        rows = torch.tensor(keep_rows, device=audio.device)
        if len(seqs) == 1:  # cache still holds `beam` identical copies: take the first n
            rows = torch.zeros(len(keep_rows), dtype=torch.long, device=audio.device)
        cache.reorder(rows)
        seqs, scores = new_seqs, torch.tensor(new_scores, device=audio.device)
        logits = model.decoder(torch.tensor([[s[-1]] for s in seqs], device=audio.device), cache)[:, -1]
    if not finished:
        finished = [(s[len(prompt) :], float(v)) for s, v in zip(seqs, scores.tolist())]

    def rank(item: tuple[list[int], float]) -> float:
        tokens, score = item
        length = len(tokens) + 1  # the end-of-text counts
        if options.length_penalty is None:
            return score / length
        return score / (((5 + length) / 6) ** options.length_penalty)

    tokens, score = max(finished, key=rank)
    return DecodingResult(tokens, score, no_speech)


@torch.inference_mode()
def decode_windows(model: Whisper, tok: WhisperTokenizer, mels: torch.Tensor, prompts: list[list[int]], options: DecodingOptions = DecodingOptions()) -> list[DecodingResult]:
    """Greedy-decode many windows (B, n_mels, 3000) at once, each with its own prompt.

    One encoder pass and one decoder step per token for the whole batch;
    prompts of different lengths are left-padded (the cache masks the padding
    and keeps each row's positions), finished rows idle until all are done.
    Beam search falls back to one window at a time.
    """
    if options.beam_size > 1:
        return [decode_window(model, tok, mel, p, options) for mel, p in zip(mels, prompts)]
    audio = model.encoder(mels.to(device=next(model.parameters()).device, dtype=next(model.parameters()).dtype))
    return _greedy(model, tok, audio, prompts, options)


def _greedy(model: Whisper, tok: WhisperTokenizer, audio: torch.Tensor, prompts: list[list[int]], options: DecodingOptions) -> list[DecodingResult]:
    """Greedy decoding of encoded windows (B, n_audio_ctx, d), one prompt per row."""
    device = audio.device
    longest = max(len(p) for p in prompts)
    offsets = [longest - len(p) for p in prompts]  # left padding of each row
    # Equal prompts need no padding, and take the unmasked path.
    cache = model.decoder.new_cache(audio, pad=torch.tensor(offsets, device=device) if any(offsets) else None)
    tokens = torch.tensor([[tok.eot] * off + p for off, p in zip(offsets, prompts)], device=device)
    logits = model.decoder(tokens, cache)
    results = []
    no_speech = [torch.softmax(logits[b, offsets[b] + p.index(tok.sot)], dim=-1)[tok.no_speech].item() for b, p in enumerate(prompts)]
    rules = LogitRules(tok, options, [len(p) for p in prompts], model.dims.n_vocab)
    seqs = [list(p) for p in prompts]
    totals = torch.zeros(len(prompts), dtype=torch.float64)
    done = [False] * len(prompts)
    last = logits[:, -1]
    for _ in range(options.max_new_tokens):
        filtered = rules.apply(last, seqs)
        chosen = filtered.argmax(dim=-1)
        logprob = torch.log_softmax(filtered.float(), dim=-1).gather(1, chosen[:, None])[:, 0]
        step = chosen.tolist()
        for b, token in enumerate(step):
            if done[b]:
                step[b] = tok.eot
                continue
            totals[b] += float(logprob[b])
            if token == tok.eot or len(seqs[b]) + 1 >= model.dims.n_text_ctx:
                done[b] = True
                if token != tok.eot:
                    seqs[b].append(token)
            else:
                seqs[b].append(token)
        if all(done) or cache.length + 1 > model.dims.n_text_ctx:
            break
        last = model.decoder(torch.tensor(step, device=device)[:, None], cache)[:, -1]
    totals = totals.tolist()
    for b, p in enumerate(prompts):
        results.append(DecodingResult(seqs[b][len(p) :], totals[b], no_speech[b]))
    return results
