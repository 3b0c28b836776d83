"use strict";
// Browser client of the live-transcription protocol (docs/PROTOCOL.md) and of the speech API (docs/HTTP.md).
// Microphone -> AudioWorklet (capture-worklet.js) -> ~100 ms batches of s16le -> WebSocket on this host;
// server `partial` / `final` / `error` / `end` messages -> the page. Server text only ever goes through textContent.
// The model list comes from GET /v1/models; "Speak" plays POST /v1/audio/speech (24 kHz PCM) as it arrives.

const BATCH_SECONDS = 0.1; // audio per binary message
const MAX_PENDING_SECONDS = 10; // audio kept while the socket is still connecting; older audio is dropped

const ui = {
  toggle: document.getElementById("toggle"),
  status: document.getElementById("status"),
  transcript: document.getElementById("transcript"),
  partial: document.getElementById("partial"),
  token: document.getElementById("token"),
  model: document.getElementById("model"),
  level: document.getElementById("level"),
  latency: document.getElementById("latency"),
  speak: document.getElementById("speak"),
  sayText: document.getElementById("say-text"),
  say: document.getElementById("say"),
  voice: document.getElementById("voice"),
  sayStatus: document.getElementById("say-status"),
};

function authHeaders() {
  return ui.token && ui.token.value ? { Authorization: `Bearer ${ui.token.value}` } : {};
}

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

function setButton(mode) {
  ui.toggle.textContent = mode === "start" ? "Start" : "Stop";
  ui.toggle.classList.toggle("recording", mode !== "start");
  ui.toggle.disabled = mode === "finishing";
}

// A final as its own span; its latency (how long after its audio ended it arrived) is drawn by CSS from
// data-latency, so the transcript's text stays the words alone.
function appendFinal(text, latencyS) {
  const words = (text || "").trim();
  if (!words) return;
  if (ui.transcript.childNodes.length) ui.transcript.appendChild(document.createTextNode(" "));
  const span = document.createElement("span");
  span.className = "final";
  span.textContent = words;
  if (Number.isFinite(latencyS)) span.dataset.latency = `${Math.max(0, latencyS).toFixed(2)} s`;
  ui.transcript.appendChild(span);
}

const latencies = [];
function noteLatency(seconds) {
  if (!Number.isFinite(seconds)) return;
  latencies.push(Math.max(0, seconds));
  const sorted = [...latencies].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  ui.latency.textContent = `utterance latency: last ${latencies[latencies.length - 1].toFixed(2)} s, median ${median.toFixed(2)} s`;
}

// Input level: the loudest sample since the last frame, in dB from -60 to 0, decaying between frames.
let level = 0;
let shown = 0;
function drawLevel() {
  const db = level > 0 ? 20 * Math.log10(level) : -60;
  const target = Math.max(0, Math.min(100, ((db + 60) / 60) * 100));
  shown = Math.max(target, shown * 0.85);
  ui.level.style.width = `${shown.toFixed(1)}%`;
  ui.level.parentElement.setAttribute("aria-valuenow", String(Math.round(shown)));
  level = 0;
  requestAnimationFrame(drawLevel);
}
requestAnimationFrame(drawLevel);

// Float32 in [-1, 1] -> little-endian signed 16-bit PCM.
function toS16le(samples) {
  const out = new DataView(new ArrayBuffer(samples.length * 2));
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out.setInt16(i * 2, Math.round(s < 0 ? s * 0x8000 : s * 0x7fff), true);
  }
  return out.buffer;
}

function describe(err) {
  switch (err && err.name) {
    case "NotAllowedError": return "microphone permission denied";
    case "NotFoundError": return "no microphone found";
    case "NotReadableError": return "the microphone is in use or unavailable";
    default: return (err && err.message) || String(err);
  }
}

// One recording: microphone capture plus one WebSocket stream. Never reused.
class Session {
  constructor(onDone) {
    this.onDone = onDone;
    this.ws = null;
    this.ctx = null;
    this.stream = null;
    this.source = null;
    this.node = null;
    this.chunks = []; // captured Float32Arrays not yet sent
    this.pending = 0; // samples in this.chunks
    this.batch = 0; // samples per binary message
    this.capturing = false; // captured audio is kept (false once Stop is pressed)
    this.started = false; // the start message was sent
    this.stopping = false; // Stop was pressed: flush, send end, wait for the server's end
    this.finished = false;
  }

