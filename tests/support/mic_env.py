"""A real, private virtual microphone for testing ``legato mic``: no mock anywhere.

A PulseAudio server of our own (own socket, runtime and state folders: it never touches a
user's sound server) with one null sink, ``legato_test``. Whatever is played into that sink
(``paplay``) comes out of its monitor, ``legato_test.monitor``, which is the default source.

PortAudio (under ``sounddevice``) is Debian's 19.6 build: ALSA, JACK and OSS host APIs, no
PulseAudio one. So it reaches PulseAudio through ALSA's pulse plugin (libasound2-plugins):
``ALSA_CONFIG_PATH`` names a file that reads the system's alsa.conf and then routes ALSA's
``default`` PCM to PulseAudio's default source, and adds one named, listed PCM,
``legato_virtual_mic``, bound to the monitor explicitly. Only the processes given ``env``
see any of this.
"""

from __future__ import annotations

import ctypes.util
import glob
import importlib.util
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

SINK = "legato_test"
SOURCE = f"{SINK}.monitor"
ALSA_PCM = "legato_virtual_mic"  # what `legato mic --list-devices` shows, and what --device can name
TOOLS = ("pulseaudio", "pactl", "paplay")
ALSA_DIRS = [os.environ.get("ALSA_CONFIG_DIR", ""), "/usr/share/alsa"]
PLUGIN_GLOBS = ["/usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so", "/usr/lib*/alsa-lib/libasound_module_pcm_pulse.so"]

SCRIPT = """\
load-module module-native-protocol-unix auth-anonymous=1 auth-cookie-enabled=0 socket={socket}
load-module module-null-sink sink_name={sink} sink_properties=device.description=legato_test_sink
set-default-sink {sink}
set-default-source {source}
"""

ALSA_CONF = """\
# The system's configuration first, then ours on top (later definitions win).
<{system}>
pcm.!default {{
    type pulse
    hint {{ show on description "PulseAudio default source/sink (legato test server)" }}
}}
ctl.!default {{
    type pulse
}}
pcm.{pcm} {{
    type pulse
    device {source}
    hint {{ show on description "legato test virtual microphone ({source})" }}
}}
"""


def missing() -> str | None:
    """Why the virtual microphone cannot be built here, or None when it can."""
    absent = [t for t in TOOLS if not shutil.which(t)]
    if absent:
        return f"{', '.join(absent)} not installed (Debian: pulseaudio pulseaudio-utils)"
    if not any(glob.glob(g) for g in PLUGIN_GLOBS):
        return "ALSA's PulseAudio plugin (libasound_module_pcm_pulse.so) not installed (Debian: libasound2-plugins)"
    if _system_alsa_conf() is None:
        return "the system alsa.conf was not found"
    # Not imported here: PortAudio's start-up in this process would probe the system's sound
    # server through ALSA (and leave ~/.config/pulse behind); only the children, given env, use it.
    if importlib.util.find_spec("sounddevice") is None:
        return "sounddevice not installed"
    if ctypes.util.find_library("portaudio") is None:
        return "PortAudio not installed (Debian: libportaudio2)"
    return None


def _system_alsa_conf() -> str | None:
    for d in ALSA_DIRS:
        if d and os.path.isfile(os.path.join(d, "alsa.conf")):
            return os.path.join(d, "alsa.conf")
    return None


class VirtualMic:
    """Start with ``start()``, always ``stop()``; run clients with ``env``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.runtime = self.root / "runtime"
        self.socket = self.runtime / "native"
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "pulseaudio.log"
        self.env = dict(os.environ)
        for key in ("PULSE_SINK", "PULSE_SOURCE", "PULSE_PROP", "ALSA_CONFIG_DIR"):
            self.env.pop(key, None)
        self.env.update(
            PULSE_SERVER=f"unix:{self.socket}",
            PULSE_RUNTIME_PATH=str(self.runtime),
            PULSE_STATE_PATH=str(self.root / "state"),
            PULSE_COOKIE=str(self.root / "cookie"),
            ALSA_CONFIG_PATH=str(self.root / "asound.conf"),
        )

    def start(self, timeout: float = 15.0) -> "VirtualMic":
        self.runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.root / "state").mkdir(exist_ok=True, mode=0o700)
        script = self.root / "legato_test.pa"
        script.write_text(SCRIPT.format(socket=self.socket, sink=SINK, source=SOURCE))
        (self.root / "asound.conf").write_text(ALSA_CONF.format(system=_system_alsa_conf(), pcm=ALSA_PCM, source=SOURCE))
        # As root PulseAudio only warns ("not intended to be run as root"); in the foreground
        # (--daemonize=no) it is our child, so we hold its pid and stop it ourselves.
        cmd = ["pulseaudio", "-n", "-F", str(script), "--daemonize=no", "--use-pid-file=no", "--exit-idle-time=-1",
               "--disallow-exit", "--disallow-module-loading", "--disable-shm=yes", "--log-target=stderr", "--log-level=warning"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pulseaudio exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            info = self.pactl("info", check=False)
            if info.returncode == 0 and f"Default Source: {SOURCE}" in info.stdout:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"pulseaudio did not come up in {timeout} s: {self.log.read_text()[-2000:]}")

    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True, timeout=10, check=check)

    def recording_streams(self) -> list[str]:
        """The capture streams open on our server (one per `legato mic` that has opened its device)."""
        out = self.pactl("list", "short", "source-outputs", check=False).stdout
        return [line for line in out.splitlines() if line.strip()]

    def play_command(self, clip: Path) -> list[str]:
        return ["paplay", f"--device={SINK}", str(clip)]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
