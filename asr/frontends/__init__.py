"""ASR front-ends: 16 kHz mono audio (B, samples) -> features (B, frames, features).

Each is a :class:`~legato.stream.module.StreamingModule` whose offline
``forward`` is the reference its ``step``/``flush`` equal at any chunk split,
and matches its model family's own code (fixtures in tests/fixtures/frontends):

* ``nemo_mel``: NeMo's AudioToMelSpectrogramPreprocessor (Conformer, FastConformer, Canary).
* ``kaldi_fbank`` + ``lfr_cmvn`` = ``funasr_frontend``: FunASR's WavFrontend
  (Paraformer, SenseVoice): Kaldi fbank, low frame rate stacking, CMVN from am.mvn.
* ``whisper_mel``: Whisper's log-mel; the window-level normalisation is the
  separate :func:`normalize_window`.

Shared pieces: ``framing`` (frame cutting and its streaming buffer, frame-count
arithmetic, input checks) and ``spectral`` (windows, power spectrum, Slaney mel).
"""

from legato.asr.frontends.framing import Framer, FramingState, centred_frames, frames_in
from legato.asr.frontends.funasr_frontend import FunasrFrontend, FunasrFrontendState
from legato.asr.frontends.kaldi_fbank import KaldiFbank, KaldiFbankConfig, kaldi_mel_banks
from legato.asr.frontends.lfr_cmvn import Cmvn, Lfr, LfrConfig, LfrState, lfr_frames, load_am_mvn
from legato.asr.frontends.nemo_mel import NemoMel, NemoMelConfig, NemoMelState
from legato.asr.frontends.spectral import slaney_mel_filters
from legato.asr.frontends.whisper_mel import N_FRAMES, N_SAMPLES, WhisperMel, WhisperMelConfig, normalize_window, pad_or_trim

__all__ = [
    "Cmvn",
    "Framer",
    "FramingState",
    "FunasrFrontend",
    "FunasrFrontendState",
    "KaldiFbank",
    "KaldiFbankConfig",
    "Lfr",
    "LfrConfig",
    "LfrState",
    "N_FRAMES",
    "N_SAMPLES",
    "NemoMel",
    "NemoMelConfig",
    "NemoMelState",
    "WhisperMel",
    "WhisperMelConfig",
    "centred_frames",
    "frames_in",
    "kaldi_mel_banks",
    "lfr_frames",
    "load_am_mvn",
    "normalize_window",
    "pad_or_trim",
    "slaney_mel_filters",
]
