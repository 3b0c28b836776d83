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
import ssl
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from aiohttp import web

from legato.server.auth import check_token, token_matches
from legato.server.rate_limit import ClientCounts
from legato.server.ws_session import WsSession
from legato.stream.metrics import MetricsSnapshot
from legato.stream.service import StreamService

if TYPE_CHECKING:
    from legato.server.tts_service import TtsService


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
        self._sessions: set[WsSession] = set()
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

    def authorized(self, request: web.Request) -> bool:
        """An HTTP request (the API, /metrics) may proceed: no token is set, or its ``Authorization: Bearer`` matches."""
        header = request.headers.get("Authorization", "")
        return self.config.auth_token is None or (header.startswith("Bearer ") and self.token_ok(header[7:]))

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

        if not self.authorized(request):
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
            # keepalive is ours (WsSession._keepalive): a library's would kill a connection whose pong waits
            # behind audio we are not reading because the stream is back-pressured
            autoping=False,
            heartbeat=None,
        )
        await ws.prepare(request)
        conn = WsSession(self, ws, request)
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


def _address(request: web.Request) -> str:
    """The client's IP address (a Unix socket or a closed transport has none: one shared key)."""
    return request.remote or "-"


