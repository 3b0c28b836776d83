"""The architecture of a Piper VITS voice, and its inference defaults.

Piper trains VITS with fixed sub-network shapes (``piper/train/vits/models.py``): the flow is 4
residual-coupling layers of a 4-layer WaveNet (kernel 5, dilation 1), the duration predictor is
either the stochastic one (4 spline flows over 3-layer dilated depth-separable convs, kernel 3) or the
deterministic one (two kernel-3 convs), and the text encoder uses relative attention over a window
of 4. What varies between voices (sizes, speakers, the decoder's upsampling) is read from the
checkpoint by ``loader.py`` into :class:`VitsConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from legato.codecs.hifigan import HifiGanConfig


@dataclass(frozen=True)
class VitsConfig:
    n_vocab: int = 256  # phoneme ids
    inter_channels: int = 192  # the latent z (flow and decoder input)
    hidden_channels: int = 192  # text encoder, flow WaveNets, duration predictor input
    filter_channels: int = 768  # text encoder FFN
    n_heads: int = 2
    n_layers: int = 6  # text encoder layers
    kernel_size: int = 3  # text encoder FFN convs
    window_size: int = 4  # relative attention reaches +-4 positions
    use_sdp: bool = True  # stochastic duration predictor; else the deterministic one
    dp_filter_channels: int = 256  # deterministic predictor's convs (the stochastic one uses hidden_channels)
    dp_kernel_size: int = 3
    sdp_flows: int = 4  # spline flows of the stochastic predictor
    sdp_conv_layers: int = 3  # DDSConv layers (dilations 1, 3, 9)
    spline_bins: int = 10
    spline_tail_bound: float = 5.0
    flow_kernel_size: int = 5
    flow_dilation_rate: int = 1
    flow_wn_layers: int = 4
    n_flows: int = 4  # residual coupling layers
    n_speakers: int = 1
    gin_channels: int = 0  # speaker embedding size (0: single speaker)
    decoder: HifiGanConfig = field(default_factory=lambda: HifiGanConfig(
        resblock="2", upsample_rates=(8, 8, 4), upsample_kernel_sizes=(16, 16, 8), upsample_initial_channel=256,
        resblock_kernel_sizes=(3, 5, 7), resblock_dilation_sizes=((1, 2), (2, 6), (3, 12)), n_mels=192,
        sample_rate=22050, hop_length=256, post_bias=False))

    @property
    def sample_rate(self) -> int:
        return self.decoder.sample_rate

    @property
    def hop_length(self) -> int:
        return self.decoder.hop_length

    @property
    def flow_reach(self) -> int:
        """Latent frames the reversed flow reads on each side of an output frame.

        Each WaveNet layer i reads (k - 1) / 2 * dilation**i frames each side; a coupling layer's
        shift depends on its WaveNet only, and the layers run one after another.
        """
        per_wn = sum((self.flow_kernel_size - 1) // 2 * self.flow_dilation_rate**i for i in range(self.flow_wn_layers))
        return self.n_flows * per_wn


@dataclass(frozen=True)
class InferenceDefaults:
    """A voice's ``inference`` block in its ``.onnx.json``: Piper's defaults when absent."""

    noise_scale: float = 0.667  # prior noise (the latent's sampling temperature)
    length_scale: float = 1.0  # > 1 speaks slower
    noise_w: float = 0.8  # duration noise (stochastic predictor only)
