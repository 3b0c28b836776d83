"""legato.music: generative audio, video-to-audio and music (later issues)."""
