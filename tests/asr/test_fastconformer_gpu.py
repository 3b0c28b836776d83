"""GPU: the NeMo parity .nemo models on CUDA give NeMo's tokens, offline and streamed through the engine stage.

Skipped without CUDA (CI has none); run on the device machine.
"""

import numpy as np
import pytest
import torch

from legato.asr.fastconformer.chunking import stream_steps
from legato.asr.fastconformer.recognizer import FastConformerRecognizer
from legato.asr.frontends.nemo_mel import NemoMel

from conftest import FIXTURES

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"), pytest.mark.gpu,
              pytest.mark.usefixtures("exact_fp32")]  # true fp32 on both sides
NEMO = FIXTURES / "nemo"


@pytest.mark.parametrize("name,tags", [("rnnt", ["L16R3", "L16R0"]), ("hybrid", ["L16R3", "L16R1", "L16R0"])])
def test_cuda_tokens_match_nemo(name, tags):
    z = np.load(NEMO / "models_tiny.npz")
    rec = FastConformerRecognizer.from_nemo(NEMO / f"{name}_tiny.nemo", device="cuda")
    model = rec.model
    wave, wave_len = torch.from_numpy(z["wave"]).cuda(), torch.from_numpy(z["wave_len"]).cuda()
    fe = NemoMel(model.cfg.mel).cuda()
    with torch.inference_mode():
        mel, mel_len = fe(wave, wave_len), fe.valid_frames(wave_len)
    for lookahead, tag in enumerate(tags):
        with torch.inference_mode():
            enc, enc_len = model.encoder(mel, mel_len, lookahead)
        ref = torch.from_numpy(z[f"{name}/{tag}/enc"]).transpose(1, 2).cuda()
        n = int(enc_len.min())
        assert float((enc[:, :n] - ref[:, :n]).abs().max()) < 1e-4 * float(ref.abs().max())
        for dec in model.cfg.heads.decoders:
            greedy = model.greedy_decoder(dec)
            state = greedy.init_state(2, "cuda")
            ids = [[], []]
            with torch.inference_mode():
                for rows, y, v in stream_steps(model.encoder, mel, mel_len, lookahead):
                    sel = torch.tensor(rows, device="cuda")
                    work = state.gather(sel)
                    new, _ = greedy.decode(y, v, work)
                    state.scatter_(sel, work)
                    for j, i in enumerate(rows):
                        ids[i] += new[j]
            for b in range(2):
                assert ids[b] == z[f"{name}/{tag}/{dec}/offline_ids{b}"].tolist(), (tag, dec, b)


def test_encoder_step_replayed_from_a_cuda_graph_equals_eager():
    """The fused ring attention and the whole encoder step capture in a CUDA graph; replays update the state in
    place exactly as eager steps do (bf16 and fp32)."""
    from legato.asr.fastconformer.config import FastConformerConfig, Lookahead
    from legato.asr.fastconformer.encoder import FastConformerEncoder
    from legato.stream.cuda_graphs import CapturedStep

    cfg = FastConformerConfig(feat_in=80, n_layers=3, d_model=128, n_heads=4, subsampling_factor=8, subsampling_conv_channels=32,
                              ff_expansion_factor=4, conv_kernel_size=9, conv_norm_type="layer_norm", xscaling=True,
                              lookaheads=(Lookahead(14, 1),))
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        enc = FastConformerEncoder(cfg).cuda().eval().to(dtype)

        class Step(torch.nn.Module):
            def step(self, x, state):
                return enc.stream_step(x, state, lookahead=0, first=False)[0]

        with torch.inference_mode():
            eager, graphed = enc.init_state(3, "cuda"), enc.init_state(3, "cuda")
            first = torch.randn(3, cfg.first_chunk_mel(cfg.lookaheads[0]), 80, device="cuda", dtype=dtype)
            for s in (eager, graphed):
                enc.stream_step(first, s, lookahead=0, first=True)
            mels = [torch.randn(3, cfg.chunk_mel(cfg.lookaheads[0]), 80, device="cuda", dtype=dtype) for _ in range(12)]
            cap = CapturedStep(Step(), graphed, mels[0])
            for mel in mels:  # 12 chunks of 2 frames: the 14-frame ring wraps
                want = enc.stream_step(mel, eager, lookahead=0, first=False)[0]
                torch.testing.assert_close(cap(mel), want, atol=0, rtol=0)
            torch.testing.assert_close(graphed.layers[-1].keys, eager.layers[-1].keys, atol=0, rtol=0)
