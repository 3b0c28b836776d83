"""FastSpeech 2 settings, read from (and checked against) ming024/FastSpeech2's YAML configs.

ming024 splits a model's settings over ``preprocess.yaml`` (audio, mel, pitch/energy feature
level), ``model.yaml`` (network sizes, quantisation) and ``stats.json`` (pitch/energy
min, max, mean, std written by its preprocessor). :meth:`FastSpeech2Config.from_ming024`
reads the first two as dicts plus the stats (and speakers.json for multi-speaker models).
Anything legato does not implement, or that ming024 itself could not run, fails with
:class:`UnsupportedConfigError` naming the YAML field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from legato.tts.fastspeech2.symbols import N_SYMBOLS

FEATURE_LEVELS = ("phoneme_level", "frame_level")
QUANTIZATIONS = ("linear", "log")
# ming024's PostNet() and its HiFi-GAN's conv_pre are both built for 80 mel channels.
N_MELS = 80
# VariancePredictor's second conv has padding=1 hard-coded, so only kernel 3 keeps the length.
VARIANCE_KERNEL = 3


class UnsupportedConfigError(ValueError):
    """A config value legato does not implement (the message names the field)."""

    code = "unsupported_model"


@dataclass(frozen=True)
class FastSpeech2Config:
    # preprocess.yaml
    sample_rate: int = 22050  # preprocessing.audio.sampling_rate, Hz
    hop_length: int = 256  # preprocessing.stft.hop_length, samples per mel frame
    n_mels: int = N_MELS  # preprocessing.mel.n_mel_channels
    mel_fmax: float | None = 8000.0  # preprocessing.mel.mel_fmax (8000 for HiFi-GAN)
    text_cleaners: tuple[str, ...] = ("english_cleaners",)
    pitch_feature: str = "phoneme_level"  # preprocessing.pitch.feature
    energy_feature: str = "phoneme_level"
    # model.yaml
    encoder_layers: int = 4
    encoder_heads: int = 2
    encoder_hidden: int = 256
    decoder_layers: int = 6
    decoder_heads: int = 2
    decoder_hidden: int = 256
    conv_filter_size: int = 1024  # FFT block conv feed-forward width
    conv_kernel_size: tuple[int, int] = (9, 1)  # kernels of its two convs
    variance_filter_size: int = 256
    variance_kernel_size: int = VARIANCE_KERNEL
    pitch_quantization: str = "linear"  # bins spaced linearly or log-uniformly between stats min/max
    energy_quantization: str = "linear"
    n_bins: int = 256  # embedding rows; n_bins - 1 bucket boundaries
    max_seq_len: int = 1000  # size of the stored position table (longer inputs get a computed one)
    n_speakers: int = 0  # 0: single speaker (model.yaml multi_speaker: False)
    # stats.json: [min, max] of the pitch / energy values the predictors were trained on
    pitch_range: tuple[float, float] = (-2.917, 11.391)
    energy_range: tuple[float, float] = (-1.431, 8.184)
    # PostNet() is not configurable in ming024 (80 -> 512 -> ... -> 80, kernel 5, 5 convs);
    # the loader reads these from the checkpoint's shapes.
    postnet_channels: int = 512
    postnet_kernel_size: int = 5
    postnet_layers: int = 5
    n_symbols: int = N_SYMBOLS + 1  # ming024's Encoder uses len(symbols) + 1 rows
    speakers: tuple[tuple[str, int], ...] = ()  # speakers.json (name, id) pairs, if any

    def __post_init__(self) -> None:
        for field, value in (("preprocessing.pitch.feature", self.pitch_feature), ("preprocessing.energy.feature", self.energy_feature)):
            if value not in FEATURE_LEVELS:
                raise UnsupportedConfigError(f"{field} = {value!r} is not supported (use one of {FEATURE_LEVELS})")
        for name, quant, (lo, hi) in (
            ("pitch", self.pitch_quantization, self.pitch_range),
            ("energy", self.energy_quantization, self.energy_range),
        ):
            if quant not in QUANTIZATIONS:
                raise UnsupportedConfigError(f"variance_embedding.{name}_quantization = {quant!r} is not supported (use one of {QUANTIZATIONS})")
            if quant == "log" and lo <= 0:
                raise UnsupportedConfigError(
                    f"variance_embedding.{name}_quantization = 'log' needs a positive stats.json {name} min, got {lo}"
                    " (log bins are for unnormalised values: set preprocessing.{name}.normalization to False)"
                )
            if not hi > lo:
                raise UnsupportedConfigError(f"stats.json {name}: max ({hi}) must exceed min ({lo})")
        for part in ("encoder", "decoder"):
            hidden, heads = getattr(self, f"{part}_hidden"), getattr(self, f"{part}_heads")
            if heads < 1 or hidden % heads:
                raise UnsupportedConfigError(f"transformer.{part}_hidden ({hidden}) must be a multiple of transformer.{part}_head ({heads})")
        if self.decoder_hidden != self.encoder_hidden:
            raise UnsupportedConfigError(
                f"transformer.decoder_hidden ({self.decoder_hidden}) must equal transformer.encoder_hidden ({self.encoder_hidden}):"
                " the variance adaptor output feeds the decoder directly"
            )
        if len(self.conv_kernel_size) != 2 or any(k % 2 == 0 or k < 1 for k in self.conv_kernel_size):
            raise UnsupportedConfigError(f"transformer.conv_kernel_size must be two odd kernel sizes, got {list(self.conv_kernel_size)}")
        if self.variance_kernel_size != VARIANCE_KERNEL:
            raise UnsupportedConfigError(
                f"variance_predictor.kernel_size must be {VARIANCE_KERNEL} (ming024's second predictor conv pads by 1),"
                f" got {self.variance_kernel_size}"
            )
        if self.n_mels != N_MELS:
            raise UnsupportedConfigError(
                f"preprocessing.mel.n_mel_channels must be {N_MELS} (ming024's PostNet and HiFi-GAN are built for it), got {self.n_mels}"
            )
        if self.n_bins < 2:
            raise UnsupportedConfigError(f"variance_embedding.n_bins must be >= 2, got {self.n_bins}")
        if self.postnet_layers < 2 or self.postnet_kernel_size % 2 == 0:
            raise UnsupportedConfigError(f"postnet: needs >= 2 convs of odd kernel, got {self.postnet_layers} x {self.postnet_kernel_size}")

    @property
    def frame_ms(self) -> float:
        return 1000.0 * self.hop_length / self.sample_rate

    @property
    def speaker_ids(self) -> dict[str, int]:
        return dict(self.speakers)

    @classmethod
    def from_ming024(
        cls,
        preprocess: Mapping[str, Any],
        model: Mapping[str, Any],
        stats: Mapping[str, Any],
        speakers: Mapping[str, int] | None = None,
    ) -> FastSpeech2Config:
        """From the parsed preprocess.yaml, model.yaml, stats.json (and speakers.json if multi-speaker)."""

        def get(doc: Mapping[str, Any], dotted: str, file: str) -> Any:
            node: Any = doc
            for part in dotted.split("."):
                if not isinstance(node, Mapping) or part not in node:
                    raise UnsupportedConfigError(f"{file}: missing {dotted}")
                node = node[part]
            return node

        p = lambda key: get(preprocess, key, "preprocess.yaml")
        m = lambda key: get(model, key, "model.yaml")
        multi = bool(model.get("multi_speaker", False))
        if multi and not speakers:
            raise UnsupportedConfigError("model.yaml multi_speaker is True but speakers.json is missing or empty")
        gst = model.get("gst")
        if isinstance(gst, Mapping) and gst.get("use_gst"):
            raise UnsupportedConfigError("model.yaml gst.use_gst is not supported")
        for name in ("pitch", "energy"):
            value = stats.get(name) if isinstance(stats, Mapping) else None
            if not isinstance(value, (list, tuple)) or len(value) < 2:
                raise UnsupportedConfigError(f"stats.json: {name} must be [min, max, mean, std], got {value!r}")
        fmax = p("preprocessing.mel.mel_fmax")
        return cls(
            sample_rate=int(p("preprocessing.audio.sampling_rate")),
            hop_length=int(p("preprocessing.stft.hop_length")),
            n_mels=int(p("preprocessing.mel.n_mel_channels")),
            mel_fmax=None if fmax is None else float(fmax),
            text_cleaners=tuple(p("preprocessing.text.text_cleaners")),
            pitch_feature=str(p("preprocessing.pitch.feature")),
            energy_feature=str(p("preprocessing.energy.feature")),
            encoder_layers=int(m("transformer.encoder_layer")),
            encoder_heads=int(m("transformer.encoder_head")),
            encoder_hidden=int(m("transformer.encoder_hidden")),
            decoder_layers=int(m("transformer.decoder_layer")),
            decoder_heads=int(m("transformer.decoder_head")),
            decoder_hidden=int(m("transformer.decoder_hidden")),
            conv_filter_size=int(m("transformer.conv_filter_size")),
            conv_kernel_size=tuple(int(k) for k in m("transformer.conv_kernel_size")),
            variance_filter_size=int(m("variance_predictor.filter_size")),
            variance_kernel_size=int(m("variance_predictor.kernel_size")),
            pitch_quantization=str(m("variance_embedding.pitch_quantization")),
            energy_quantization=str(m("variance_embedding.energy_quantization")),
            n_bins=int(m("variance_embedding.n_bins")),
            max_seq_len=int(m("max_seq_len")),
            n_speakers=len(speakers) if multi and speakers else 0,
            pitch_range=(float(stats["pitch"][0]), float(stats["pitch"][1])),
            energy_range=(float(stats["energy"][0]), float(stats["energy"][1])),
            speakers=tuple(sorted(((str(k), int(v)) for k, v in (speakers or {}).items()), key=lambda kv: kv[1])) if multi else (),
        )
