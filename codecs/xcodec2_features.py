"""w2v-BERT 2.0's input features as XCodec2 computes them (transformers' ``SeamlessM4TFeatureExtractor`` settings).

Kaldi fbank of the audio left- and right-padded by 160 samples (so 320 T samples give 2 T frames): 16-bit scale,
25 ms povey-windowed frames every 10 ms, DC removal, pre-emphasis 0.97, 80 Kaldi mel bins from 20 Hz to Nyquist,
log with the float32-epsilon floor; then each mel bin normalised over the whole utterance (mean 0, variance 1
with the n - 1 estimator, +1e-7) and consecutive frame pairs stacked -> (T, 160). The normalisation is over the
whole clip, which is fine for prompts (encoded once, offline).
"""

from __future__ import annotations

import functools

import torch
from torch.nn import functional as F

from legato.asr.frontends.kaldi_fbank import KaldiFbank, KaldiFbankConfig

EDGE = 160  # samples of zero padding each side
STACK = 2  # frames per feature vector
NORM_EPS = 1e-7


@functools.cache
def _fbank() -> KaldiFbank:
    # float64 as transformers' numpy extractor: in float32 the quiet lowest mel bins move by up to 1e-3 (normalised)
    return KaldiFbank(KaldiFbankConfig(window="povey", n_mels=80, low_freq=20.0, compute_dtype="float64"))


def semantic_features(wav: torch.Tensor) -> torch.Tensor:
    """(L,) float audio (L a multiple of 320) -> (L / 320, 160) float32 features."""
    fb = _fbank().to(wav.device)
    frames = fb(F.pad(wav.float(), (EDGE, EDGE))[None])[0].double()  # (2T, 80)
    frames = (frames - frames.mean(0)) / torch.sqrt(frames.var(0, unbiased=True) + NORM_EPS)
    t = frames.shape[0] // STACK
    return frames[: t * STACK].reshape(t, STACK * frames.shape[1]).float()
