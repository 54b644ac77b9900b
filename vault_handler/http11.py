"""HTTP/1.1 message framing for the proxy: strict request heads, response heads
and chunked bodies.

The proxy passes bodies through byte for byte and only needs to know where each
message ends, what to drop (hop-by-hop headers) and what to translate (`LIST`).
httptools and aiohttp's parser reject Vault's `LIST` method, and a full HTTP
library costs several times the CPU per request, so this module parses heads
itself. It is deliberately strict, because a lenient proxy in front of a
server is how request smuggling happens (RFC 9112 section 11.2): it refuses
bare CR/LF, obsolete line folding, whitespace before a colon, invalid name or
value characters, duplicate or non-numeric Content-Length, any Transfer-Encoding
other than a single `chunked`, and Content-Length together with
Transfer-Encoding.
"""

from __future__ import annotations

import re

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_CHUNK_LINE = 4096
MAX_TRAILER_BYTES = 16 * 1024

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TARGET = re.compile(rb"/[\x21-\x7e]*|\*")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_IPV4_PORT = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}")
_BRACKETED_V6 = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::\d{1,5})?")

# Hop-by-hop headers (RFC 9110 section 7.6.1) that must not be forwarded, plus
# those the proxy handles itself. Transfer-Encoding and Content-Length are kept:
# the body is re-sent with exactly the framing it arrived with.
_REQUEST_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"expect",
        b"x-forwarded-for",
        b"x-vaultfn-init-token",
    }
)
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})
_RESPONSE_DROP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"trailer", b"upgrade"})


