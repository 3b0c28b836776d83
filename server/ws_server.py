"""Live-transcription WebSocket server: thin asyncio wrapper over ProtocolSession and the engine.

One engine serves every loaded model as a route (``resample -> whisper``,
``resample -> rechunk -> mel -> fastconformer``; the same engine also carries
the TTS voices when ``legato serve`` has them); a connection opens a stream
on its model's route; model work happens on the engine's worker threads, never on
this event loop. Limits (docs/PROTOCOL.md, docs/ERRORS.md): message size,
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
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Sequence

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

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
from legato.stream.engine import Engine, StreamHandle
from legato.stream.errors import CapacityError
from legato.stream.frames import AudioChunk, EndOfStream, ErrorEvent, TextEvent

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


STATIC = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


def _static(connection: ServerConnection, path: str) -> Response:
    """The browser page and its scripts (server/static), or 404 for anything else, however odd the path."""
    name = "index.html" if path in ("/", "") else path.lstrip("/")
    try:  # a NUL (ValueError) or a name longer than the file system takes (OSError) is just not there
        file = (STATIC / name).resolve()
        found = file.parent == STATIC and file.suffix in STATIC_TYPES and file.is_file()
    except (OSError, ValueError):
        found = False
    if not found:
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
    body = file.read_bytes()
    headers = Headers([("Content-Type", STATIC_TYPES[file.suffix]), ("Content-Length", str(len(body))), ("Cache-Control", "no-cache")])
    return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, body)


class TranscriptionServer:
    def __init__(self, engine: Engine, models: Sequence[str] | None = None, config: ServerConfig = ServerConfig(), *, own_engine: bool = True):
        """``models``: the engine routes clients may ask for (default: all), the first is the default.
        ``own_engine``: start the engine here and stop it on drain (False when the engine is shared)."""
        self.models = list(models or engine.routes)
        unknown = [m for m in self.models if m not in engine.routes]
        if unknown or not self.models:
            raise ValueError(f"models {unknown} are not routes of the engine ({', '.join(engine.routes)})")
        check_token(config.auth_token)
        self.engine, self.default_model, self.config, self.own_engine = engine, self.models[0], config, own_engine
        self._sessions: set[_Connection] = set()
        self._unverified = 0  # sessions upgraded without a token that have not sent a valid start yet
        self._clients = ClientCounts(config.max_connections_per_client)
        self._server: Server | None = None
        self.draining = False

    @property
    def url(self) -> str:
        scheme = "wss" if self.config.certfile else "ws"
        port = self.port
        return f"{scheme}://{self.config.host}:{port}"

    @property
    def port(self) -> int:
        if self._server is None:
            return self.config.port
        return self._server.sockets[0].getsockname()[1] if self._server.sockets else self.config.port

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?")[0]
        if path == "/healthz":
            status = HTTPStatus.SERVICE_UNAVAILABLE if self.draining else HTTPStatus.OK
            return connection.respond(status, "draining\n" if self.draining else "ok\n")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return _static(connection, path)  # the page and its scripts: not counted as streams
        given = request.headers.get("Authorization")
        if self.draining or len(self._sessions) - self._unverified >= self.config.max_connections:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "server at capacity, try again later\n")
        if self._clients.full(_address(connection)):
            return connection.respond(HTTPStatus.TOO_MANY_REQUESTS, f"at most {self.config.max_connections_per_client} streams per client\n")
        if self.config.auth_token is not None:
            if given is not None and not self.token_ok(given.removeprefix("Bearer ")):
                return connection.respond(HTTPStatus.UNAUTHORIZED, "wrong bearer token\n")
            if given is None and self._unverified >= self.config.unverified_quota:
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections without a token: send the Authorization header\n")
        return None

    def token_ok(self, token: str | None) -> bool:
        """Constant-time check of a client's token against --auth-token-file (never logged)."""
        expected = self.config.auth_token
        return expected is None or token_matches(token, expected)

    async def start(self) -> "TranscriptionServer":
        self.engine.start()
        ssl_ctx = None
        if self.config.certfile:
            ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_ctx.load_cert_chain(self.config.certfile, self.config.keyfile)
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            # Twice the protocol limit: the protocol answers a too-big message with an error
            # first; only past this does the transport cut the connection (1009) unannounced.
            max_size=2 * self.config.max_message_bytes,
            compression=None,  # binary audio does not compress; deflate costs CPU and memory per connection
            # keepalive is ours (_Connection._keepalive): the library's would kill a connection whose pong waits
            # behind audio we are not reading because the stream is back-pressured
            ping_interval=None,
            ping_timeout=None,
            ssl=ssl_ctx,
            # connections arriving together (a load balancer's failover, thousands of clients at once) must queue in
            # the kernel, not be dropped and retried seconds later: asyncio's default accept backlog is 100
            backlog=max(ACCEPT_BACKLOG, self.config.max_connections),
            reuse_port=self.config.reuse_port or None,
        )
        return self

    async def begin_drain(self) -> None:
        """/healthz answers 503 and new upgrades get 503 ("draining"); open streams go on."""
        self.draining = True

    async def drain(self) -> None:
        """``begin_drain``; end every stream (its finals are still sent, close 1001); then stop listening. The listener
        stays open meanwhile, so new clients get the documented 503, not a refused connection."""
        await self.begin_drain()
        await asyncio.gather(*(s.drain() for s in list(self._sessions)), return_exceptions=True)
        if self._server is not None:
            self._server.close(close_connections=False)
            await self._server.wait_closed()
        if self.own_engine:
            self.engine.stop()

    async def _handle(self, ws: ServerConnection) -> None:
        conn = _Connection(self, ws)
        conn.verified = self.config.auth_token is None or (ws.request is not None and "Authorization" in ws.request.headers)
        self._unverified += not conn.verified
        self._sessions.add(conn)
        address = _address(ws)
        self._clients.add(address)
        try:
            await conn.run()
        finally:
            self._sessions.discard(conn)
            self._unverified -= not conn.verified
            self._clients.remove(address)


