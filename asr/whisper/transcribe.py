"""Long-form Whisper transcription: 30 s windows, seek by timestamps, text conditioning.

Follows faster-whisper's schedule so transcripts can be compared token for
token: features of the audio plus one hop of zeros, normalised over the whole
input; each window is the next ``<= 3000`` frames, zero-padded; the decoder is
prompted with ``<|startofprev|>`` and the previous window's tokens; the
window's tokens are split into segments at paired timestamps, and the next
window starts at the last timestamp (or after the window when the text ended
without one). A window judged silent (high no-speech probability and low
average log-probability) is skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from legato.asr.frontends.whisper_mel import HOP_SAMPLES, N_FRAMES, WhisperMel, normalize_window
from legato.asr.whisper.decoding import DecodingOptions, DecodingResult, decode_window, decode_windows
from legato.asr.whisper.model import Whisper
from legato.asr.whisper.tokenizer import WhisperTokenizer
from legato.asr.whisper.word_timing import AlignedSegment, add_word_times
from legato.stream.frames import WordTiming

FRAMES_PER_TIMESTAMP = 2  # one timestamp (20 ms) spans two 10 ms mel frames
SECONDS_PER_FRAME = HOP_SAMPLES / 16000  # 0.01
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    text: str
    tokens: tuple[int, ...]
    words: tuple[WordTiming, ...] = ()  # timed by cross-attention DTW (word_timing.py), when asked for


def window_features(mel: WhisperMel, audio: torch.Tensor) -> torch.Tensor:
    """(n,) 16 kHz audio -> (n_mels, n // 160) normalised log-mel, as faster-whisper computes it."""
    padded = F.pad(audio, (0, HOP_SAMPLES))
    feats = normalize_window(mel(padded[None]))[0].T  # (n_mels, (n + 160) // 160)
    return feats[:, :-1]


def split_segments(tok: WhisperTokenizer, tokens: list[int], time_offset: float, window_frames: int) -> tuple[list[Segment], int]:
    """Segments of one window's tokens, and how many mel frames to advance."""
    tb = tok.timestamp_begin
    single_ending = len(tokens) >= 2 and tokens[-2] < tb <= tokens[-1]
    pairs = [i for i in range(1, len(tokens)) if tokens[i] >= tb and tokens[i - 1] >= tb]
    segments: list[Segment] = []

    def add(piece: list[int], start: float, end: float) -> None:
        segments.append(Segment(start, end, tok.decode(piece), tuple(piece)))

    if pairs:
        cuts = pairs + ([len(tokens)] if single_ending else [])
        last = 0
        for cut in cuts:
            piece = tokens[last:cut]
            add(piece, time_offset + tok.timestamp_seconds(piece[0]), time_offset + tok.timestamp_seconds(piece[-1]))
            last = cut
        advance = window_frames if single_ending else (tokens[last - 1] - tb) * FRAMES_PER_TIMESTAMP
    else:
        duration = window_frames * SECONDS_PER_FRAME
        stamps = [t for t in tokens if t >= tb]
        if stamps and stamps[-1] != tb:
            duration = tok.timestamp_seconds(stamps[-1])
        add(tokens, time_offset, time_offset + duration)
        advance = window_frames
    return segments, advance


def window_prompt(tok: WhisperTokenizer, previous: list[int], options: DecodingOptions, max_prompt: int) -> list[int]:
    """<|startofprev|> + the last previous tokens (if any) + the task prompt."""
    prompt = ([tok.sot_prev] + previous[-max_prompt:] if previous else []) + tok.sot_sequence
    return prompt + [tok.no_timestamps] if options.without_timestamps else prompt


def window_segments(tok: WhisperTokenizer, result: DecodingResult, offset_s: float, size: int) -> tuple[list[Segment], int]:
    """The kept segments of one decoded window (none if judged silent) and the frames to advance."""
    if result.no_speech_prob > NO_SPEECH_THRESHOLD and result.avg_logprob <= LOGPROB_THRESHOLD:
        return [], size
    segments, advance = split_segments(tok, result.tokens, offset_s, size)
    return [s for s in segments if s.start_s != s.end_s and s.text.strip()], advance


def transcribe(
    model: Whisper,
    tok: WhisperTokenizer,
    audio: torch.Tensor,
    options: DecodingOptions = DecodingOptions(),
    condition_on_previous_text: bool = True,
    mel: WhisperMel | None = None,
    prompt_tokens: list[int] | None = None,
    progress: Callable[[float, float], None] | None = None,
    alignment_heads: list[tuple[int, int]] | None = None,
) -> list[Segment]:
    """(n,) float32 16 kHz mono -> segments with times in seconds; with ``alignment_heads``, their words timed by
    cross-attention DTW, window by window (``with_word_times``).

    ``prompt_tokens``: text tokens said before this audio (streaming passes its
    committed text), given to the first window as previous text.
    ``progress(done_s, total_s)``: called after each 30 s window (a CLI's progress bar).
    """
    if audio.shape[0] < HOP_SAMPLES:  # not one mel frame (and too short for the STFT's reflect padding): no speech
        return []
    mel = mel or WhisperMel()
    feats = window_features(mel, audio)
    content = feats.shape[1]
    seek, reset_since, last_speech = 0, 0, 0.0
    all_tokens: list[int] = list(prompt_tokens or [])
    out: list[Segment] = []
    max_prompt = model.dims.n_text_ctx // 2 - 1
    while seek < content:
        size = min(N_FRAMES, content - seek)
        window = F.pad(feats[:, seek : seek + size], (0, N_FRAMES - size))
        prompt = window_prompt(tok, all_tokens[reset_since:], options, max_prompt)
        result = decode_window(model, tok, window, prompt, options)
        segments, advance = window_segments(tok, result, seek * SECONDS_PER_FRAME, size)
        if alignment_heads:
            segments, last_speech = with_word_times(model, tok, alignment_heads, segments, window, size, seek * SECONDS_PER_FRAME, last_speech)
        seek += advance
        if progress is not None:
            progress(min(seek, content) * SECONDS_PER_FRAME, content * SECONDS_PER_FRAME)
        for s in segments:
            out.append(s)
            all_tokens.extend(s.tokens)
        if not condition_on_previous_text:
            reset_since = len(all_tokens)
    return out


def transcribe_short(
    model: Whisper,
    tok: WhisperTokenizer,
    audios: list[torch.Tensor],
    prompts: list[list[int]],
    options: DecodingOptions = DecodingOptions(),
    mel: WhisperMel | None = None,
) -> list[list[Segment]]:
    """Many clips of at most one window (30 s) each, decoded as one batch; same result as ``transcribe`` on each."""
    mel = mel or WhisperMel()
    max_prompt = model.dims.n_text_ctx // 2 - 1
    windows, sizes = [], []
    for audio in audios:
        feats = window_features(mel, audio)
        if feats.shape[1] > N_FRAMES:
            raise ValueError(f"transcribe_short takes at most {N_FRAMES} frames (30 s); got {feats.shape[1]}")
        sizes.append(feats.shape[1])
        windows.append(F.pad(feats, (0, N_FRAMES - feats.shape[1])))
    results = decode_windows(model, tok, torch.stack(windows), [window_prompt(tok, list(p), options, max_prompt) for p in prompts], options)
    out = []
    for audio, prompt, result, size in zip(audios, prompts, results, sizes):
        segments, advance = window_segments(tok, result, 0.0, size) if size else ([], 0)
        if advance < size:  # the text stopped before the audio did: transcribe reads on in another window
            segments = transcribe(model, tok, audio, options, mel=mel, prompt_tokens=list(prompt))
        out.append(segments)
    return out


def with_word_times(model: Whisper, tok: WhisperTokenizer, heads: list[tuple[int, int]], segments: list[Segment], window: torch.Tensor,
                    frames: int, offset_s: float, last_speech: float) -> tuple[list[Segment], float]:
    """One window's segments with their words timed (``word_timing.add_word_times``; start and end adjusted to the
    words as openai-whisper does), and the last speech time for the next window."""
    aligned = [AlignedSegment(list(s.tokens), s.start_s, s.end_s) for s in segments]
    last_speech = add_word_times(model, tok, heads, aligned, window, frames, offset_s, last_speech, tok.language_code)
    out = [Segment(float(a.start), float(a.end), s.text, s.tokens, _text_words(a.words)) for s, a in zip(segments, aligned)]
    return out, last_speech


def _text_words(timed: list[dict]) -> tuple[WordTiming, ...]:
    """The aligned words as the text's whitespace-separated words: the alignment's words follow tokens ("old-sposed"
    is "old" + "-sposed"), the transcript's follow spaces, and a word's time spans the pieces it is made of."""
    text, owner = "", []
    for i, w in enumerate(timed):
        text += w["word"]
        owner += [i] * len(w["word"])
    out = []
    for m in re.finditer(r"\S+", text):
        first, last = timed[owner[m.start()]], timed[owner[m.end() - 1]]
        out.append(WordTiming(m.group(), float(first["start"]), float(last["end"])))
    return tuple(out)
