"""FLOPs and bytes of one cache-aware FastConformer streaming step, and the floors they set on one GPU.

Counted from the config (no GPU needed), per stream and step (one chunk of ``right + 1`` encoder frames):
useful FLOPs (every matrix product and convolution, 2 per multiply-add; element-wise work not counted) and the
bytes a step cannot avoid moving: the stream's state read once (attention ring keys/values, depthwise-conv
inputs, subsampling contexts) and what changes written (the chunk's keys/values into the ring, the small caches), its mel in and encoder frames out, plus the weights once per step
(shared by the batch). Floors for B streams: compute = B x FLOPs / peak, memory = (weights + B x bytes) /
bandwidth; capacity = how many streams' state fits in the GPU's memory.

    python3 -P bench/fastconformer_floors.py [--batch 4096] [--bytes 2] [--peak-tflops 989] [--bandwidth-tbs 4.8] [--memory-gb 141]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (scripts run with python -P)
from bench_fastconformer import FULL  # noqa: E402

from legato.asr.fastconformer.subsampling import freq_after  # noqa: E402

LOOKAHEAD = 2  # [70, 1]: 160 ms chunks
MEL_HOP_S = 0.01


def count(cfg, la) -> dict:
    d, ff, h, dh, k = cfg.d_model, cfg.d_model * cfg.ff_expansion_factor, cfg.n_heads, cfg.d_head, cfg.conv_kernel_size
    t, left = la.chunk_frames, la.left
    keys, dists = left + t, left + 2 * t - 1
    per_frame_layer = {
        "feed_forward x2": 2 * 2 * (2 * d * ff),
        "q k v out projections": 4 * 2 * d * d,
        "attention (content, position, values)": 2 * h * dh * (keys + dists + keys),
        "conv pointwise 1 (GLU)": 2 * d * 2 * d,
        "conv depthwise": 2 * d * k,
        "conv pointwise 2": 2 * d * d,
    }
    encoder = sum(per_frame_layer.values()) * t * cfg.n_layers
    # dw_striding subsampling on chunk_mel new frames: per stage, outputs x (3x3 taps) [+ 1x1 pointwise]
    ch, frames, freq, sub = cfg.subsampling_conv_channels, cfg.chunk_mel(la), cfg.feat_in, 0
    for stage in range(cfg.subsampling_stages):
        frames, freq = frames // 2, freq_after(freq, 1)
        if stage == 0:
            sub += 2 * frames * freq * ch * 9
        else:
            sub += 2 * frames * freq * ch * 9 + 2 * frames * freq * ch * ch
    sub += 2 * t * ch * freq_after(cfg.feat_in, cfg.subsampling_stages) * d
    state = {
        "attention ring keys+values": cfg.n_layers * 2 * cfg.max_left * d,
        "conv inputs": cfg.n_layers * d * (k - 1),
        "subsampling contexts": sum(c * 2 * f for c, f in  # channels-last, no stored zero padding
                                    [(1, cfg.feat_in)] + [(ch, freq_after(cfg.feat_in, s)) for s in range(1, cfg.subsampling_stages)]),
    }
    weights = sum(per_frame_layer[x] // 2 for x in per_frame_layer if "attention" not in x) * cfg.n_layers
    return {"per_frame_layer_flops": per_frame_layer, "encoder_flops": encoder, "subsampling_flops": sub, "flops": encoder + sub,
            "state_elements": state, "weight_elements": weights, "chunk_s": t * cfg.subsampling_factor * MEL_HOP_S,
            "io_elements": cfg.chunk_mel(la) * cfg.feat_in + t * d, "new_state_elements": cfg.n_layers * 2 * t * d}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--bytes", type=int, default=2, help="bytes per element (2: bf16)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 tensor-core peak (H200 SXM)")
    ap.add_argument("--bandwidth-tbs", type=float, default=4.8, help="HBM bandwidth (H200: 4.8 TB/s)")
    ap.add_argument("--memory-gb", type=float, default=141.0)
    args = ap.parse_args()
    c = count(FULL, FULL.lookaheads[LOOKAHEAD])
    state = sum(c["state_elements"].values())
    rewritten = c["new_state_elements"] + c["state_elements"]["conv inputs"] + c["state_elements"]["subsampling contexts"]
    stream_bytes = args.bytes * (state + rewritten + c["io_elements"])  # state read, the ring's new frames and small caches written
    weight_bytes = args.bytes * c["weight_elements"]
    b = args.batch
    compute_ms = b * c["flops"] / (args.peak_tflops * 1e12) * 1e3
    memory_ms = (weight_bytes + b * stream_bytes) / (args.bandwidth_tbs * 1e12) * 1e3
    out = {
        **c, "stream_bytes_per_step": stream_bytes, "weight_bytes": weight_bytes, "state_bytes_per_stream": args.bytes * state,
        f"floor_ms_at_{b}": {"compute": compute_ms, "memory": memory_ms},
        "streams_bound": {
            "compute": args.peak_tflops * 1e12 * c["chunk_s"] / c["flops"],
            "memory_bandwidth": args.bandwidth_tbs * 1e12 * c["chunk_s"] / stream_bytes,
            "memory_capacity": args.memory_gb * 1e9 / (args.bytes * state),
        },
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
