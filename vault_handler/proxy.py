"""The client side of the handler: one protocol object per incoming connection.

Written as asyncio protocol callbacks rather than streams because the proxy's
CPU per request decides its throughput on a small machine shared with Vault.
A connection carries one request at a time; bytes of a pipelined next request
wait in `buffer`. Bodies are passed through as they arrive in both directions,
with read pausing for back-pressure, and never buffered whole.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

from .http11 import (
    MAX_HEAD_BYTES,
    BodyFramer,
    ProtocolError,
    Request,
    Response,
    parse_request,
    parse_response,
    upstream_head,
)
from .routing import decide
from .supervisor import VaultUnavailable

if TYPE_CHECKING:
    from .server import Handler
    from .upstream import UpstreamConnection

log = logging.getLogger("vaultfn.proxy")

MAX_BUFFERED = 1024 * 1024
MAX_INVOCATION_BODY = 1024 * 1024
MAX_RETRIES = 3
# Seconds a client may take to send a whole request head (or an invocation's body), from its
# first byte or from connecting; VAULTFN_MAX_REQUEST_DURATION if shorter. Slowloris defence.
HEAD_TIMEOUT = 10.0
_RETRY_SAFE = frozenset({"GET", "HEAD", "OPTIONS", "LIST"})
_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    413: "Content Too Large",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


def vault_error(message: str) -> bytes:
    """Vault's own error body, so clients and the CLI show the message."""
    return json.dumps({"errors": [message]}).encode()


