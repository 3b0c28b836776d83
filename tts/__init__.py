"""legato.tts: text-to-speech models and text front-ends (later issues)."""
