"""Paraformer (FunASR-compatible): SANM encoder, CIF predictor, SANM decoder; offline and chunked streaming."""
