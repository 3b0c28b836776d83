"""Causal convolutions with a left-context cache, and a transposed conv with an overlap tail.

Offline, a causal conv pads ``left_pad`` zeros before the sequence (and
``right_pad`` zeros after it) and convolves. Output ``j`` then reads the
window of input samples ending at ``j * stride + left_pad_gap`` where
``left_pad_gap = effective_kernel - 1 - left_pad``. Streaming keeps the last
``effective_kernel - 1`` inputs (zeros at start: exactly the left padding) and
a ``skip`` count: how many more input samples arrive before the next output's
window ends. ``flush`` feeds ``right_pad`` zeros, as the offline padding does.

With ``left_pad = kernel - 1`` and ``right_pad = stride - 1`` this is NeMo's
``CausalConv1D``/``CausalConv2D`` padding; with ``left_pad = kernel - stride``
it is the moshi convention. Time is axis 2 for both 1-D (B, C, T) and 2-D
(B, C, T, F) layouts.

Rows of one batch must be at the same ``skip`` phase when ``stride > 1``
(``batch_key``): true whenever streams are fed chunks that are multiples of the
stride; the engine groups streams by it otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from legato.stream.module import StreamingModule
from legato.stream.state import StreamState

TIME_AXIS = 2


@dataclass(frozen=True, eq=False)
class ConvState(StreamState):
    context: torch.Tensor  # (B, C_in, effective_kernel - 1[, F]) last inputs seen
    skip: torch.Tensor  # (B,) int64 samples to come before the next output window ends


class _TimeCachedConv(StreamingModule):
    time_axis = TIME_AXIS
    conv: nn.Module

    def _setup(self, kernel_t: int, stride_t: int, dilation_t: int, left_pad: int | None, right_pad: int) -> None:
        self.effective_kernel = (kernel_t - 1) * dilation_t + 1
        self.stride = stride_t
        self.left_pad = self.effective_kernel - 1 if left_pad is None else left_pad
        if not 0 <= self.left_pad <= self.effective_kernel - 1:
            raise ValueError(f"left_pad must lie in [0, {self.effective_kernel - 1}], got {self.left_pad}")
        self.right_pad = right_pad
        # Input samples before output 0's window ends (0 when fully left padded).
        self.first_skip = self.effective_kernel - 1 - self.left_pad

    def _context_shape(self, batch_size: int) -> tuple[int, ...]:
        raise NotImplementedError

    def _empty_output(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> ConvState:
        device = device or self.param_device()
        dtype = self.conv.weight.dtype
        return ConvState(
            context=torch.zeros(self._context_shape(batch_size), device=device, dtype=dtype),
            skip=torch.full((batch_size,), self.first_skip, device=device, dtype=torch.long),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = [0, 0] * (x.dim() - 3) + [self.left_pad, self.right_pad]
        return self.conv(F.pad(x, pad))

    def batch_key(self, state: ConvState, row: int) -> int | None:
        if self.stride == 1 and self.first_skip == 0:
            return None
        return int(state.skip[row])

    def _skip(self, state: ConvState) -> int:
        if self.stride == 1 and self.first_skip == 0:
            return 0  # always aligned; avoid a device sync
        skip = state.skip
        first = int(skip[0])
        if skip.numel() > 1 and bool((skip != first).any()):
            raise ValueError("strided causal conv: batch rows are at different phases; feed stride-multiple chunks")
        return first

    def step(self, x: torch.Tensor, state: ConvState) -> torch.Tensor:
        steps = x.shape[TIME_AXIS]
        if steps == 0:
            return self._empty_output(x)
        kept = self.effective_kernel - 1
        full = torch.cat([state.context, x], dim=TIME_AXIS)
        skip = self._skip(state)
        if skip >= steps:
            y = self._empty_output(x)
            new_skip = skip - steps
        else:
            y = self.conv(full.narrow(TIME_AXIS, skip, full.shape[TIME_AXIS] - skip))
            new_skip = skip + y.shape[TIME_AXIS] * self.stride - steps
        if kept:
            state.context.copy_(full.narrow(TIME_AXIS, full.shape[TIME_AXIS] - kept, kept))
        if not (self.stride == 1 and self.first_skip == 0):
            state.skip.fill_(new_skip)
        return y

    def flush(self, state: ConvState) -> torch.Tensor | None:
        if self.right_pad == 0:
            return None
        shape = list(state.context.shape)
        shape[TIME_AXIS] = self.right_pad
        return self.step(torch.zeros(shape, device=state.context.device, dtype=state.context.dtype), state)


class CausalConv1d(_TimeCachedConv):
    """Conv1d over (B, C, T), causal in time; ``groups=C`` makes it depthwise."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        left_pad: int | None = None,
        right_pad: int = 0,
    ):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias)
        self._setup(kernel_size, stride, dilation, left_pad, right_pad)

    def _context_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, self.conv.in_channels, self.effective_kernel - 1)

    def _empty_output(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros((x.shape[0], self.conv.out_channels, 0))


class CausalConv2d(_TimeCachedConv):
    """Conv2d over (B, C, T, F): causal in time (axis 2), ordinary zero padding in frequency."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        freq_padding: int = 0,
        groups: int = 1,
        bias: bool = True,
        left_pad: int | None = None,
        right_pad: int = 0,
        num_freq: int | None = None,
    ):
        super().__init__()
        kt, kf = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        st, sf = (stride, stride) if isinstance(stride, int) else stride
        self.conv = nn.Conv2d(in_channels, out_channels, (kt, kf), (st, sf), (0, freq_padding), groups=groups, bias=bias)
        self.num_freq = num_freq
        self.freq_padding = freq_padding
        self._setup(kt, st, 1, left_pad, right_pad)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> ConvState:
        if self.num_freq is None:
            raise ValueError("CausalConv2d needs num_freq (input frequency bins) to size its cache")
        return super().init_state(batch_size, device)

    def _context_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, self.conv.in_channels, self.effective_kernel - 1, self.num_freq)

    def _empty_output(self, x: torch.Tensor) -> torch.Tensor:
        kf, sf = self.conv.kernel_size[1], self.conv.stride[1]
        f_out = (x.shape[3] + 2 * self.freq_padding - kf) // sf + 1
        return x.new_zeros((x.shape[0], self.conv.out_channels, 0, f_out))


@dataclass(frozen=True, eq=False)
class TransposedConvState(StreamState):
    tail: torch.Tensor  # (B, C_out, kernel - stride) overlap not yet complete


class CausalConvTranspose1d(StreamingModule):
    """ConvTranspose1d over (B, C, T) streamed with an overlap-add tail.

    Input frame ``i`` writes output samples ``[i*stride, i*stride + kernel)``.
    A step emits the ``T * stride`` samples no later frame can touch and keeps
    the ``kernel - stride`` overlapping samples as ``tail``. ``forward`` is the
    full transposed conv (length ``(N - 1) * stride + kernel``); streaming plus
    ``flush`` reproduces it. Models that trim (causal or centred) trim the result.
    """

    time_axis = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1, bias: bool = True):
        super().__init__()
        if kernel_size < stride:
            raise ValueError(f"kernel_size ({kernel_size}) must be >= stride ({stride})")
        self.conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride, groups=groups, bias=bias)
        self.stride = stride
        self.overlap = kernel_size - stride

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> TransposedConvState:
        device = device or self.param_device()
        w = self.conv.weight
        return TransposedConvState(tail=torch.zeros(batch_size, self.conv.out_channels, self.overlap, device=device, dtype=w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def _bias(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.conv.bias is None else y + self.conv.bias.view(1, -1, 1)

    def step(self, x: torch.Tensor, state: TransposedConvState) -> torch.Tensor:
        steps = x.shape[2]
        if steps == 0:
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0)
        # Bias is added once per emitted sample, never to the tail twice.
        y = F.conv_transpose1d(x, self.conv.weight, None, self.stride, groups=self.conv.groups)
        if self.overlap:
            y[:, :, : self.overlap] += state.tail
            state.tail.copy_(y[:, :, steps * self.stride :])
        return self._bias(y[:, :, : steps * self.stride])

    def flush(self, state: TransposedConvState) -> torch.Tensor:
        out = self._bias(state.tail.clone())
        state.tail.zero_()
        return out
