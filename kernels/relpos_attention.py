"""Streaming relative-position attention (Transformer-XL / NeMo ``rel_pos``) over a ring cache of projected keys.

One chunk of ``T`` new frames per stream attends to the ``left`` frames before it (from the ring) and to the
chunk's first ``valid`` frames (chunked-limited attention: the whole current chunk, no causal mask):

    score(t, f) = ((q_t + u) . k_f + (q_t + v) . P[rel - lo]) * scale,   rel = (frames + t) - f,  lo = -(T - 1)

``P`` (H, R, D) holds the projected sinusoids of the distances lo..left + T - 1 (the same for every stream, made
once per step). Frame ``f`` of a stream lives in ring slot ``f % C``; ``frames`` (B,) counts the frames written
before this chunk, so ring frames ``frames - left .. frames - 1`` that exist (``f >= 0``) are seen. After the
attention the chunk's keys/values are written to their slots (all T, as NeMo caches the whole chunk). The ring
may be stored in a narrower dtype than the queries (fp8 e4m3: half the memory of bf16); it is read back in the
queries' dtype.

* ``relpos_attention_torch``: the reference (gathers the ring into time order, materialises the scores).
* ``relpos_attention_triton``: one program per stream (per group of heads) reads the ring in place, head after
  head in a software-pipelined loop; the position scores (q + v) . P of every distance come from one batched
  product made before it, and the kernel loads each (query, key) pair's shifted column (no (B, H, T, S)
  position-bias tensor); softmax (online over key tiles) and the value product on tensor-core tiles, then the
  new keys/values written into the ring: no concatenated copy of the cache, no host sync. Given ``rows``, the
  rings and frame counts are a state pool's and each stream's row is read and written where it lies. Chunks of
  one or two frames (FastConformer's 160 ms chunks) take ``relpos_warp_kernel`` instead: one warp per (stream,
  head), the ring in key tiles of 32 slots read in storage order, CUDA-core products and an online softmax per
  query row; larger chunks take the tensor-core kernel.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from legato.kernels.dispatch import register
from legato.kernels.bytes import byte_view

NAME = "relpos_stream_attention"
# tl.dot tile side: a chunk of T frames pads to it. Register multiply-adds for small chunks instead measured slower
# twice (a row-at-a-time kernel: 1.67 vs 0.96 ms per layer at 4096 streams, H200)
MIN_DOT = 16


def _ring_order(ring: torch.Tensor, frames: torch.Tensor, left: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, C, D) ring -> its last ``left`` frames in time order (B, H, left, D) and which exist (B, left)."""
    cap = ring.shape[2]
    f = frames[:, None] - left + torch.arange(left, device=ring.device)  # (B, left) absolute frame of each key
    index = torch.remainder(f, cap)[:, None, :, None].expand(-1, ring.shape[1], -1, ring.shape[3])
    return torch.gather(byte_view(ring), 2, index).view(ring.dtype), f >= 0


@register(NAME, "torch")
def relpos_attention_torch(q, k, v, ring_k, ring_v, frames, valid, pos, bias_u, bias_v, left: int, scale: float, rows=None) -> torch.Tensor:
    """q/k/v (B, T, H, D) chunk projections; ring_k/ring_v (B, H, C, D) updated in place; frames, valid (B,) int64;
    pos (H, R, D) with R = left + 2T - 1; bias_u/bias_v (H, D). Returns (B, T, H, D).

    ``rows`` (B,) int64: the rings and ``frames`` are a pool's (any number of rows) and batch row b's stream lives
    in pool row ``rows[b]`` (gathered here, written back after)."""
    if rows is not None:
        rk, rv = (torch.index_select(byte_view(r), 0, rows).view(r.dtype) for r in (ring_k, ring_v))
        out = relpos_attention_torch(q, k, v, rk, rv, frames[rows], valid, pos, bias_u, bias_v, left, scale)
        byte_view(ring_k).index_copy_(0, rows, byte_view(rk))
        byte_view(ring_v).index_copy_(0, rows, byte_view(rv))
        return out
    b, t, h, d = q.shape
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
    old_k, seen = _ring_order(ring_k, frames, left)
    old_v, _ = _ring_order(ring_v, frames, left)
    keys, values = torch.cat([old_k.to(k.dtype), k], 2), torch.cat([old_v.to(v.dtype), v], 2)  # (B, H, S, D), S = left + T
    content = torch.matmul(q + bias_u[:, None].to(q.dtype), keys.transpose(-1, -2))
    by_distance = torch.matmul(q + bias_v[:, None].to(q.dtype), pos.transpose(-1, -2))  # (B, H, T, R)
    j = torch.arange(left + t, device=q.device)
    rel = (left + torch.arange(t, device=q.device))[:, None] - j[None, :]  # (T, S): query frame minus key frame
    shifted = torch.gather(by_distance, 3, (rel + t - 1)[None, None].expand(b, h, -1, -1))
    visible = torch.cat([seen, j[None, left:] - left < valid[:, None]], 1)[:, None, None]  # (B, 1, 1, S)
    scores = ((content + shifted).float() * scale).masked_fill(~visible, float("-inf"))
    weights = torch.softmax(scores, -1).nan_to_num(0.0)  # a query that sees nothing outputs 0, as NeMo
    out = torch.matmul(weights.to(values.dtype), values)
    slots = torch.remainder(frames[:, None] + torch.arange(t, device=q.device), ring_k.shape[2])
    index = slots[:, None, :, None].expand(-1, h, -1, d)
    byte_view(ring_k).scatter_(2, index, byte_view(k.to(ring_k.dtype)))
    byte_view(ring_v).scatter_(2, index, byte_view(v.to(ring_v.dtype)))
    return out.transpose(1, 2)