  async start() {
    setStatus("connecting", "connecting…");
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.AudioWorkletNode) {
      throw new Error("microphone capture needs a secure page (https:// or localhost) and a current browser");
    }
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    if (this.stopping || this.finished) return this.finish("idle", "stopped");
    this.ctx = new AudioContext();
    await this.ctx.audioWorklet.addModule("capture-worklet.js");
    if (this.stopping || this.finished) return this.finish("idle", "stopped");

    this.source = this.ctx.createMediaStreamSource(this.stream);
    // channelCount 1 + "explicit": Web Audio down-mixes a stereo device to mono before the worklet sees it.
    this.node = new AudioWorkletNode(this.ctx, "capture", {
      numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
      channelCount: 1, channelCountMode: "explicit", channelInterpretation: "speakers",
    });
    this.node.port.onmessage = (event) => this.onAudio(event.data);
    this.source.connect(this.node);
    this.node.connect(this.ctx.destination); // it outputs silence; being connected keeps it rendering
    await this.ctx.resume();
    if (this.stopping || this.finished) return this.finish("idle", "stopped");
    this.batch = Math.max(1, Math.round(this.ctx.sampleRate * BATCH_SECONDS));
    this.capturing = true;
    this.t0 = performance.now(); // stream second 0: the first captured sample
    this.connect();
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/`);
    this.ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      const start = {
        type: "start", sample_rate: Math.round(this.ctx.sampleRate), encoding: "s16le", channels: 1, interim_results: true,
      };
      // Browsers cannot put an Authorization header on a WebSocket: the token rides in the start message.
      if (ui.token && ui.token.value) start.token = ui.token.value;
      if (ui.model.value) start.model = ui.model.value;
      ws.send(JSON.stringify(start));
      this.started = true;
      if (this.stopping) this.sendEnd();
      else this.flush(false);
    };
    ws.onmessage = (event) => this.onMessage(event.data);
    ws.onclose = (event) => this.onClose(event);
    // onerror carries no detail; the close event that always follows reports the failure.
  }

  onAudio(samples) {
    if (!this.capturing) return; // frames still in flight after Stop must not follow the end message
    for (let i = 0; i < samples.length; i++) level = Math.max(level, Math.abs(samples[i]));
    this.chunks.push(samples);
    this.pending += samples.length;
    this.flush(false);
  }

  // Send whole batches (and, when `all`, the remainder); keep audio while the stream is not started yet.
  flush(all) {
    if (!this.started || this.ws.readyState !== WebSocket.OPEN) {
      const limit = MAX_PENDING_SECONDS * this.ctx.sampleRate;
      while (this.pending > limit) this.pending -= this.chunks.shift().length;
      return;
    }
    while (this.pending >= this.batch || (all && this.pending > 0)) {
      this.ws.send(toS16le(this.take(Math.min(this.batch, this.pending))));
    }
  }

  take(n) {
    const out = new Float32Array(n);
    let filled = 0;
    while (filled < n) {
      const head = this.chunks[0];
      const k = Math.min(n - filled, head.length);
      out.set(head.subarray(0, k), filled);
      filled += k;
      if (k === head.length) this.chunks.shift();
      else this.chunks[0] = head.subarray(k);
    }
    this.pending -= n;
    return out;
  }

  sendEnd() {
    this.flush(true);
    this.ws.send(JSON.stringify({ type: "end" }));
  }

  stop() {
    if (this.stopping || this.finished) return;
    this.stopping = true;
    this.stopCapture();
    setButton("finishing");
    if (!this.ws) return; // still setting up the microphone: start() finishes as "stopped"
    setStatus("finishing", "finishing…");
    if (this.started && this.ws.readyState === WebSocket.OPEN) this.sendEnd();
    // else the socket is still connecting: onopen sends start, the audio so far and end.
  }

  onMessage(data) {
    if (typeof data !== "string" || this.finished) return;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    switch (msg.type) {
      case "ready":
        if (!this.stopping) setStatus("listening", "listening");
        break;
      case "partial":
        ui.partial.textContent = msg.text || "";
        break;
      case "final": {
        const latency = (performance.now() - this.t0) / 1000 - msg.end;
        appendFinal(msg.text, latency);
        noteLatency(latency);
        ui.partial.textContent = "";
        break;
      }
      case "error":
        this.finish("error", `error: ${msg.message || msg.code || "unknown error"}`);
        break;
      case "end":
        this.finish("done", "done");
        break;
    }
  }

  onClose(event) {
    if (this.finished) return;
    if (!this.started) this.finish("error", "error: could not connect to the server");
    else this.finish("error", `error: connection closed (${event.code}${event.reason ? ": " + event.reason : ""})`);
  }

  stopCapture() {
    this.capturing = false;
    if (this.source) this.source.disconnect();
    if (this.node) {
      this.node.port.onmessage = null;
      this.node.disconnect();
    }
    if (this.stream) this.stream.getTracks().forEach((track) => track.stop());
    if (this.ctx && this.ctx.state !== "closed") this.ctx.close().catch(() => {});
  }

  finish(state, text) {
    if (this.finished) return;
    this.finished = true;
    this.stopCapture();
    ui.partial.textContent = "";
    setStatus(state, text);
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000);
    this.onDone();
  }
}

// Models and voices the server lists; the speech box appears when it has a voice.
async function loadModels() {
  let ids = [];
  try {
    const response = await fetch("/v1/models", { headers: authHeaders() });
    if (response.ok) ids = (await response.json()).data.map((m) => m.id);
  } catch {
    return; // an older server without the API: the default model only
  }
  const keep = ui.model.value;
  ui.model.replaceChildren(new Option("server default", ""));
  for (const id of ids.filter((i) => !i.startsWith("tts:"))) ui.model.add(new Option(id, id));
  ui.model.value = ids.includes(keep) ? keep : "";
  const voices = ids.filter((i) => i.startsWith("tts:"));
  ui.voice.replaceChildren(...voices.map((v) => new Option(v.slice(4), v)));
  ui.speak.hidden = voices.length === 0;
}

// Speech: POST /v1/audio/speech as 24 kHz 16-bit PCM, each piece scheduled as it arrives.
async function speak() {
  const text = ui.sayText.value.trim();
  if (!text) return;
  ui.say.disabled = true;
  ui.sayStatus.textContent = "speaking…";
  const t0 = performance.now();
  const ctx = new AudioContext({ sampleRate: 24000 });
  let next = 0;
  let bytes = 0;
  let carry = null; // an odd byte left from the previous piece
  try {
    const response = await fetch("/v1/audio/speech", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({ model: ui.voice.value, input: text, response_format: "pcm" }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
    }
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (!bytes) ui.sayStatus.textContent = `first audio after ${Math.round(performance.now() - t0)} ms`;
      bytes += value.length;
      let data = value;
      if (carry) {
        data = new Uint8Array(carry.length + value.length);
        data.set(carry);
        data.set(value, carry.length);
      }
      const even = data.length - (data.length % 2);
      carry = even < data.length ? data.slice(even) : null;
      const pcm = new Int16Array(data.buffer.slice(data.byteOffset, data.byteOffset + even));
      if (!pcm.length) continue;
      const buffer = ctx.createBuffer(1, pcm.length, 24000);
      const channel = buffer.getChannelData(0);
      for (let i = 0; i < pcm.length; i++) channel[i] = pcm[i] / 32768;
      const source = ctx.createBufferSource();
      source.buffer = buffer;
      source.connect(ctx.destination);
      next = Math.max(next, ctx.currentTime);
      source.start(next);
      next += buffer.duration;
    }
    ui.sayStatus.dataset.bytes = String(bytes);
    ui.sayStatus.textContent = `spoke ${(bytes / 2 / 24000).toFixed(1)} s of audio; ` + ui.sayStatus.textContent;
  } catch (err) {
    ui.sayStatus.textContent = `error: ${describe(err)}`;
  } finally {
    ui.say.disabled = false;
    const left = Math.max(0, next - ctx.currentTime);
    setTimeout(() => ctx.close().catch(() => {}), left * 1000 + 200);
  }
}

ui.say.addEventListener("click", speak);
ui.token.addEventListener("change", loadModels);
loadModels();

let session = null;

ui.toggle.addEventListener("click", async () => {
  if (session) {
    session.stop();
    return;
  }
  ui.transcript.textContent = "";
  ui.partial.textContent = "";
  latencies.length = 0;
  ui.latency.textContent = "";
  const current = new Session(() => {
    if (session === current) session = null;
    setButton("start");
  });
  session = current;
  setButton("stop");
  try {
    await current.start();
  } catch (err) {
    if (current.stopping) current.finish("idle", "stopped"); // Stop pressed mid-setup: not an error
    else current.finish("error", `error: ${describe(err)}`);
  }
});

window.addEventListener("pagehide", () => {
  if (session) session.finish("idle", "page closed");
});

if (!window.isSecureContext) {
  setStatus("error", "error: microphone capture needs https:// or localhost (this page is plain http)");
} else {
  setStatus("idle", "idle");
  setButton("start");
}
