"""A toy voice for service tests: a tone per character, streamed in fixed chunks, with a cancellation probe."""

import math
import threading
import time

import torch

from legato.tts.voice import SynthesisRequest, Voice

CHUNK = 1600


class ToneVoice(Voice):
    model = "toy-tone"

    def __init__(self, name="tone", sample_rate=16000, samples_per_char=800, delay_s=0.0, supports_reference=False):
        self.name, self.sample_rate, self.per_char, self.delay_s = name, sample_rate, samples_per_char, delay_s
        self.supports_reference = supports_reference
        self.chunks_made = 0
        self.stopped = threading.Event()  # set when a stream ended early because it was cancelled

    def audio(self, request: SynthesisRequest) -> torch.Tensor:
        n = int(len(request.text) * self.per_char / request.speed)
        t = torch.arange(n, dtype=torch.float64) / self.sample_rate
        return (0.3 * torch.sin(2 * math.pi * 220.0 * t)).to(torch.float32)

    def stream(self, request, cancelled):
        audio = self.audio(request)
        done = False
        try:
            for lo in range(0, audio.shape[0], CHUNK):
                if cancelled.is_set():
                    return
                time.sleep(self.delay_s)
                self.chunks_made += 1
                yield audio[lo : lo + CHUNK]
            done = True
        finally:
            if not done:  # cancelled, or closed early by the service
                self.stopped.set()
