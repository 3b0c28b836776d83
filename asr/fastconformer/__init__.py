"""Cache-aware streaming FastConformer (NeMo-compatible): encoder, CTC/RNNT decoders, .nemo loader, engine stage."""
