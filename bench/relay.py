"""A loopback TCP relay in front of Azurite that adds latency per HTTP request and counts the traffic.

Azure's storage is a network away: each request a function makes costs a round trip.
Azurite on the same machine answers in well under a millisecond, so the relay sleeps
`delay` seconds before it forwards each client-to-server chunk that starts a new HTTP
request. It also frames both directions as HTTP/1.1 (Content-Length, chunked, HEAD,
1xx) to count requests and body bytes by kind: per-blob reads, writes and copies,
listings, repository metadata (manifests, config, lock).

It runs in a process of its own (`Relay`, a context manager), so that its work does
not compete for the GIL of the process it measures. It listens on 127.0.0.1 only,
forwards only to a loopback upstream, accepts at most `max_connections` at a time,
and stops by itself after `lifetime` seconds or as soon as its parent goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote

LOOPBACK = "127.0.0.1"
READ_SIZE = 64 * 1024
MAX_HEAD = 64 * 1024
START_TIMEOUT = 30.0
# Blob names that belong to the backup repository's bookkeeping, not to copied data.
REPOSITORY_KEYS = ("snapshots/", "config.json", "locks/")
# Azurite checks the SAS of a copy source with a HEAD to the source URL (axios), which names
# the relay: that request is the storage service's own, so it is neither delayed nor the function's.
AZURITE_AGENT = "axios/"

CHUNKED = -1
UNTIL_CLOSE = -2


class FramingError(ValueError):
    """The bytes are not HTTP/1.1 as the relay understands it."""


@dataclass
class Tally:
    """One kind of request: how many, and the body bytes sent with them and received in answer."""

    requests: int = 0
    sent: int = 0
    received: int = 0


@dataclass
class Traffic:
    kinds: dict[str, Tally] = field(default_factory=dict)
    connections: int = 0
    refused: int = 0
    wire_up: int = 0
    wire_down: int = 0
    delays: int = 0
    delay_s: float = 0.0
    cpu_s: float = 0.0
    unframed: int = 0  # connections whose bytes the relay forwarded without understanding them

    def tally(self, kind: str) -> Tally:
        return self.kinds.setdefault(kind, Tally())


def kind_of(method: str, target: str, headers: dict[str, str]) -> str:
    """`blob GET|PUT|HEAD|DELETE|copy`, `list`, `repository <method>`, `container`, or `azurite <method>`."""
    if headers.get("user-agent", "").startswith(AZURITE_AGENT):
        return f"azurite {method}"
    path, _, query = target.partition("?")
    if parse_qs(query).get("comp") == ["list"]:
        return "list"
    parts = unquote(path).lstrip("/").split("/", 2)  # account, container, blob (path-style URLs)
    if len(parts) < 3 or not parts[2]:
        return "container"
    if parts[2].startswith(REPOSITORY_KEYS):
        return f"repository {method}"
    return "blob copy" if "x-ms-copy-source" in headers else f"blob {method}"


def parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """The start line and the headers (names lowercased) of one message head."""
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def body_length(headers: dict[str, str], default: int) -> int:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return CHUNKED
    if "content-length" in headers:
        return int(headers["content-length"])
    return default


class Framer:
    """Finds where messages start and end in one direction of an HTTP/1.1 connection.

    `on_head(head)` gets each complete head and returns the body's framing (a length,
    CHUNKED or UNTIL_CLOSE); `on_body(n)` gets the count of body bytes as they pass.
    """

    def __init__(self, on_head: Callable[[bytes], int], on_body: Callable[[int], None]) -> None:
        self.on_head = on_head
        self.on_body = on_body
        self.state = "head"
        self.buffer = bytearray()
        self.remaining = 0

    def feed(self, data: bytes) -> int:
        """Consume `data`; return how many messages started in it."""
        starts, position = 0, 0
        while position < len(data):
            if self.state == "head" and not self.buffer:
                starts += 1
            position += self._step(data, position)
        return starts

    def _step(self, data: bytes, position: int) -> int:
        if self.state in ("head", "chunk-size", "trailer"):
            return self._line_step(data, position)
        available = len(data) - position
        if self.state == "until-close":
            self.on_body(available)
            return available
        taken = min(self.remaining, available)
        self.remaining -= taken
        if self.state in ("body", "chunk-data"):
            self.on_body(taken)
        if self.remaining == 0:
            self.state = {"body": "head", "chunk-data": "chunk-end", "chunk-end": "chunk-size"}[self.state]
            if self.state == "chunk-end":
                self.remaining = 2
        return taken

    def _line_step(self, data: bytes, position: int) -> int:
        """Accumulate a head (up to a blank line) or a chunk-size/trailer line (up to CRLF)."""
        before = len(self.buffer)
        self.buffer += data[position:]
        marker = b"\r\n\r\n" if self.state == "head" else b"\r\n"
        end = self.buffer.find(marker, max(0, before - len(marker) + 1))
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                raise FramingError(f"no end of {self.state} within {MAX_HEAD} bytes")
            return len(data) - position
        unit = bytes(self.buffer[: end + len(marker)])
        self.buffer.clear()
        if self.state == "head":
            self._begin_body(self.on_head(unit))
        elif self.state == "chunk-size":
            size = int(unit.split(b";", 1)[0].strip() or b"0", 16)
            self.state, self.remaining = ("trailer", 0) if size == 0 else ("chunk-data", size)
        elif unit == b"\r\n":  # the blank line that ends the trailers
            self.state = "head"
        return end + len(marker) - before

    def _begin_body(self, length: int) -> None:
        if length == CHUNKED:
            self.state = "chunk-size"
        elif length == UNTIL_CLOSE:
            self.state = "until-close"
        elif length > 0:
            self.state, self.remaining = "body", length
        else:
            self.state = "head"


class Exchange:
    """One client connection: frames requests and responses and pairs them in order."""

    def __init__(self, traffic: Traffic) -> None:
        self.traffic = traffic
        self.pending: list[tuple[str, str]] = []  # (kind, method) of requests awaiting their response
        self.internal = False  # a connection Azurite opened to itself (see AZURITE_AGENT)
        self.answering: Tally | None = None
        self.sending: Tally | None = None
        self.requests = Framer(self._request_head, self._request_body)
        self.responses = Framer(self._response_head, self._response_body)

    def _request_head(self, head: bytes) -> int:
        start, headers = parse_head(head)
        method, target, _ = start.split(" ", 2)
        kind = kind_of(method, target, headers)
        self.internal = kind.startswith("azurite ")
        self.sending = self.traffic.tally(kind)
        self.sending.requests += 1
        self.pending.append((kind, method))
        return body_length(headers, 0)

    def _request_body(self, count: int) -> None:
        if self.sending is not None:
            self.sending.sent += count

    def _response_head(self, head: bytes) -> int:
        start, headers = parse_head(head)
        status = int(start.split(" ", 2)[1])
        if 100 <= status < 200:
            return 0  # an interim answer: the final one follows
        if not self.pending:
            raise FramingError(f"a response ({start}) without a request")
        kind, method = self.pending.pop(0)
        self.answering = self.traffic.tally(kind)
        if method == "HEAD" or status in (204, 304):
            return 0
        return body_length(headers, UNTIL_CLOSE)

    def _response_body(self, count: int) -> None:
        if self.answering is not None:
            self.answering.received += count


@dataclass(frozen=True)
class RelayConfig:
    upstream_port: int
    delay: float
    max_connections: int = 256
    lifetime: float = 3600.0


class RelayServer:
    """The relay's event loop side: accept, pump both directions, answer commands on the pipe."""

    def __init__(self, config: RelayConfig, control: Connection) -> None:
        self.config = config
        self.control = control
        self.traffic = Traffic()
        self.open = 0
        self.cpu_base = time.process_time()
        self.stopped = asyncio.Event()

    async def serve(self) -> None:
        server = await asyncio.start_server(self.accept, LOOPBACK, 0, limit=READ_SIZE)
        loop = asyncio.get_running_loop()
        loop.add_reader(self.control.fileno(), self.command)
        loop.call_later(self.config.lifetime, self.stopped.set)
        self.control.send(("ready", server.sockets[0].getsockname()[1]))
        async with server:
            await self.stopped.wait()

    def command(self) -> None:
        try:
            verb = self.control.recv()
        except (EOFError, OSError):  # the parent is gone
            self.stopped.set()
            return
        if verb == "stop":
            self.stopped.set()
            return
        self.traffic.cpu_s = time.process_time() - self.cpu_base
        self.control.send(asdict(self.traffic))
        if verb == "reset":
            self.traffic, self.cpu_base = Traffic(), time.process_time()

    async def accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.open >= self.config.max_connections:
            self.traffic.refused += 1
            client_writer.close()
            return
        self.open += 1
        self.traffic.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                LOOPBACK, self.config.upstream_port, limit=READ_SIZE
            )
        except OSError:
            self.open -= 1
            client_writer.close()
            return
        exchange = Exchange(self.traffic)
        try:
            await asyncio.gather(
                self.pump(client_reader, upstream_writer, exchange, up=True),
                self.pump(upstream_reader, client_writer, exchange, up=False),
            )
        except asyncio.CancelledError:
            pass  # the relay is stopping with this connection still open (a client's idle pooled connection)
        finally:
            self.open -= 1
            for writer in (client_writer, upstream_writer):
                writer.close()

    async def pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, exchange: Exchange, *, up: bool
    ) -> None:
        """Forward one direction until EOF; client-to-server chunks that start a request wait `delay` first."""
        framer = exchange.requests if up else exchange.responses
        try:
            while data := await reader.read(READ_SIZE):
                started = self.frame(framer, data)
                if up:
                    self.traffic.wire_up += len(data)
                    if started and not exchange.internal:
                        await self.delay()
                else:
                    self.traffic.wire_down += len(data)
                writer.write(data)
                await writer.drain()
            if not writer.is_closing() and writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):  # reset, or the other side closed this transport already
            writer.close()

    def frame(self, framer: Framer, data: bytes) -> int:
        """Messages started in `data`; a framing error stops the counting (never the forwarding)."""
        if framer.state == "broken":
            return 0
        try:
            return framer.feed(data)
        except (ValueError, IndexError):  # FramingError, or a start line or number that does not parse
            framer.state = "broken"
            self.traffic.unframed += 1
            return 0

    async def delay(self) -> None:
        began = time.perf_counter()
        await asyncio.sleep(self.config.delay)
        self.traffic.delays += 1
        self.traffic.delay_s += time.perf_counter() - began


def serve(config: RelayConfig, control: Connection) -> None:
    """The relay process's entry point (uvloop when installed: less of the relay's own CPU per request)."""
    try:
        import uvloop  # noqa: PLC0415

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(RelayServer(config, control).serve())


class Relay:
    """The relay process, seen from the bench: start, `port`, `traffic(reset=...)`, stop."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        context = multiprocessing.get_context("spawn")
        self.control, child_end = context.Pipe()
        self.process = context.Process(target=serve, args=(config, child_end), name="relay", daemon=True)
        self.process.start()
        child_end.close()
        try:
            self.port = int(self._receive(START_TIMEOUT, "to start")[1])
        except BaseException:
            self.stop()
            raise

    def _receive(self, timeout: float, what: str) -> Any:
        if not self.control.poll(timeout):
            raise TimeoutError(f"the relay (pid {self.process.pid}) did not answer {what} within {timeout:g}s")
        return self.control.recv()

    def traffic(self, *, reset: bool = False) -> dict[str, Any]:
        """The counts since the last reset (`reset=True` starts new ones)."""
        self.control.send("reset" if reset else "stats")
        return self._receive(10.0, "a stats request")

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.control.send("stop")
        self.process.join(5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.control.close()

    def __enter__(self) -> Relay:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
