"""legato.asr: speech recognition models and their front-ends (``frontends/``)."""