class ProtocolError(Exception):
    """A message that must be refused; `status` is the answer to send."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Request:
    """A parsed request head. `headers` keeps each raw line for forwarding."""

    __slots__ = (
        "chunked",
        "content_length",
        "drop",
        "expect_continue",
        "forwarded_for",
        "headers",
        "http10",
        "keep_alive",
        "method",
        "target",
    )

    def __init__(self, method: str, target: str, http10: bool) -> None:
        self.method = method
        self.target = target
        self.http10 = http10
        self.headers: list[tuple[bytes, bytes, bytes]] = []  # (lower name, value, raw line)
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = not http10
        self.expect_continue = False
        self.forwarded_for: list[str] = []
        self.drop: frozenset[bytes] = _REQUEST_DROP

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def header(self, lower_name: bytes) -> bytes | None:
        for name, value, _ in self.headers:
            if name == lower_name:
                return value
        return None


def _split_lines(head: bytes) -> list[bytes]:
    lines = head.split(b"\r\n")
    for line in lines:
        if b"\n" in line or b"\r" in line:
            raise ProtocolError(400, "bare CR or LF in the message head")
    return lines


def _parse_fields(lines: list[bytes]) -> list[tuple[bytes, bytes, bytes]]:
    if len(lines) > MAX_HEADERS:
        raise ProtocolError(431, f"more than {MAX_HEADERS} header fields")
    fields = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            if line[:1] in (b" ", b"\t"):
                raise ProtocolError(400, "obsolete line folding in a header field")
            raise ProtocolError(400, "invalid header field name")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise ProtocolError(400, f"invalid character in header field {name.decode()!r}")
        fields.append((name.lower(), value, line))
    return fields


def parse_request(head: bytes) -> Request:
    """Parse a request head (without its final empty line)."""
    lines = _split_lines(head)
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        raise ProtocolError(400, "malformed request line")
    method, target, version = parts
    if not _TARGET.fullmatch(target):
        raise ProtocolError(400, "request target must be an absolute path")
    if version == b"HTTP/1.1":
        request = Request(method.decode(), target.decode(), http10=False)
    elif version == b"HTTP/1.0":
        request = Request(method.decode(), target.decode(), http10=True)
    elif _VERSION.fullmatch(version):
        raise ProtocolError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    else:
        raise ProtocolError(400, "malformed HTTP version")
    request.headers = _parse_fields(lines[1:])
    _read_request_semantics(request)
    return request


def _read_request_semantics(request: Request) -> None:
    hosts = 0
    transfer_encodings = 0
    extra_drop: set[bytes] = set()
    for name, value, _ in request.headers:
        if name == b"content-length":
            if request.content_length is not None:
                raise ProtocolError(400, "more than one Content-Length")
            if not value.isdigit() or len(value) > 18:
                raise ProtocolError(400, "invalid Content-Length")
            request.content_length = int(value)
        elif name == b"transfer-encoding":
            transfer_encodings += 1
            if value.lower() != b"chunked" or transfer_encodings > 1:
                raise ProtocolError(501, "only a single 'Transfer-Encoding: chunked' is supported")
            request.chunked = True
        elif name == b"host":
            hosts += 1
        elif name == b"connection":
            for token in value.lower().split(b","):
                token = token.strip()
                if token == b"close":
                    request.keep_alive = False
                elif token == b"keep-alive" and request.http10:
                    request.keep_alive = True
                elif token in _FRAMING:
                    # Dropping it upstream while framing the body by it here would smuggle a request.
                    raise ProtocolError(400, f"Connection may not name {token.decode()}")
                elif token:
                    extra_drop.add(token)
        elif name == b"expect":
            if value.lower() != b"100-continue":
                raise ProtocolError(417, "only 'Expect: 100-continue' is supported")
            request.expect_continue = not request.http10
        elif name == b"x-forwarded-for":
            request.forwarded_for.extend(
                normalize_forwarded(entry) for entry in value.decode("latin-1").split(",") if entry.strip()
            )
    if request.chunked and (request.content_length is not None or request.http10):
        raise ProtocolError(400, "Transfer-Encoding with Content-Length or in HTTP/1.0")
    if hosts > 1 or (hosts == 0 and not request.http10):
        raise ProtocolError(400, "an HTTP/1.1 request needs exactly one Host header")
    if request.http10:
        # Simpler and safe: HTTP/1.0 clients get one request per connection.
        request.keep_alive = False
    if extra_drop:
        request.drop = _REQUEST_DROP | extra_drop


def normalize_forwarded(entry: str) -> str:
    """`203.0.113.7:50312` -> `203.0.113.7`, `[2001:db8::1]:443` -> `2001:db8::1`.

    Azure's front ends write X-Forwarded-For entries with the client's source
    port, which Vault would record verbatim in its audit log.
    """
    entry = entry.strip()
    match = _IPV4_PORT.fullmatch(entry) or _BRACKETED_V6.fullmatch(entry)
    return match.group(1) if match else entry


def upstream_head(request: Request, client_address: str) -> bytes:
    """The request head to send to Vault."""
    method, target = request.method, request.target
    if method == "LIST":
        # The Functions host only admits standard methods; Vault treats
        # `GET ...?list=true` exactly like LIST.
        method = "GET"
        target += "&list=true" if "?" in target else "?list=true"
    forwarded = ", ".join(request.forwarded_for) if request.forwarded_for else client_address
    version = "HTTP/1.0" if request.http10 else "HTTP/1.1"
    parts = [f"{method} {target} {version}".encode("latin-1")]
    drop = request.drop
    parts.extend(raw for name, _, raw in request.headers if name not in drop)
    parts.append(b"X-Forwarded-For: " + forwarded.encode("latin-1"))
    parts.append(b"\r\n")
    return b"\r\n".join(parts)


class Response:
    """A parsed response head from Vault and how its body is framed."""

    __slots__ = ("chunked", "content_length", "head", "keep_alive", "status", "until_close")

    def __init__(self, status: int, head: bytes) -> None:
        self.status = status
        self.head = head
        self.content_length: int | None = None
        self.chunked = False
        self.until_close = False
        self.keep_alive = True


def parse_response(head: bytes, request_method: str, client_keep_alive: bool) -> Response:
    """Parse Vault's response head and build the head to send to the client.

    `head` includes the final empty line. The head is re-serialized only when
    a hop-by-hop header has to go, which for Vault's answers is rare.
    """
    lines = _split_lines(head[:-4])
    status_line = lines[0]
    if len(status_line) < 12 or not status_line.startswith(b"HTTP/1.") or not status_line[9:12].isdigit():
        raise ProtocolError(502, "malformed status line from Vault")
    response = Response(int(status_line[9:12]), head)
    fields = _parse_fields(lines[1:])
    rewrite = not client_keep_alive
    length_seen = False
    for name, value, _ in fields:
        if name in _RESPONSE_DROP:
            rewrite = True
            if name == b"connection" and b"close" in value.lower():
                response.keep_alive = False
        elif name == b"content-length":
            if length_seen or not value.isdigit():
                raise ProtocolError(502, "invalid Content-Length from Vault")
            length_seen = True
            response.content_length = int(value)
        elif name == b"transfer-encoding":
            response.chunked = value.lower().endswith(b"chunked")
            response.until_close = not response.chunked
    status = response.status
    if request_method == "HEAD" or status < 200 or status in (204, 304):
        response.content_length = 0
        response.chunked = response.until_close = False
    elif response.chunked or response.until_close:
        response.content_length = None
    elif response.content_length is None:
        response.until_close = True
    if response.until_close:
        response.keep_alive = False
        rewrite = True
    if rewrite:
        kept = [raw for name, _, raw in fields if name not in _RESPONSE_DROP]
        if not client_keep_alive or response.until_close:
            kept.append(b"Connection: close")
        response.head = b"\r\n".join([status_line, *kept, b"", b""])
    return response


class BodyFramer:
    """Finds where a body ends in a stream of bytes, without copying them.

    `feed(data, start)` returns the offset in `data` just past the bytes that
    belong to the body; `done` is set once the whole body has been seen.
    """

    __slots__ = ("_line", "_state", "_trailer_bytes", "chunked", "done", "remaining")

    def __init__(self, content_length: int | None, chunked: bool) -> None:
        self.chunked = chunked
        self.remaining = 0 if chunked else (content_length or 0)
        self.done = not chunked and self.remaining == 0
        self._state = 0  # chunked: 0 size line, 1 data, 2 CRLF after data, 3 trailer
        self._line = b""
        self._trailer_bytes = 0

    def feed(self, data: bytes, start: int = 0) -> int:
        if not self.chunked:
            take = min(self.remaining, len(data) - start)
            self.remaining -= take
            self.done = self.remaining == 0
            return start + take
        position = start
        end = len(data)
        while position < end and not self.done:
            if self._state == 1:
                take = min(self.remaining, end - position)
                position += take
                self.remaining -= take
                if self.remaining == 0:
                    self._state = 2
                continue
            line, position = self._read_line(data, position)
            if line is None:
                break
            if self._state == 0:
                self._start_chunk(line)
            elif self._state == 2:
                if line:
                    raise ProtocolError(400, "chunk data longer than its size")
                self._state = 0
            else:
                self._trailer_bytes += len(line) + 2
                if self._trailer_bytes > MAX_TRAILER_BYTES:
                    raise ProtocolError(431, "chunked trailer too large")
                if not line:
                    self.done = True
        return position

    def _read_line(self, data: bytes, position: int) -> tuple[bytes | None, int]:
        newline = data.find(b"\n", position)
        if newline < 0:
            self._line += data[position:]
            if len(self._line) > MAX_CHUNK_LINE:
                raise ProtocolError(400, "chunk size line too long")
            return None, len(data)
        line = self._line + data[position:newline]
        self._line = b""
        if not line.endswith(b"\r") or len(line) > MAX_CHUNK_LINE:
            raise ProtocolError(400, "malformed chunk framing")
        return line[:-1], newline + 1

    def _start_chunk(self, line: bytes) -> None:
        size = line.split(b";", 1)[0].rstrip(b" \t")
        if not _HEX.fullmatch(size):
            raise ProtocolError(400, "invalid chunk size")
        self.remaining = int(size, 16)
        self._state = 1 if self.remaining else 3
