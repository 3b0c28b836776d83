"""One fused autoregressive step's tokens, flattened (no padding): decode tokens and prefill chunks side by side.

Row ``r`` brings ``chunks[r]`` new tokens at positions ``starts[r]..`` of KV slot ``slots[r]``. The tokens of all
rows are concatenated, so a 1,500-token prefill chunk next to 500 one-token decodes costs 2,000 tokens of work,
not 500 x 1,500 padded ones. Attention runs per block of one row's consecutive tokens (``kernels/slot_attention``):
one-token blocks (``decode_blocks``) and blocks of up to ``block_tokens`` prompt tokens (``prefill_blocks``) are
launched separately so a decode's query tile stays small.

Everything is built on the host from Python lists and moved in one copy; nothing on the step's path waits for
the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from legato.stream.transfer import to_device


@dataclass(frozen=True)
class PackedBatch:
    tokens: torch.Tensor  # (N,) token ids
    positions: torch.Tensor  # (N,) absolute position of each token in its request
    slots: torch.Tensor  # (N,) KV slot of each token
    last: torch.Tensor  # (B,) index in the flat list of each row's last token (where its next-token logits are)
    decode_blocks: torch.Tensor  # (nd, 2) int32 (first token, 1)
    prefill_blocks: torch.Tensor  # (np, 2) int32 (first token, count <= block_tokens)
    block_tokens: int

    @property
    def size(self) -> int:
        return self.tokens.shape[0]

    @classmethod
    def build(cls, chunks: list[list[int]], starts: list[int], slots: list[int], device, block_tokens: int) -> "PackedBatch":
        tokens, positions, token_slots, last, decode, prefill = [], [], [], [], [], []
        for chunk, start, slot in zip(chunks, starts, slots):
            first = len(tokens)
            if len(chunk) == 1:
                decode.append((first, 1))
            else:
                prefill += [(first + o, min(block_tokens, len(chunk) - o)) for o in range(0, len(chunk), block_tokens)]
            tokens += chunk
            positions += range(start, start + len(chunk))
            token_slots += [slot] * len(chunk)
            last.append(len(tokens) - 1)
        n, nl, nd = len(tokens), len(last), len(decode)
        flat = to_device(tokens + positions + token_slots + last + [x for b in decode + prefill for x in b], torch.long, device)
        blocks = flat[3 * n + nl:].to(torch.int32).view(-1, 2)
        return cls(flat[:n], flat[n:2 * n], flat[2 * n:3 * n], flat[3 * n:3 * n + nl], blocks[:nd], blocks[nd:], block_tokens)

    @classmethod
    def decode(cls, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor) -> "PackedBatch":
        """A decode-only batch over existing (static) tensors, one token per row: what a CUDA graph captures."""
        n = tokens.shape[0]
        ar = torch.arange(n, device=tokens.device)
        blocks = torch.stack([ar, torch.ones_like(ar)], 1).to(torch.int32)
        return cls(tokens, positions, slots, ar, blocks, blocks[:0], 1)
