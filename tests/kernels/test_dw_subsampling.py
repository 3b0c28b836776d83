"""dw_striding subsampling streamed through the steady-step kernel (``legato.kernels.dw_subsampling``).

CPU: the step (steady steps through the kernel's reference, channels-last caches) equals the step as it was before
(NCHW caches padded on frequency, one code path) and the offline ``forward``, over several chunk sequences.
CUDA: the Triton implementation equals the reference, outputs and caches, over several steps (skipped without it).
"""

import pytest
import torch
import torch.nn.functional as F

from legato.asr.fastconformer.config import FastConformerConfig, Lookahead
from legato.asr.fastconformer.subsampling import CONTEXT_FRAMES, PAD_AFTER, PAD_BEFORE, DwStridingSubsampling, _time_mask, emitted
from legato.kernels import dispatch
from legato.kernels.dw_subsampling import NAME, dw_subsampling_torch

TOL = 1e-5  # fp32, same ops in a different order


def _model(factor: int, channels: int, feat_in: int = 80, d_model: int = 32, seed: int = 0) -> DwStridingSubsampling:
    torch.manual_seed(seed)
    cfg = FastConformerConfig(feat_in=feat_in, n_layers=1, d_model=d_model, n_heads=4, subsampling_factor=factor,
                              subsampling_conv_channels=channels, lookaheads=(Lookahead(8, 1),))
    sub = DwStridingSubsampling(cfg).eval()
    for p in sub.parameters():  # biases too, so that ReLU and the zero padding are both exercised
        torch.nn.init.normal_(p, 0, 0.3)
    return sub


def _old_step(sub, mel, contexts, seen, valid, first, final):
    """The step before the kernel: caches (B, C_in, 2, F_in + 3), NCHW, padded on frequency."""
    x, done_in, new_in = mel[:, None], seen, valid
    masked = final is not None
    final = False if final is None else final
    for mods, context in zip(sub._stage_modules(), contexts):
        if masked:
            x = _time_mask(x, new_in)
        full = torch.cat([context, F.pad(x, (PAD_BEFORE, PAD_AFTER))], dim=2)
        context.copy_(full[:, :, -CONTEXT_FRAMES:])
        x = mods[0](full[:, :, 0 if first else 1:])
        done_out = emitted(done_in, final=False)
        new_out = emitted(done_in + new_in, final) - done_out
        for m in mods[1:]:
            x = m(_time_mask(x, new_out) if masked else x)
        done_in, new_in = done_out, new_out
    if masked:
        x = _time_mask(x, new_in)
    return sub._flatten(x), new_in


def _old_contexts(sub, b):
    return [torch.zeros(b, s[3], s[1], s[2] + PAD_BEFORE + PAD_AFTER) for s in sub.context_shapes(b)]


def _stream(sub, mel, lengths, right, step_fn, contexts):
    """Feed (B, T, F) in the encoder's chunks (first 1 + factor R, then factor (R + 1)); the last is final."""
    factor = 2 ** sub.stages
    b, total, _ = mel.shape
    seen = torch.zeros(b, dtype=torch.long)
    outs, counts, first = [], [], True
    while int(seen.max()) < int(lengths.max()):
        width = 1 + factor * right if first else factor * (right + 1)
        start = int(seen[0])
        chunk = F.pad(mel[:, start:start + width], (0, 0, 0, max(0, start + width - total)))
        valid = (lengths - seen).clamp(0, width)
        final = lengths - seen <= width
        assert bool(final.all()) or not bool(final.any()), "rows must end in the same step"
        y, n = step_fn(chunk, contexts, seen, valid, first, final if bool(final.any()) else None)
        outs.append(y)
        counts.append(n)
        seen = seen + valid
        first = False
    return torch.cat(outs, 1), torch.stack(counts).sum(0)


