"""One WebSocket connection of the live-transcription protocol (docs/PROTOCOL.md): reads the socket, drives the
Sans-I/O ``ProtocolSession``, opens and feeds its stream, sends the stream's events; its own idle timer and
keepalive, both paused while the stream is back-pressured."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web, web_ws

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
from legato.server.rate_limit import AudioRate
from legato.stream.errors import CapacityError
from legato.stream.frames import AudioChunk, EndOfStream, ErrorEvent, TextEvent
from legato.stream.service import StreamSession

if TYPE_CHECKING:
    from legato.server.ws_server import TranscriptionServer

log = logging.getLogger("legato.server")


class Closed(Exception):
    """The WebSocket is closed or closing: the session ends."""


READ_AHEAD_BYTES = 32 << 10
INBOX_BYTES = 256 << 10  # a socket's messages read ahead of its stream (as websockets reads: one 256 KiB chunk)
# aiohttp reads a WebSocket's messages ahead of the application up to twice its DEFAULT_CHUNK_SIZE (256 KiB) before it
# stops reading the socket, and answers a client's ping only when the application reaches it. Under back-pressure
# that held 16 s of 16 kHz audio per connection (memory at thousands of connections) and kept a ping waiting behind
# it past the client's keepalive timeout (seen: 1 of 14 clients streaming at full speed on 2 cores closed with 1011).
# aiohttp has no option for it: its WebSocketResponse sizes the queue from this module global when a socket opens
# (the writer's limit, a default argument, is not affected).
web_ws.DEFAULT_CHUNK_SIZE = READ_AHEAD_BYTES


class WsSession:
    def __init__(self, server: "TranscriptionServer", ws: web.WebSocketResponse, request: web.Request):
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
