"""``legato info``: what this machine offers legato (versions, devices, kernels)."""

from __future__ import annotations

import argparse
import platform


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="show versions, compute devices and audio devices",
        description="Print the versions legato runs with, the compute devices torch sees, "
        "which fused-kernel backends are usable, and the audio devices sounddevice finds.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy
    import torch

    from legato import __version__
    from legato.kernels import dispatch

    print(f"legato    {__version__}")
    print(f"python    {platform.python_version()} ({platform.machine()})")
    print(f"torch     {torch.__version__}")
    print(f"numpy     {numpy.__version__}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"cuda:{i}    {torch.cuda.get_device_name(i)}")
    else:
        print("cuda      not available (CPU only)")
    print(f"kernels   {', '.join(dispatch.available_backends())}")
    try:
        import sounddevice

        devices = sounddevice.query_devices()
        print(f"audio     {len(devices)} device(s)")
    except Exception as exc:  # PortAudio missing or no devices: informative, not fatal
        print(f"audio     unavailable ({exc.__class__.__name__}: {exc})")
    return 0
