"""Llasa TTS: a Llama decoder writing XCodec2 speech tokens."""
