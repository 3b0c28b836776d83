"""legato.kernels: fused kernels (Triton on GPU, numba on CPU), each beside the
plain PyTorch reference it is tested against, chosen by ``dispatch``.

* ``dispatch``: registry, backend choice per device, clean fallback.
* ``polyphase``: rational polyphase FIR resampling (torch reference, numba).
"""

from legato.kernels import polyphase  # noqa: F401  (registers its implementations)
