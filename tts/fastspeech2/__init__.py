"""FastSpeech 2 (ming024/FastSpeech2 checkpoints): config, model, loader, symbols."""
