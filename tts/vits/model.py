"""A Piper VITS voice's network, split where streaming needs it: ``encode`` then ``decode``.

``encode`` (per sentence, batched over sentences): phoneme ids -> text encoder -> log-durations ->
``ceil(exp(logw) * length_scale)`` frames per phoneme -> the prior's mean and log-scale repeated
over those frames -> ``z_p = m + noise * exp(logs) * noise_scale``.

``decode`` (per window of frames, batched over windows): ``z_p`` -> reversed flow -> HiFi-GAN
decoder -> waveform, ``hop_length`` samples a frame. Both halves take padded batches with lengths and
each row equals the row alone; ``infer`` runs both on whole sentences, as Piper's exported graph does.

Noise is the caller's: (B, 2, T) for the stochastic duration predictor (already times ``noise_w``)
and a function giving each row's prior noise once its frame count is known, so requests draw from
their own seeded generators whatever batch they run in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from legato.codecs.hifigan import HifiGan

from .config import VitsConfig
from .duration import DurationPredictor, StochasticDurationPredictor
from .flow import Flow
from .text_encoder import TextEncoder


@dataclass(frozen=True)
class Encoded:
    """One sentence's prior, ready for ``decode``. Tensors without batch axis."""

    z_p: torch.Tensor  # (C, frames) prior sample
    durations: torch.Tensor  # (phonemes,) long: frames per phoneme id
    g: torch.Tensor | None  # (gin, 1) speaker embedding, or None


class Vits(nn.Module):
    def __init__(self, cfg: VitsConfig):
        super().__init__()
        self.cfg = cfg
        self.enc_p = TextEncoder(cfg)
        self.dp = StochasticDurationPredictor(cfg) if cfg.use_sdp else DurationPredictor(cfg)
        self.flow = Flow(cfg)
        self.dec = HifiGan(cfg.decoder)
        if cfg.n_speakers > 1:
            self.emb_g = nn.Embedding(cfg.n_speakers, cfg.gin_channels)

    def speaker(self, speaker_ids: torch.Tensor | None) -> torch.Tensor | None:
        """(B,) long -> (B, gin, 1), or None for a single-speaker voice."""
        if self.cfg.n_speakers <= 1:
            return None
        if speaker_ids is None:
            raise ValueError("a multi-speaker voice needs speaker ids")
        return self.emb_g(speaker_ids).unsqueeze(-1)

    def encode(
        self,
        ids: torch.Tensor,
        lengths: torch.Tensor,
        *,
        length_scales: torch.Tensor,
        duration_noise: torch.Tensor | None,
        prior_noise: Callable[[int, int], torch.Tensor] | None,
        noise_scales: torch.Tensor,
        speaker_ids: torch.Tensor | None = None,
    ) -> list[Encoded]:
        """ids (B, T) long, lengths (B,), length_scales/noise_scales (B,) -> one :class:`Encoded` per row.

        duration_noise (B, 2, T): the stochastic predictor's input noise times noise_w (None: zeros).
        prior_noise(row, frames) -> (C, frames) standard normal draws for that row (None: zeros).
        """
        g = self.speaker(speaker_ids)
        x, m, logs, mask = self.enc_p(ids, lengths)
        if self.cfg.use_sdp:
            noise = duration_noise if duration_noise is not None else x.new_zeros(x.shape[0], 2, x.shape[2])
            logw = self.dp(x, mask, noise, g)
        else:
            logw = self.dp(x, mask, g)
        w = torch.ceil(torch.exp(logw) * mask * length_scales.view(-1, 1, 1))[:, 0].long()  # (B, T)
        # Length regulation for all rows at once: the only device sync is reading the durations (a per-row
        # repeat_interleave syncs several times a row, which at 64 rows on a GPU cost more than the network).
        w_host, n_ids = w.cpu(), lengths.tolist()
        b, c = ids.shape[0], self.cfg.inter_channels
        frames = [int(w_host[r, : n_ids[r]].sum()) for r in range(b)]
        width = max(1, max(frames))  # the reference clamps a length to 1: that frame's prior is zero
        index = torch.zeros(b, width, dtype=torch.long)
        valid = torch.zeros(b, 1, width)
        for r, f in enumerate(frames):
            index[r, :f] = torch.repeat_interleave(torch.arange(w_host.shape[1]), w_host[r])[:f]
            valid[r, 0, :f] = 1.0
        index, valid = index.to(x.device).unsqueeze(1).expand(b, c, width), valid.to(x.device, x.dtype)
        mr = m.gather(2, index) * valid
        lr = logs.gather(2, index) * valid
        z_p = mr
        if prior_noise is not None:
            noise = torch.zeros_like(mr)
            for r, f in enumerate(frames):
                noise[r, :, : max(1, f)] = prior_noise(r, max(1, f)).to(mr)
            z_p = mr + noise * torch.exp(lr) * noise_scales.view(-1, 1, 1).to(mr)
        return [Encoded(z_p[r, :, : max(1, f)], w[r, : n_ids[r]], None if g is None else g[r]) for r, f in enumerate(frames)]

    def decode(self, z_p: torch.Tensor, lengths: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """z_p (B, C, T) frames, lengths (B,) -> waveform (B, T * hop); each row valid to lengths * hop."""
        mask = (torch.arange(z_p.shape[2], device=z_p.device)[None, :] < lengths[:, None]).unsqueeze(1).to(z_p.dtype)
        z = self.flow(z_p * mask, mask, g)
        return self.dec(z * mask, g, lengths if z_p.shape[0] > 1 else None)

    def infer(
        self,
        ids: Sequence[Sequence[int]],
        *,
        length_scale: float = 1.0,
        speaker_id: int | None = None,
        duration_noise: list[torch.Tensor] | None = None,
        prior_noise: list[torch.Tensor] | None = None,
        noise_scale: float = 0.0,
    ) -> list[torch.Tensor]:
        """Whole sentences (lists of ids) -> one waveform (samples,) each; deterministic when no noise is given."""
        dev = next(self.parameters()).device
        lengths = torch.tensor([len(s) for s in ids], device=dev)
        batch = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long, device=dev)
        for r, s in enumerate(ids):
            batch[r, : len(s)] = torch.tensor(list(s), device=dev)
        dn = None
        if duration_noise is not None:
            dn = torch.zeros(len(ids), 2, batch.shape[1], device=dev)
            for r, n in enumerate(duration_noise):
                dn[r, :, : n.shape[1]] = n
        b = len(ids)
        encoded = self.encode(
            batch, lengths, length_scales=torch.full((b,), float(length_scale), device=dev), duration_noise=dn,
            prior_noise=None if prior_noise is None else (lambda r, t: prior_noise[r][:, :t]),
            noise_scales=torch.full((b,), float(noise_scale), device=dev),
            speaker_ids=None if speaker_id is None else torch.full((b,), int(speaker_id), device=dev),
        )
        frames = torch.tensor([e.z_p.shape[1] for e in encoded], device=dev)
        z_p = torch.zeros(b, self.cfg.inter_channels, int(frames.max()), device=dev)
        for r, e in enumerate(encoded):
            z_p[r, :, : e.z_p.shape[1]] = e.z_p
        g = None if encoded[0].g is None else torch.stack([e.g for e in encoded])
        wav = self.decode(z_p, frames, g)
        return [wav[r, : int(frames[r]) * self.cfg.hop_length] for r in range(b)]