def _address(connection: ServerConnection) -> str:
    """The client's IP address (a Unix socket or a closed transport has none: one shared key)."""
    peer = connection.remote_address
    return str(peer[0]) if isinstance(peer, tuple) and peer else "-"


class _Connection:
    def __init__(self, server: TranscriptionServer, ws: ServerConnection):
        self.server, self.ws = server, ws
        self.protocol = ProtocolSession(server.config.max_message_bytes)
        self.handle: StreamHandle | None = None
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
        await self.ws.send(json.dumps(message))

    async def reject(self, code: str, message: str, close: CloseCode) -> None:
        log.info("stream %s rejected: %s (%s)", self.handle.stream_id if self.handle else "-", code, loggable(message))
        try:
            await self.send(error_message(code, message))
            await self.ws.close(int(close), code)
        except ConnectionClosed:
            pass

    def _watch_idle(self) -> None:
        """The idle timeout by a timer per timeout period, not per message (a timer armed and cancelled around every
        receive was among a busy front end's top costs: thousands of messages a second); due: reject the stream
        (its pending receive then ends with the connection)."""
        loop, idle = asyncio.get_running_loop(), self.server.config.idle_timeout_s
        if self.ended or self.ws.state is not State.OPEN:
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
                pong = await self.ws.ping()
                await asyncio.wait_for(pong, cfg.ping_timeout_s)
            except asyncio.TimeoutError:
                if self.pushing or self.last_message > sent:
                    continue  # we stopped reading meanwhile, or the client spoke: it is alive
                await self.ws.close(int(CloseCode.INTERNAL_ERROR), "keepalive ping timeout")
                return
            except ConnectionClosed:
                return

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.last_message = self.opened = loop.time()
        first = self.server.config.idle_timeout_s if self.verified else min(self.server.config.idle_timeout_s, self.server.config.start_deadline_s)
        self._idle = loop.call_later(first, self._watch_idle)
        keepalive = asyncio.create_task(self._keepalive())
        try:
            while not self.ended:
                message = await self.ws.recv()
                self.last_message = loop.time()
                actions = self.protocol.receive_binary(message) if isinstance(message, bytes) else self.protocol.receive_text(message)
                for action in actions:
                    if not await self._act(action):
                        return
            if self.pump is not None:
                await self.pump
        except ConnectionClosed:
            if self._idle_reject is not None:
                await self._idle_reject  # the idle rejection's error message and close are sent
        finally:
            self._idle.cancel()
            keepalive.cancel()
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
            header = self.ws.request.headers.get("Authorization") if self.ws.request else None
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
                if hasattr(engine, "aopen_stream"):  # an engine whose opening may wait (the bulk path opens between steps)
                    self.handle = await engine.aopen_stream(*args, route=name)
                else:
                    self.handle = engine.open_stream(*args, route=name)
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
            await self.handle.aend()
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
                await self.ws.close(int(CloseCode.GOING_AWAY if self.server.draining else CloseCode.NORMAL), "end")
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
            await self.ws.close(int(CloseCode.GOING_AWAY), "server shutting down")