def _compile():
    from legato.kernels import relpos_attention_triton as k  # Triton only where it exists

    return k.relpos_attention_kernel


def _compile_warp():
    from legato.kernels import relpos_attention_triton as k

    return k.relpos_warp_kernel


# Launch configuration measured on an H200 (bench/bench_relpos_kernel.py, FastConformer-L shape, 4096 streams;
# docs/PERFORMANCE.md): all 8 heads in one program, 2 pipeline stages, 4 warps: 0.657 ms per layer for 2-frame chunks
# (one program per head: 0.798; Triton's autotuner picked 0.890, its timing drowned by restoring the 0.6 GB ring).
MAX_HEADS_PER_PROGRAM = 8
PIPELINE_STAGES = 2
NUM_WARPS = 4
# Ring frames per key tile (the rest of the ring and the chunk share one last tile): 128, one tile for FastConformer's
# 70 + 2 keys, measured faster than a 64 + 16 split (0.691 vs 0.752 ms at 4096 streams, H200): the
# padding costs less than the second tile's online-softmax pass.
MAIN_TILE = 128
FP32_MAIN_TILE = 64  # fp32 tiles of 128 keys need 246 KB of shared memory at 2 stages (the H200 has 227)
# Position scores by one product before the kernel: 0.639 vs 0.663 ms at 4096 streams (bf16 ring), 0.879 vs 0.933
# (fp8), H200
PRECOMPUTED_POSITIONS = True
# Distances per row of the position scores rounded up to a multiple of this (alignment for the product's tiles):
# 0.170 vs 0.312 ms unpadded at 16,384 streams (bench_relpos_kernel "position scores", H200)
POSITION_PAD = 8
# Chunks of one or two frames (160 ms at 8x subsampling): one warp per (stream, head), CUDA-core products
# (``relpos_warp_kernel``): 1.32 vs 2.29 ms per layer at 16,384 streams, position scores included (H200, bf16 ring,
# 32-slot key tiles; 16: 2.39, 8: 2.70; two warps: 2.97). tl.dot pads the queries to 16 rows, and the tensor-core
# kernel's padded tiles took 216 registers a thread: two programs an SM, a quarter of the memory bandwidth (ncu).
# Measured no faster (docs/PERFORMANCE.md): that kernel reading the ring in storage order (2.41), and a CUDA-core
# kernel holding a (stream, head)'s whole ring in registers (2.20; 168-255 registers). The ring's rest is a smaller
# masked tile (70 slots: 32 + 32 + 8 rows of products rather than 3 x 32 = 96) and the position scores are padded:
# 1.105 ms a layer with both (not measured apart).
MAX_WARP_KERNEL_T = 2
WARP_KEY_TILE = 32
WARP_WARPS = 1
# Not every head of a stream in one block-diagonal tile: measured 1.08 vs 0.71 ms at 4,096 streams, 3.81 vs 2.26 at
# 16,384 (bf16 ring, H200; docs/PERFORMANCE.md): the 8x less softmax padding did not pay for the larger tiles' products.


def heads_per_program(n_heads: int) -> int:
    return max(g for g in range(1, MAX_HEADS_PER_PROGRAM + 1) if n_heads % g == 0)


def _pow2(n: int, floor: int = MIN_DOT) -> int:
    return max(floor, 1 << (max(n, 1) - 1).bit_length())


def position_scores(q, pos, bias_v, pad: int | None = None) -> torch.Tensor:
    """(q + v) . P for every stream, query, head and distance: (H, B, T, R') fp32 with R' >= R the distances padded
    to a multiple of ``pad`` (columns past R are zero and never read), one batched product in q's dtype (rounded
    as the reference rounds it). (In fp32, with three conversion passes around it, it took 0.33 ms a layer at
    16,384 streams on an H200, a quarter of the attention; unpadded in bf16 0.29.)"""
    b, t, h, d = q.shape
    pad = POSITION_PAD if pad is None else pad
    r = pos.shape[1]
    pos = F.pad(pos.to(q.dtype), (0, 0, 0, -r % pad))  # rows of 2 * R bytes (R = 73: 146) defeat aligned GEMM tiles
    qv = (q + bias_v.to(q.dtype)).reshape(b * t, h, d).transpose(0, 1)  # (H, B*T, D), heads strided
    g = torch.matmul(qv, pos.transpose(1, 2))
    # fp32 (H, B, T, R') for the kernels: read as bf16 the warp kernel took 2.26 instead of 1.0 ms (16,384 streams)
    return g.to(torch.float32, memory_format=torch.contiguous_format).view(h, b, t, -1)