class ClientConnection(asyncio.Protocol):
    def __init__(self, app: Handler) -> None:
        self.app = app
        self.loop = app.loop
        self.transport: asyncio.Transport | None = None
        self.client_address = "127.0.0.1"
        self.buffer = b""
        self.closed = False
        self.eof = False
        self.write_paused = False
        self._paused: set[str] = set()
        self.head_started = 0.0  # when the incomplete request head in `buffer` began; 0: none pending
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self.request: Request | None = None
        self.request_body: BodyFramer | None = None
        self.kind = ""
        self.function = ""
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.upstream: UpstreamConnection | None = None
        self.upstream_head = b""
        self.retries = 0
        self.cold_start_ms: int | None = None
        self.started_ns = 0
        self.status = 0
        self.response: Response | None = None
        self.response_body: BodyFramer | None = None
        self.response_head = b""
        self.answered = False
        self.task: asyncio.Task | None = None
        self.last_activity = 0.0

    @property
    def busy(self) -> bool:
        return self.request is not None

    # -- client transport callbacks ---------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_address = peer[0]
        self.head_started = self.loop.time()  # a client that connects and sends nothing is cut off too
        self.app.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.request is not None and not self.request_body.done:
            self._take_body(data)
        else:
            self.buffer = self.buffer + data if self.buffer else data
            if self.request is None:
                self._next_request()
            elif len(self.buffer) > MAX_BUFFERED:
                self.pause_reading("pipeline")

    def eof_received(self) -> bool:
        # Keep the transport open to finish an answer the client still waits for.
        self.eof = True
        return self.request is not None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.app.connections.discard(self)
        if self.task is not None and self.kind == "proxy":
            self.task.cancel()  # a job, unlike a wait for Vault, runs to its end
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.close()  # mid-exchange: its state is unknown, never reuse it

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.upstream is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.upstream is not None:
            self.upstream.transport.resume_reading()

    def pause_reading(self, reason: str) -> None:
        if not self._paused and not self.closed:
            self.transport.pause_reading()
        self._paused.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused and not self.closed:
                self.transport.resume_reading()

    # -- requests ----------------------------------------------------------

    def _next_request(self) -> None:
        buffer = self.buffer
        if buffer[:2] == b"\r\n":
            buffer = buffer.lstrip(b"\r\n")  # RFC 9112 2.2: ignore empty lines before a request
        end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
        if end < 0:
            self.buffer = buffer
            if len(buffer) >= MAX_HEAD_BYTES:
                self._refuse(ProtocolError(431, f"request head larger than {MAX_HEAD_BYTES // 1024} KiB"))
            elif b"\n\n" in buffer or b"\n\r\n" in buffer:
                # A head ended with bare LFs would otherwise wait for a CRLF CRLF that never comes.
                self._refuse(ProtocolError(400, "bare CR or LF in the message head"))
            elif not self.head_started:
                self.head_started = self.loop.time()
            return
        self.buffer = b""
        self.head_started = 0.0
        try:
            request = parse_request(buffer[:end])
        except ProtocolError as error:
            self._refuse(error)
            return
        self._start(request, buffer[end + 4 :])

    def _start(self, request: Request, rest: bytes) -> None:
        self.request = request
        if self.app.telemetry.enabled:
            self.started_ns = time.time_ns()
        self.request_body = BodyFramer(request.content_length, request.chunked)
        decision = decide(request, self.app.settings.init_token)
        self.kind = decision.kind
        if decision.kind == "answer":
            self._answer(decision.status, vault_error(decision.message))
            return
        if decision.kind == "invoke":
            self.function = decision.function
            self.last_activity = self.loop.time()  # the body must arrive within the head's time limit
            if (request.content_length or 0) > MAX_INVOCATION_BODY:
                self._answer(413, json.dumps({"error": "invocation payload larger than 1 MiB"}).encode())
                return
        else:
            if request.expect_continue and not self.request_body.done:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.upstream_head = upstream_head(request, self.client_address)
            upstream = self.app.pool.take_idle() if self.app.supervisor.ready else None
            if upstream is not None:
                self._attach(upstream)
            else:
                self.task = self.loop.create_task(self._acquire())
        if rest or self.request_body.done:
            self._take_body(rest)

    def _take_body(self, data: bytes) -> None:
        framer = self.request_body
        try:
            end = framer.feed(data)
        except ProtocolError as error:
            self._refuse(error)
            return
        if end:
            part = data if end == len(data) else data[:end]
            if self.upstream is not None:
                self.upstream.transport.write(part)
                self.last_activity = self.loop.time()  # a slow upload is progress, not a stall
            else:
                self.pending.append(part)
                self.pending_size += len(part)
                if self.kind == "invoke" and self.pending_size > MAX_INVOCATION_BODY:
                    self._answer(413, json.dumps({"error": "invocation payload larger than 1 MiB"}).encode())
                    return
                if self.pending_size > MAX_BUFFERED:
                    self.pause_reading("body")
        if end < len(data):
            self.buffer = data[end:]
        if framer.done and self.kind == "invoke" and self.task is None:
            self.task = self.loop.create_task(self._invoke())

    # -- host invocations --------------------------------------------------

    async def _invoke(self) -> None:
        body = b"".join(self.pending)
        status, payload = await self.app.dispatcher.dispatch(self.function, body)
        if self.app.telemetry.enabled:
            # Before answering: the host may freeze the instance as soon as it has the answer.
            await asyncio.to_thread(self.app.telemetry.flush)
        self.task = None
        self._answer(status, json.dumps(payload).encode())

    # -- proxying ----------------------------------------------------------

    async def _acquire(self) -> None:
        """Wait for Vault and a connection to it, within the request deadline."""
        started = self.loop.time()
        deadline = started + self.app.settings.max_request_duration
        supervisor = self.app.supervisor
        cold = not supervisor.ready
        while True:
            remaining = deadline - self.loop.time()
            try:
                if remaining <= 0:
                    raise VaultUnavailable("Vault is running but does not accept connections", retry_after=5)
                port = await supervisor.ensure_ready(remaining)
                upstream = self.app.pool.take_idle() or await self.app.pool.connect(port)
                break
            except VaultUnavailable as error:
                self.task = None
                self._answer(503, vault_error(str(error)), retry_after=error.retry_after)
                return
            except OSError:
                # Vault died between two checks; the supervisor restarts it.
                await asyncio.sleep(0.05)
        self.task = None
        if cold:
            self.cold_start_ms = round((self.loop.time() - started) * 1000)
        if self.closed:
            upstream.close()
        else:
            self._attach(upstream)

    def _attach(self, upstream: UpstreamConnection) -> None:
        self.upstream = upstream
        upstream.client = self
        if self.write_paused:
            upstream.transport.pause_reading()
        if self.pending:
            upstream.transport.write(self.upstream_head + b"".join(self.pending))
            self.pending = []
            self.pending_size = 0
            self.resume_reading("body")
        else:
            upstream.transport.write(self.upstream_head)
        self.last_activity = self.loop.time()

    def check_deadline(self, now: float, limit: float) -> None:
        """Called by the handler's watchdog: give up on a Vault that stopped answering, or a client that stalls."""
        if self.upstream is None:
            self._check_client(now, min(HEAD_TIMEOUT, limit))
            return
        if now - self.last_activity < limit:
            return
        upstream, self.upstream = self.upstream, None
        upstream.close()
        if self.response is not None:
            self._abort()
        elif not self.request_body.done and "upstream" not in self._paused:
            # Vault waits for the rest of the body (it is not refusing to read it): the client stalled.
            self._refuse(ProtocolError(408, f"the request body stopped arriving for {limit:g}s"))
        else:
            self._answer(504, vault_error(f"Vault did not answer within {limit:g}s (VAULTFN_MAX_REQUEST_DURATION)"))

    def _check_client(self, now: float, limit: float) -> None:
        """Cut off a client that holds a connection without finishing its request head or invocation body."""
        if self.closed:
            return
        if self.request is None:
            if self.head_started and now - self.head_started >= limit:
                if self.buffer:
                    self._refuse(ProtocolError(408, f"the request head was not complete within {limit:g}s"))
                else:  # nothing sent: nothing to answer
                    self.closed = True
                    self.transport.close()
        elif self.kind == "invoke" and not self.request_body.done and now - self.last_activity >= limit:
            self._refuse(ProtocolError(408, f"the invocation body was not complete within {limit:g}s"))

    def upstream_data(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        if self.response is None:
            data = self._take_response_head(data)
            if self.response is None:
                return
        framer = self.response_body
        if framer is None:  # body delimited by Vault closing the connection
            self.transport.write(self.response_head + data)
            self.response_head = b""
            return
        try:
            end = framer.feed(data)
        except ProtocolError:
            self._abort()
            return
        self.transport.write(self.response_head + (data if end == len(data) else data[:end]))
        self.response_head = b""
        if framer.done:
            if end < len(data):
                self.upstream.close()  # Vault sent more than the response: do not reuse
            self._finish()

    def _take_response_head(self, data: bytes) -> bytes:
        buffer = self.response_head + data if self.response_head else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.response_head = buffer
                if len(buffer) > MAX_HEAD_BYTES:
                    self._upstream_failed("Vault sent an oversized response head")
                return b""
            request = self.request
            try:
                response = parse_response(buffer[: end + 4], request.method, request.keep_alive)
            except ProtocolError as error:
                self._upstream_failed(error.reason)
                return b""
            buffer = buffer[end + 4 :]
            if response.status >= 200:
                break
            if not request.http10:
                self.transport.write(response.head)  # interim 1xx answer
        if self.cold_start_ms is not None:
            # Tells the keep-warm check (and anyone curious) that this answer waited for Vault to start.
            status_end = response.head.index(b"\r\n") + 2
            cold = b"X-Vaultfn-Cold-Start: %d\r\n" % self.cold_start_ms
            response.head = response.head[:status_end] + cold + response.head[status_end:]
        self.response = response
        self.answered = True
        self.response_head = response.head
        if response.until_close:
            self.response_body = None
        else:
            self.response_body = BodyFramer(response.content_length, response.chunked)
            if self.response_body.done:
                self.transport.write(response.head)
                self.response_head = b""
                if buffer:
                    self.upstream.close()
                self._finish()
                return b""
        return buffer

    def upstream_lost(self) -> None:
        self.upstream = None
        if self.closed or self.request is None or self.kind != "proxy":
            return
        if self.response is not None:
            if self.response_body is None:  # close-delimited body: complete now
                self._finish()
            else:
                self._abort()
        elif self.retries < MAX_RETRIES and self.request.method in _RETRY_SAFE and not self.request.has_body:
            # Vault closed the connection without answering: a pooled connection it had
            # dropped, or Vault died. A read without a body is safe to send again.
            self.retries += 1
            self.task = self.loop.create_task(self._acquire())
        else:
            self._upstream_failed("Vault closed the connection before answering; it may be restarting")

    def _upstream_failed(self, reason: str) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.close()
        self._answer(502, vault_error(reason))

    # -- finishing an exchange -------------------------------------------

    def _finish(self) -> None:
        """The response is complete: return the upstream, then serve the next request."""
        request, response, upstream = self.request, self.response, self.upstream
        complete = self.request_body.done
        if upstream is not None:
            if response.keep_alive and complete:
                if self.write_paused:
                    upstream.transport.resume_reading()  # hand it back as it was lent
                self.app.pool.release(upstream)
            else:
                upstream.close()
        keep_alive = request.keep_alive and response.keep_alive and complete
        self.status = response.status
        self._end_exchange(keep_alive)

    def _answer(self, status: int, body: bytes, retry_after: int | None = None) -> None:
        """Answer the current request from the handler itself."""
        if self.closed:
            return
        if self.answered:
            self._abort()
            return
        request = self.request
        keep_alive = request is not None and request.keep_alive and self.request_body.done
        headers = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            "Content-Type: application/json",
            "Cache-Control: no-store",
            f"Content-Length: {len(body)}",
        ]
        if retry_after is not None:
            headers.append(f"Retry-After: {retry_after}")
        if not keep_alive:
            headers.append("Connection: close")
        send_body = request is None or request.method != "HEAD"
        self.transport.write(("\r\n".join(headers) + "\r\n\r\n").encode() + (body if send_body else b""))
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.close()
        self.status = status
        self._end_exchange(keep_alive)

    def _refuse(self, error: ProtocolError) -> None:
        """A malformed request: answer once and close, since framing is lost."""
        if self.request is None:
            self.request = Request("GET", "/", http10=False)
            self.request.keep_alive = False
            self.request_body = BodyFramer(0, False)
        else:
            self.request.keep_alive = False
        self._answer(error.status, vault_error(error.reason))

    def _abort(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.close()
        self.closed = True
        self.transport.abort()

    def _end_exchange(self, keep_alive: bool) -> None:
        if self.started_ns:
            request = self.request
            path = f"/{self.function}" if self.kind == "invoke" else request.path
            self.app.telemetry.request(
                request.method, path, self.status, self.started_ns, time.time_ns() - self.started_ns
            )
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self._reset_exchange()
        if not keep_alive or self.eof or (self.app.stopping and not self.buffer):
            self.closed = True
            self.transport.close()
            return
        if self._paused:
            self._paused.clear()
            self.transport.resume_reading()
        if self.buffer:
            # Scheduled, not called: a burst of pipelined requests must not recurse.
            self.loop.call_soon(self._resume_pipeline)

    def _resume_pipeline(self) -> None:
        if self.request is None and self.buffer and not self.closed:
            self._next_request()
