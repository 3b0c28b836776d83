"""Text front-ends for TTS: English normalisation, ARPAbet G2P, F5-TTS tokens."""
