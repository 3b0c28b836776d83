"""GPU: cached-layer steps are graph-capturable and match eager; pooled steps on CUDA.

Skipped without CUDA (CI has none); run on the device machine.
"""

import pytest
import torch

from legato.stream.cuda_graphs import CapturedStep
from legato.stream.layers import CachedAttention, CausalConv1d
from legato.stream.module import run_streaming
from legato.stream.pool import StatePool

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
pytestmark = [cuda, pytest.mark.gpu]


@pytest.mark.parametrize(
    "make",
    [
        lambda: CachedAttention(64, 4, left_context=16, position="rotary"),
        lambda: CachedAttention(64, 4, left_context=16, position="relative"),
        lambda: CachedAttention(64, 4, left_context=16, causal=False, chunk_size=4, position="relative"),
        lambda: CausalConv1d(64, 64, 9, groups=64),
    ],
)
@torch.inference_mode(False)
def test_step_replays_as_cuda_graph(make):
    torch.manual_seed(0)
    module = make().cuda().eval()
    conv = isinstance(module, CausalConv1d)
    b, chunk, total = 8, 4, 32
    x = torch.randn(b, total, 64, device="cuda")
    xin = x.transpose(1, 2).contiguous() if conv else x
    axis = 2 if conv else 1
    with torch.no_grad():
        eager = run_streaming(module, xin, chunk, flush=False)
        step = CapturedStep(module, module.init_state(b, "cuda"), xin.narrow(axis, 0, chunk))
        outs = [step(xin.narrow(axis, start, chunk)).clone() for start in range(0, total, chunk)]
    torch.testing.assert_close(torch.cat(outs, dim=axis), eager, rtol=1e-4, atol=1e-4)


def test_pooled_streams_on_cuda_match_solo_runs():
    torch.manual_seed(0)
    att = CachedAttention(64, 4, left_context=12, position="relative").cuda()
    pool = StatePool(att, capacity=16)
    xs = [torch.randn(1, 24, 64, device="cuda") for _ in range(3)]
    slots = [pool.acquire() for _ in xs]
    with torch.no_grad():
        outs = [[] for _ in xs]
        for start in range(0, 24, 3):
            active = [i for i in range(3) if not (i == 2 and start < 9)]  # stream 2 joins late
            y = pool.step([slots[i] for i in active], torch.cat([xs[i][:, start - (9 if i == 2 else 0) :][:, :3] for i in active]))
            for j, i in enumerate(active):
                outs[i].append(y[j : j + 1])
        for i in range(2):
            torch.testing.assert_close(torch.cat(outs[i], 1), att(xs[i]), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(torch.cat(outs[2], 1), att(xs[2])[:, :15], rtol=1e-4, atol=1e-4)
