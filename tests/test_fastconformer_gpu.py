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

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"), pytest.mark.gpu]
NEMO = FIXTURES / "nemo"


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 convolutions would move fp32 logits by ~1e-3: parity wants true fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


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
