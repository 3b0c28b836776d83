"""Triton helper shared by the kernels that read and write a state pool's rows in place (``rows=``)."""

import triton
import triton.language as tl


@triton.jit
def pool_row(b, ROWS, HAS_ROWS: tl.constexpr):
    """Batch row b's state row: ROWS[b] when the state is a pool's, else b."""
    if HAS_ROWS:
        row = tl.load(ROWS + b).to(tl.int64)
    else:
        row = b
    return row
