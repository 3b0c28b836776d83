"""The server on one port: live transcription over WebSocket, the OpenAI-compatible HTTP API, health, the page.

One engine serves every loaded model as a route (``resample -> whisper``,
``resample -> rechunk -> mel -> fastconformer``; the same engine also carries
the TTS voices when ``legato serve`` has them); a connection opens a stream
on its model's route; model work happens on the engine's worker threads, never on
this event loop. HTTP and WebSocket share aiohttp's server (``/v1/...``: server/openai_api.py,
docs/HTTP.md): the ``websockets`` library cannot read a request body, and one port for both is what
users of speech servers expect. Limits (docs/PROTOCOL.md, docs/ERRORS.md): message size,
connections (HTTP 503 past the limit, before the upgrade), idle timeout,
keepalive pings, no compression. ``/healthz`` answers 200 while serving.
With ``auth_token`` set, a client proves it with an ``Authorization: Bearer``
header (checked at the handshake) or, for browsers, which cannot set headers on
a WebSocket, the start message's ``token`` (checked before the stream opens).
``drain()`` (SIGTERM) stops accepting, ends every stream so its finals are
sent, then closes with 1001.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from aiohttp import WSMsgType, web, web_ws

from legato.server.auth import check_token, token_matches
from legato.server.log_text import loggable
from legato.server.protocol import (
    Audio,
    CloseCode,
    End,
    ProtocolSession,
    Reject,
    Start,
    end_message,
    error_message,
    ready_message,
    text_message,
)
from legato.server.rate_limit import AudioRate, ClientCounts
from legato.stream.metrics import MetricsSnapshot
from legato.stream.service import StreamService, StreamSession
from legato.stream.errors import CapacityError
from legato.stream.frames import AudioChunk, EndOfStream, ErrorEvent, TextEvent

if TYPE_CHECKING:
    from legato.server.tts_service import TtsService

log = logging.getLogger("legato.server")


ACCEPT_BACKLOG = 1024


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    max_connections: int = 64
    max_message_bytes: int = 1 << 20  # 1 MiB: about 32 s of 16 kHz s16le mono
    idle_timeout_s: float = 30.0  # no message from the client for this long ends the stream
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    latency_budget_s: float = 1.0
    # Per-client limits (server/rate_limit.py): a stream may send max_audio_burst_s of audio at once, then
    # max_audio_rate times real time (0: no limit); past it the server reads the client more slowly. Streams per client
    # address: max_connections_per_client (0: no limit; behind a proxy every client has the proxy's address).
    max_audio_rate: float = 16.0
    max_audio_burst_s: float = 60.0
    max_connections_per_client: int = 0
    auth_token: str | None = None  # bearer token; never logged
    # With auth on, a connection upgraded without an Authorization header has not shown its token yet: it must send
    # a start message with the token within start_deadline_s, and at most unverified_quota such connections are
    # held at once, outside max_connections (so tokenless squatters cannot take authorised clients' slots).
    start_deadline_s: float = 5.0
    unverified_quota: int = 8
    certfile: str | None = None
    keyfile: str | None = None
    reuse_port: bool = False  # several processes serve the port (SO_REUSEPORT: the kernel spreads connections)
    max_upload_bytes: int = 25 << 20  # an HTTP API request's audio file (OpenAI's own limit); 413 past it


STATIC = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


@dataclass
class Counters:
    """What the server refused and ended, for ``/metrics`` (server/prometheus.py)."""

    refused: dict[str, int] = field(default_factory=dict)  # by reason
    errors: dict[str, int] = field(default_factory=dict)  # by error code
    messages: int = 0  # WebSocket messages received

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def snapshot(self) -> MetricsSnapshot:
        return MetricsSnapshot(refused=dict(self.refused), errors=dict(self.errors), messages=self.messages)


class Closed(Exception):
    """The WebSocket is closed or closing: the session ends."""


def _static(path: str) -> web.Response:
    """The browser page and its scripts (server/static), or 404 for anything else, however odd the path."""
    name = "index.html" if path in ("/", "") else path.lstrip("/")
    try:  # a NUL (ValueError) or a name longer than the file system takes (OSError) is just not there
        file = (STATIC / name).resolve()
        found = file.parent == STATIC and file.suffix in STATIC_TYPES and file.is_file()
    except (OSError, ValueError):
        found = False
    if not found:
        return web.Response(status=HTTPStatus.NOT_FOUND, text="not found\n")
    return web.Response(body=file.read_bytes(), headers={"Content-Type": STATIC_TYPES[file.suffix], "Cache-Control": "no-cache"})


class TranscriptionServer:
    def __init__(self, engine: StreamService, models: Sequence[str] | None = None, config: ServerConfig = ServerConfig(), *,
                 own_engine: bool = True, tts: "TtsService | None" = None):
        """``models``: the engine routes clients may ask for (default: all but voices), the first is the default.
        ``own_engine``: start the engine here and stop it on drain (False when the engine is shared).
        ``tts``: the voices ``/v1/audio/speech`` speaks with (none: that endpoint answers 404)."""
        check_token(config.auth_token)
        self.models = list(models) if models is not None else [r for r in engine.routes if not r.startswith("tts:")]
        unknown = [m for m in self.models if m not in engine.routes]
        if unknown or not (self.models or tts):
            raise ValueError(f"models {unknown} are not routes of the engine ({', '.join(engine.routes)})")
        self.engine, self.config, self.own_engine, self.tts = engine, config, own_engine, tts
        self.default_model = self.models[0] if self.models else None
        self._sessions: set[_Connection] = set()
        self._requests = 0  # HTTP API requests in flight (drain waits for them)
        self._unverified = 0  # sessions upgraded without a token that have not sent a valid start yet
        self._clients = ClientCounts(config.max_connections_per_client)
        self._runner: web.AppRunner | None = None
        self.draining = False
        self.counters = Counters()

    @property
    def url(self) -> str:
        scheme = "wss" if self.config.certfile else "ws"
        return f"{scheme}://{self.config.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return self.url.replace("ws", "http", 1)

    @property
    def port(self) -> int:
        if self._runner is None or not self._runner.addresses:
            return self.config.port
        return self._runner.addresses[0][1]

    def token_ok(self, token: str | None) -> bool:
        """Constant-time check of a client's token against --auth-token-file (never logged)."""
        expected = self.config.auth_token
        return expected is None or token_matches(token, expected)

    def app(self) -> web.Application:
        from legato.server.openai_api import OpenAiApi

        app = web.Application(client_max_size=self.config.max_upload_bytes + (64 << 10))  # the file plus its form fields
        OpenAiApi(self).add_routes(app)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/{path:.*}", self._get)
        return app

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.Response(status=HTTPStatus.SERVICE_UNAVAILABLE, text="draining\n")
        return web.Response(text="ok\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        """Prometheus' text format (server/prometheus.py); with --auth-token-file, scrapes show the bearer token."""
        from legato.server.prometheus import CONTENT_TYPE, exposition

        header = request.headers.get("Authorization", "")
        if self.config.auth_token is not None and not (header.startswith("Bearer ") and self.token_ok(header[7:])):
            self.counters.refuse("unauthorized")
            return web.Response(status=HTTPStatus.UNAUTHORIZED, text="a bearer token is required\n")
        snap = await self.engine.ametrics()
        if not snap.servers_included:
            snap = snap.merge(self.counters.snapshot())
        return web.Response(body=exposition(snap), headers={"Content-Type": CONTENT_TYPE})

    def _refuse_upgrade(self, request: web.Request) -> web.Response | None:
        given = request.headers.get("Authorization")

        def refuse(reason: str, status: int, text: str) -> web.Response:
            self.counters.refuse(reason)
            return web.Response(status=status, text=text)

        if self.draining:
            return refuse("draining", HTTPStatus.SERVICE_UNAVAILABLE, "server at capacity, try again later\n")
        if len(self._sessions) - self._unverified >= self.config.max_connections:
            return refuse("capacity", HTTPStatus.SERVICE_UNAVAILABLE, "server at capacity, try again later\n")
        if self._clients.full(_address(request)):
            return refuse("per_client", HTTPStatus.TOO_MANY_REQUESTS, f"at most {self.config.max_connections_per_client} streams per client\n")
        if self.config.auth_token is not None:
            if given is not None and not self.token_ok(given.removeprefix("Bearer ")):
                return refuse("unauthorized", HTTPStatus.UNAUTHORIZED, "wrong bearer token\n")
            if given is None and self._unverified >= self.config.unverified_quota:
                return refuse("unverified_quota", HTTPStatus.SERVICE_UNAVAILABLE, "too many connections without a token: send the Authorization header\n")
        return None

    async def _get(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return _static(request.path)  # the page and its scripts: not counted as streams
        refused = self._refuse_upgrade(request)
        if refused is not None:
            return refused
        ws = web.WebSocketResponse(
            # Twice the protocol limit: the protocol answers a too-big message with an error
            # first; only past this does the transport cut the connection (1009) unannounced.
            max_msg_size=2 * self.config.max_message_bytes,
            compress=False,  # binary audio does not compress; deflate costs CPU and memory per connection
            # keepalive is ours (_Connection._keepalive): a library's would kill a connection whose pong waits
            # behind audio we are not reading because the stream is back-pressured
            autoping=False,
            heartbeat=None,
        )
        await ws.prepare(request)
        conn = _Connection(self, ws, request)
        conn.verified = self.config.auth_token is None or "Authorization" in request.headers
        self._unverified += not conn.verified
        self._sessions.add(conn)
        address = _address(request)
        self._clients.add(address)
        try:
            await conn.run()
            if not ws.closed:
                await ws.close()
        finally:
            self._sessions.discard(conn)
            self._unverified -= not conn.verified
            self._clients.remove(address)
        return ws

    async def start(self) -> "TranscriptionServer":
        self.engine.start()
        ssl_ctx = None
        if self.config.certfile:
            ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_ctx.load_cert_chain(self.config.certfile, self.config.keyfile)
        # access_log off: a line per request drowns ours at scale (streams log their own open, reject and end)
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=30)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.config.host, self.config.port, ssl_context=ssl_ctx,
            # connections arriving together (a load balancer's failover, thousands of clients at once) must queue in
            # the kernel, not be dropped and retried seconds later: asyncio's default accept backlog is 100
            backlog=max(ACCEPT_BACKLOG, self.config.max_connections),
            reuse_port=self.config.reuse_port or None,
        )
        await site.start()
        return self

    async def begin_drain(self) -> None:
        """/healthz answers 503 and new upgrades and API requests get 503 ("draining"); open streams go on."""
        self.draining = True

    async def drain(self) -> None:
        """``begin_drain``; end every stream (its finals are still sent, close 1001) and let API requests in flight
        finish; then stop listening. The listener stays open meanwhile, so new clients get the documented 503, not
        a refused connection."""
        await self.begin_drain()
        await asyncio.gather(*(s.drain() for s in list(self._sessions)), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self.own_engine:
            self.engine.stop()


READ_AHEAD_BYTES = 32 << 10
INBOX_BYTES = 256 << 10  # a socket's messages read ahead of its stream (as websockets reads: one 256 KiB chunk)
# aiohttp reads a WebSocket's messages ahead of the application up to twice its DEFAULT_CHUNK_SIZE (256 KiB) before it
# stops reading the socket, and answers a client's ping only when the application reaches it. Under back-pressure
# that held 16 s of 16 kHz audio per connection (memory at thousands of connections) and kept a ping waiting behind
# it past the client's keepalive timeout (seen: 1 of 14 clients streaming at full speed on 2 cores closed with 1011).
# aiohttp has no option for it: its WebSocketResponse sizes the queue from this module global when a socket opens
# (the writer's limit, a default argument, is not affected).
web_ws.DEFAULT_CHUNK_SIZE = READ_AHEAD_BYTES


def _address(request: web.Request) -> str:
    """The client's IP address (a Unix socket or a closed transport has none: one shared key)."""
    return request.remote or "-"


class _Connection:
    def __init__(self, server: TranscriptionServer, ws: web.WebSocketResponse, request: web.Request):
        self.server, self.ws, self.request = server, ws, request
        self.last_pong = 0.0  # loop time of the client's last pong
        self.inbox: asyncio.Queue = asyncio.Queue()  # read, not yet taken: at most INBOX_BYTES (_read_socket)
        self.inbox_bytes = 0
        self.room = asyncio.Event()
        self.protocol = ProtocolSession(server.config.max_message_bytes)
        self.handle: StreamSession | None = None
        self.pump: asyncio.Task | None = None
        self.samples = 0
        self.rate = 16000
        self.ended = False
        self.last_message = 0.0  # loop time of the client's last message (the idle timeout's watch)
        self.verified = True  # False while an upgrade without a token has not sent a start with one
        self.opened = 0.0  # loop time the connection was handed to us
        self.pushing = False  # waiting in apush: back-pressure, so we are not reading the socket
        self._idle: asyncio.TimerHandle | None = None
        self._idle_reject: asyncio.Future | None = None
        cfg = server.config
        self.allowance = AudioRate(cfg.max_audio_rate, cfg.max_audio_burst_s, asyncio.get_running_loop().time())
        self.throttled = False  # logged once a stream

    async def send(self, message: dict) -> None:
        try:
            await self.ws.send_str(json.dumps(message))
        except (ConnectionError, RuntimeError) as exc:  # aiohttp: the transport is closing or closed
            raise Closed(str(exc)) from None

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode())

    async def receive(self) -> str | bytes:
        """The client's next text or binary message; Closed once the socket is closed."""
        message = await self.inbox.get()
        if isinstance(message, Closed):
            self.inbox.put_nowait(message)  # every later receive sees it too
            raise message
        self.inbox_bytes -= len(message)
        if self.inbox_bytes <= INBOX_BYTES // 2:
            self.room.set()
        return message

    async def _read_socket(self) -> None:
        """Reads the socket while fewer than ``INBOX_BYTES`` wait in ``inbox``, as the ``websockets`` library reads
        its socket: pings are answered and pongs noted as they arrive, not when the stream takes its next message
        (a client's keepalive ping would otherwise wait behind the audio its stream is back-pressured on). Past the
        bound the socket is not read and the client's sends wait: back-pressure. After ``end`` the client's
        messages are dropped. A message past the transport's size limit closes the socket with 1009."""
        try:
            while True:
                msg = await self.ws.receive()
                if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                    if self.ended:
                        continue
                    self.inbox.put_nowait(msg.data)
                    self.inbox_bytes += len(msg.data)
                    if self.inbox_bytes > INBOX_BYTES:
                        self.room.clear()
                        await self.room.wait()
                elif msg.type is WSMsgType.PING:
                    await self.ws.pong(msg.data)
                elif msg.type is WSMsgType.PONG:
                    self.last_pong = asyncio.get_running_loop().time()
                else:  # CLOSE, CLOSING, CLOSED, ERROR
                    self.inbox.put_nowait(Closed(str(msg.extra or msg.type)))
                    return
        except (ConnectionError, RuntimeError) as exc:
            self.inbox.put_nowait(Closed(str(exc)))

    async def reject(self, code: str, message: str, close: CloseCode) -> None:
        self.server.counters.error(code)
        log.info("stream %s rejected: %s (%s)", self.handle.stream_id if self.handle else "-", code, loggable(message))
        try:
            await self.send(error_message(code, message))
            await self.close(int(close), code)
        except Closed:
            pass

    def _watch_idle(self) -> None:
        """The idle timeout by a timer per timeout period, not per message (a timer armed and cancelled around every
        receive was among a busy front end's top costs: thousands of messages a second); due: reject the stream
        (its pending receive then ends with the connection)."""
        loop, idle = asyncio.get_running_loop(), self.server.config.idle_timeout_s
        if self.ended or self.ws.closed:
            return
        if not self.verified:  # the start deadline of an upgrade without a token
            deadline = self.server.config.start_deadline_s
            if loop.time() - self.opened < deadline:
                self._idle = loop.call_later(self.opened + deadline - loop.time(), self._watch_idle)
                return
            self._idle_reject = asyncio.ensure_future(self.reject(
                "unauthorized", f"no start message with a token within {deadline:g} s", CloseCode.POLICY_VIOLATION))
            return
        left = self.last_message + idle - loop.time()
        if left > 0 or self.pushing:  # while we hold its audio back, the client's silence is ours
            self._idle = loop.call_later(left if left > 0 else idle, self._watch_idle)
            return
        self._idle_reject = asyncio.ensure_future(
            self.reject("idle_timeout", f"no message for {idle:g} s", CloseCode.POLICY_VIOLATION))

    async def _keepalive(self) -> None:
        """Ping every ``ping_interval_s``; close 1011 if no pong comes within ``ping_timeout_s`` and the client has sent
        nothing since the ping. Skipped while the stream is back-pressured: then we are not reading the socket, and
        the pong waits behind the client's audio (back-pressure slows a client down, never kills it)."""
        loop, cfg = asyncio.get_running_loop(), self.server.config
        while True:
            await asyncio.sleep(cfg.ping_interval_s)
            if self.pushing:
                continue
            sent = loop.time()
            try:
                await self.ws.ping()
            except (ConnectionError, RuntimeError):
                return  # closed
            await asyncio.sleep(cfg.ping_timeout_s)
            if self.last_pong >= sent or self.pushing or self.last_message > sent:
                continue  # it answered, we stopped reading meanwhile, or the client spoke: it is alive
            await self.close(int(CloseCode.INTERNAL_ERROR), "keepalive ping timeout")
            return

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.last_message = self.opened = loop.time()
        first = self.server.config.idle_timeout_s if self.verified else min(self.server.config.idle_timeout_s, self.server.config.start_deadline_s)
        self._idle = loop.call_later(first, self._watch_idle)
        keepalive = asyncio.create_task(self._keepalive())
        reader = asyncio.create_task(self._read_socket())
        try:
            while not self.ended:
                message = await self.receive()
                self.last_message = loop.time()
                self.server.counters.messages += 1
                actions = self.protocol.receive_binary(message) if isinstance(message, bytes) else self.protocol.receive_text(message)
                for action in actions:
                    if not await self._act(action):
                        return
            if self.pump is not None:
                await self.pump
        except Closed:
            if self._idle_reject is not None:
                await self._idle_reject  # the idle rejection's error message and close are sent
        finally:
            self._idle.cancel()
            keepalive.cancel()
            reader.cancel()
            if self.pump is not None and not self.pump.done():
                self.pump.cancel()
            if self.handle is not None and not self.handle.finished:
                self.handle.cancel()

    async def _act(self, action) -> bool:
        if isinstance(action, Reject):
            await self.reject(action.code, action.message, action.close_code)
            return False
        if isinstance(action, Start):
            req = action.request
            header = self.request.headers.get("Authorization")
            if not self.server.token_ok(header.removeprefix("Bearer ") if header else req.token):
                await self.reject("unauthorized", "a bearer token is required: Authorization header or the start message's token", CloseCode.POLICY_VIOLATION)
                return False
            if not self.verified:  # it showed its token: out of the unverified quota, into max_connections
                self.verified = True
                self.server._unverified -= 1
            name = req.model or self.server.default_model
            if name not in self.server.models:
                await self.reject("unknown_model", f"unknown model {name!r}; loaded: {', '.join(self.server.models)}", CloseCode.INVALID_PAYLOAD)
                return False
            options = {
                "interim_results": req.interim_results,
                "language": req.language,
                "endpointing": {"enabled": req.endpointing.enabled, "threshold": req.endpointing.threshold, "min_silence_ms": req.endpointing.min_silence_ms},
            }
            options.update({k: v for k, v in (("lookahead_ms", req.lookahead_ms), ("decoder", req.decoder)) if v is not None})
            options["sample_rate"] = req.pcm.sample_rate
            engine, args = self.server.engine, (self.server.config.latency_budget_s, options, uuid.uuid4().hex[:12])
            try:
                self.handle = await engine.aopen_stream(*args, route=name)
            except CapacityError as exc:
                await self.reject("capacity", str(exc), CloseCode.TRY_AGAIN_LATER)
                return False
            except ValueError as exc:  # an option this model cannot honour (lookahead, decoder)
                await self.reject("bad_request", str(exc), CloseCode.INVALID_PAYLOAD)
                return False
            self.rate = req.pcm.sample_rate
            await self.send(ready_message(self.handle.stream_id, name, self.rate))
            self.pump = asyncio.create_task(self._pump())
            return True
        if self.ended:
            return True  # the server ended this stream (draining): later input is not transcribed
        if isinstance(action, Audio):
            self.pushing = True
            try:  # back-pressure: a full queue or the rate limit holds us here, and the client's next messages wait in its socket
                wait = self.allowance.take(action.samples.shape[0] / self.rate, asyncio.get_running_loop().time())
                if wait > 0:
                    if not self.throttled:
                        self.throttled = True
                        log.info("stream %s sends faster than %g x real time: read more slowly", self.handle.stream_id, self.server.config.max_audio_rate)
                    await asyncio.sleep(wait)
                await self.handle.apush(AudioChunk(action.samples, self.rate, self.samples))
            finally:
                self.pushing = False
                self.last_message = asyncio.get_running_loop().time()
            self.samples += action.samples.shape[0]
            return True
        if isinstance(action, End):
            self.pushing = True  # the end waits behind the stream's queued audio: back-pressure too
            try:
                await self.handle.aend()
            finally:
                self.pushing = False
                self.last_message = asyncio.get_running_loop().time()
            self.ended = True
            return True
        return True

    async def _pump(self) -> None:
        """Engine output -> client messages; the last one is ``end`` (or an error), then close."""
        async for frame in self.handle:
            if isinstance(frame, TextEvent):
                await self.send(text_message(frame))
            elif isinstance(frame, ErrorEvent):
                await self.reject(frame.code, frame.message, CloseCode.INTERNAL_ERROR if frame.code == "stage_failed" else CloseCode.INVALID_PAYLOAD)
                return
            elif isinstance(frame, EndOfStream):
                await self.send(end_message())
                await self.close(int(CloseCode.GOING_AWAY if self.server.draining else CloseCode.NORMAL), "end")
                return

    async def drain(self) -> None:
        if self.handle is not None and not self.ended:
            self.ended = True
            try:
                await self.handle.aend()
            except Exception:  # already ended or failed: nothing to flush
                pass
        if self.pump is not None:
            await asyncio.wait({self.pump}, timeout=30)
        else:
            await self.close(int(CloseCode.GOING_AWAY), "server shutting down")
