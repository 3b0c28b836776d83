"""F5-TTS: DiT, flow-matching sampling, checkpoint loader."""