def launch(q, k, v, ring_k, ring_v, frames, valid, pos, bias_u, bias_v, left: int, scale: float, out, rows=None, **config) -> None:
    """Run the kernel into ``out``: the one-warp kernel for chunks of one or two frames (``WARP_KERNEL``), else the
    tensor-core one; ``config`` (HEADS, STAGES, num_warps, MAIN, PRE_POS; KT for the warp kernel) overrides the
    measured launch (bench)."""
    if config.pop("WARP_KERNEL", q.shape[1] <= MAX_WARP_KERNEL_T):
        return launch_warp(q, k, v, ring_k, ring_v, frames, valid, pos, bias_u, bias_v, left, scale, out, rows, **config)
    b, t, h, d = q.shape
    main = MAIN_TILE if q.element_size() < 4 else FP32_MAIN_TILE
    config = {"HEADS": heads_per_program(h), "STAGES": PIPELINE_STAGES, "num_warps": NUM_WARPS, "MAIN": main,
              "PRE_POS": PRECOMPUTED_POSITIONS, **config}
    n_main = left // config["MAIN"]
    g = position_scores(q, pos, bias_v) if config["PRE_POS"] else out
    g_strides = (g.stride(1), g.stride(2), g.stride(0)) if config["PRE_POS"] else (0, 0, 0)  # (b, t, h)
    _compile()[(b, h // config["HEADS"])](
        q, k, v, ring_k, ring_v, frames, valid, pos, bias_u, bias_v, out, frames if rows is None else rows, g,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        ring_k.stride(0), ring_k.stride(1), ring_k.stride(2), out.stride(0), out.stride(1), out.stride(2),
        pos.stride(0), pos.stride(1), *g_strides, t, left, ring_k.shape[2], pos.shape[1], scale, h,
        BLOCK_T=_pow2(t), BLOCK_R=_pow2(pos.shape[1]), D=d, IEEE=q.dtype == torch.float32, N_MAIN=n_main,
        BLOCK_TAIL=_pow2(left - n_main * config["MAIN"] + t), HAS_ROWS=rows is not None, **config)


def launch_warp(q, k, v, ring_k, ring_v, frames, valid, pos, bias_u, bias_v, left: int, scale: float, out, rows=None, **config) -> None:
    """The one-warp-per-(stream, head) kernel (``relpos_warp_kernel``, chunks of 1-2 frames) into ``out``."""
    b, t, h, d = q.shape
    assert t <= 2, "the warp kernel takes chunks of one or two frames"
    cap = ring_k.shape[2]
    kt = config.pop("KT", WARP_KEY_TILE)
    config = {"num_warps": WARP_WARPS, **config}
    for unused in ("PRE_POS", "MAIN", "HEADS", "STAGES"):
        config.pop(unused, None)
    g = position_scores(q, pos, bias_v)
    _compile_warp()[(b, h)](
        q, k, v, ring_k, ring_v, frames, valid, bias_u, out, frames if rows is None else rows, g,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        ring_k.stride(0), ring_k.stride(1), ring_k.stride(2), out.stride(0), out.stride(1), out.stride(2),
        g.stride(1), g.stride(2), g.stride(0), left, cap, scale,
        T=t, BLOCK_C=2, KT=kt, N_FULL=cap // kt, TAIL=_pow2(cap % kt, 2) if cap % kt else 0, D=d,
        HAS_ROWS=rows is not None, **config)


@register(NAME, "triton")
def relpos_attention_triton(q, k, v, ring_k, ring_v, frames, valid, pos, bias_u, bias_v, left: int, scale: float, rows=None) -> torch.Tensor:
    b, t, h, d = q.shape
    if d < MIN_DOT or d & (d - 1) or q.stride(3) != 1 or k.stride(3) != 1 or ring_k.stride() != ring_v.stride() or k.stride() != v.stride():
        return relpos_attention_torch(q, k, v, ring_k, ring_v, frames, valid, pos, bias_u, bias_v, left, scale, rows)
    pos, bias_u, bias_v = pos.contiguous(), bias_u.contiguous(), bias_v.contiguous()
    out = torch.empty(b, t, h, d, device=q.device, dtype=q.dtype)
    launch(q, k, v, ring_k, ring_v, frames, valid, pos, bias_u, bias_v, left, scale, out, rows)
    return out
