"""legato.kernels: fused kernels (Triton on GPU, numba on CPU), each beside the
plain PyTorch reference it is tested against, chosen by ``dispatch``.

* ``dispatch``: registry, backend choice per device, clean fallback.
* ``add_norm``: a residual add fused with the layer norm after it (torch reference, Triton).
* ``causal_dwconv``: GLU + causal depthwise conv over a cache + norm + SiLU, streamed (torch reference, Triton).
* ``polyphase``: rational polyphase FIR resampling (torch reference, numba).
* ``relpos_attention``: streaming Transformer-XL relative-position attention over a ring K/V cache (torch, Triton).
* ``slot_attention``: packed new tokens attending over a slot KV cache (torch reference, Triton).
"""

from legato.kernels import add_norm, causal_dwconv, polyphase, relpos_attention, slot_attention  # noqa: F401  (register their implementations)
