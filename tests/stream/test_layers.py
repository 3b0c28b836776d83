"""Cached layers: streaming output equals the offline forward at every split."""

import pytest
import torch

from legato.stream.layers import CachedAttention, CausalConv1d, CausalConv2d, CausalConvTranspose1d
from legato.stream.module import random_splits, run_streaming

SPLITS = [1, 2, 8, "random"]


def _sizes(split, total, seed=0):
    if split == "random":
        return random_splits(total, torch.Generator().manual_seed(seed))
    return split


def _close(a, b, tol=1e-5):
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=9, groups=8),  # depthwise, as the conformer conv module
        dict(kernel_size=3, dilation=3),
        dict(kernel_size=3, stride=2, right_pad=1),  # NeMo CausalConv1D padding
        dict(kernel_size=4, stride=2, left_pad=2),  # moshi padding (kernel - stride)
    ],
)
def test_causal_conv1d_streams_like_offline(split, kwargs):
    torch.manual_seed(0)
    conv = CausalConv1d(8, 8, **kwargs)
    x = torch.randn(3, 8, 50)
    _close(run_streaming(conv, x, _sizes(split, 50)), conv(x))


@pytest.mark.parametrize("split", SPLITS)
def test_causal_conv2d_streams_like_offline(split):
    torch.manual_seed(0)
    conv = CausalConv2d(2, 4, kernel_size=3, stride=2, freq_padding=1, right_pad=1, num_freq=20)
    x = torch.randn(2, 2, 33, 20)  # (B, C, T, F)
    _close(run_streaming(conv, x, _sizes(split, 33, seed=1)), conv(x))


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("kernel,stride", [(16, 8), (4, 2), (3, 1), (2, 2)])
def test_transposed_conv_streams_like_offline(split, kernel, stride):
    torch.manual_seed(0)
    conv = CausalConvTranspose1d(6, 4, kernel, stride)
    x = torch.randn(2, 6, 21)
    _close(run_streaming(conv, x, _sizes(split, 21, seed=2)), conv(x))


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("position", ["none", "rotary", "relative"])
@pytest.mark.parametrize("left_context", [5, 64])
def test_causal_attention_streams_like_offline(split, position, left_context):
    torch.manual_seed(0)
    att = CachedAttention(32, 4, left_context=left_context, causal=True, position=position)
    if position == "relative":
        torch.nn.init.normal_(att.rel_pos.pos_bias_u)
        torch.nn.init.normal_(att.rel_pos.pos_bias_v)
    x = torch.randn(2, 40, 32)
    _close(run_streaming(att, x, _sizes(split, 40, seed=3)), att(x), tol=1e-4)


@pytest.mark.parametrize("position", ["none", "rotary", "relative"])
@pytest.mark.parametrize("chunk", [1, 2, 8])
def test_chunk_lookahead_attention_streams_like_offline(position, chunk):
    torch.manual_seed(0)
    att = CachedAttention(32, 4, left_context=12, causal=False, chunk_size=chunk, position=position)
    x = torch.randn(2, 40, 32)
    _close(run_streaming(att, x, chunk), att(x), tol=1e-4)


def test_attention_rows_at_different_positions_batch_together():
    """Two streams that started at different times share one step and match their own runs."""
    torch.manual_seed(0)
    att = CachedAttention(16, 2, left_context=6, position="rotary")
    a, b = torch.randn(1, 13, 16), torch.randn(1, 9, 16)
    state = att.init_state(2)
    # Advance stream a alone by 4 tokens, then step both together.
    solo = att.init_state(1)
    att.step(a[:, :4], solo)
    state.scatter_(torch.tensor([0]), solo)
    out = []
    for i in range(0, 9, 3):
        out.append(att.step(torch.cat([a[:, 4 + i : 7 + i], b[:, i : i + 3]]), state))
    out = torch.cat(out, dim=1)
    _close(out[0:1], att(a)[:, 4:13], tol=1e-4)
    _close(out[1:2], att(b), tol=1e-4)


def test_strided_conv_rejects_rows_out_of_phase():
    conv = CausalConv1d(2, 2, 3, stride=2)
    state = conv.init_state(2)
    state.skip[0] = 1
    with pytest.raises(ValueError, match="phase"):
        conv.step(torch.randn(2, 2, 4), state)


def test_reset_restarts_only_masked_rows():
    torch.manual_seed(0)
    conv = CausalConv1d(3, 3, 5)
    x = torch.randn(2, 3, 10)
    state = conv.init_state(2)
    conv.step(x, state)
    before = state.context.clone()
    conv.reset(state, torch.tensor([True, False]))
    assert torch.all(state.context[0] == 0)
    assert torch.equal(state.context[1], before[1])