@pytest.mark.parametrize("factor,channels,right,lengths", [
    (8, 16, 1, [153, 140]), (8, 16, 0, [97, 92]), (8, 12, 3, [203, 190]), (4, 8, 1, [77, 72]), (2, 8, 2, [41, 37]),
])  # the rows of a case end in the same step (the first ends on a step boundary)
@torch.inference_mode()
def test_step_equals_the_old_step_and_offline(factor, channels, right, lengths):
    sub = _model(factor, channels)
    lengths = torch.tensor(lengths)
    mel = torch.randn(2, int(lengths.max()), 80)
    mel = mel * (torch.arange(mel.shape[1])[None, :, None] < lengths[:, None, None])
    new, new_n = _stream(sub, mel, lengths, right, sub.step, [torch.zeros(s) for s in sub.context_shapes(2)])
    old, old_n = _stream(sub, mel, lengths, right, lambda *a: _old_step(sub, *a), _old_contexts(sub, 2))
    offline, offline_n = sub(mel, lengths)
    assert new_n.tolist() == old_n.tolist() == offline_n.tolist()
    torch.testing.assert_close(new, old, atol=TOL, rtol=TOL)
    for b, n in enumerate(offline_n.tolist()):
        torch.testing.assert_close(new[b, :n], offline[b, :n], atol=TOL, rtol=TOL)


@torch.inference_mode()
def test_steady_steps_keep_the_old_caches():
    sub = _model(8, 16)
    b, width = 3, 16
    new_ctx = [torch.zeros(s) for s in sub.context_shapes(b)]
    old_ctx = _old_contexts(sub, b)
    seen = torch.zeros(b, dtype=torch.long)
    for k in range(4):
        mel = torch.randn(b, 9 if k == 0 else width, 80)
        valid = torch.full((b,), mel.shape[1])
        y, n = sub.step(mel, new_ctx, seen, valid, k == 0, None)
        y_old, n_old = _old_step(sub, mel, old_ctx, seen, valid, k == 0, None)
        seen = seen + valid
        torch.testing.assert_close(y, y_old, atol=TOL, rtol=TOL)
        assert n.tolist() == n_old.tolist()
        for c, c_old in zip(new_ctx, old_ctx):  # the same frames, channels-last and without the zero padding
            torch.testing.assert_close(c, c_old[..., PAD_BEFORE:-PAD_AFTER].permute(0, 2, 3, 1), atol=TOL, rtol=TOL)


def _kernel_case(b, feat_in, channels, stages, d_model, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to("cuda", dtype)  # noqa: E731
    first = (mk(channels, 1, 3, 3, scale=0.3), mk(channels, scale=0.1))
    later = tuple((mk(channels, 1, 3, 3, scale=0.3), mk(channels, scale=0.1), mk(channels, channels, 1, 1, scale=channels ** -0.5),
                   mk(channels, scale=0.1)) for _ in range(stages - 1))
    freq, ch_in, contexts = feat_in, 1, []
    for _ in range(stages):
        contexts.append(torch.zeros(b, CONTEXT_FRAMES, freq, ch_in, device="cuda", dtype=dtype))
        freq, ch_in = freq // 2 + 1, channels
    out = (mk(d_model, channels * freq, scale=(channels * freq) ** -0.5), mk(d_model, scale=0.1))
    return first, later, out, contexts, mk


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("b,feat_in,channels,stages,d_model,chunk", [
    (64, 80, 256, 3, 512, 16),  # FastConformer-L, 160 ms steps
    (5, 13, 12, 3, 16, 8),  # tiny, odd bins, a partial channel block
    (3, 9, 5, 2, 7, 8),  # factor 4
])
@torch.inference_mode()
def test_triton_matches_the_reference(dtype, tol, b, feat_in, channels, stages, d_model, chunk):
    backend, fn = dispatch.get(NAME, "cuda")
    assert backend == "triton"
    first, later, out, contexts, mk = _kernel_case(b, feat_in, channels, stages, d_model, dtype)
    ref_contexts = [c.clone() for c in contexts]
    for step in range(4):
        mel = mk(b, chunk, feat_in)
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # cuDNN's fp32 convs default to TF32
            ref = dw_subsampling_torch(mel, ref_contexts, first, later, out)
        got = fn(mel, contexts, first, later, out)
        scale = ref.float().abs().max()
        torch.testing.assert_close(got.float() / scale, ref.float() / scale, atol=tol, rtol=tol, msg=f"step {step}")
        for c, c_ref in zip(contexts, ref_contexts):
            c_scale = c_ref.float().abs().max().clamp_min(1.0)
            torch.testing.assert_close(c.float() / c_scale, c_ref.float() / c_scale, atol=tol, rtol=tol, msg=f"step {step} cache")
