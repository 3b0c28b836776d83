"""legato.kernels: fused kernels (Triton on GPU, numba on CPU), each beside
the plain PyTorch reference it is tested against, with a dispatcher."""
