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

_TOKEN_CHARS = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN = re.compile(_TOKEN_CHARS)
_TARGET = re.compile(rb"/[\x21-\x7e]*|\*")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# One pass over all header lines: a token name, a colon, then a value without
# control characters other than HTAB (so no CR or LF inside a line).
_FIELDS = re.compile(rb"(?:" + _TOKEN_CHARS + rb":[^\x00-\x08\x0a-\x1f\x7f]*(?:\r\n(?!\Z)|\Z))+")
_REQUEST_LINE = re.compile(rb"(" + _TOKEN_CHARS + rb") (/[\x21-\x7e]*|\*) (HTTP/1\.[01])")
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
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] \d{3}(?: [^\r\n]*)?")
_RESPONSE_FIELDS = re.compile(
    rb"\r\n(content-length|transfer-encoding|connection|keep-alive|proxy-connection|trailer|upgrade):([^\r\n]*)"
)
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})
# The request fields the proxy acts on; every other field passes untouched.
_REQUEST_SPECIAL = _REQUEST_DROP | {b"content-length", b"transfer-encoding", b"host"}
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
        "_headers",
        "block",
        "chunked",
        "content_length",
        "drop",
        "expect_continue",
        "forwarded_for",
        "http10",
        "keep_alive",
        "method",
        "raw_head",
        "rewrite",
        "target",
    )

    def __init__(self, method: str, target: str, http10: bool) -> None:
        self.method = method
        self.target = target
        self.http10 = http10
        self.raw_head = b""
        self.block = b""  # the header lines, validated
        self._headers: list[tuple[bytes, bytes, bytes]] | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = not http10
        self.expect_continue = False
        self.forwarded_for: list[str] = []
        self.drop: frozenset[bytes] = _REQUEST_DROP
        # Whether the head must be rebuilt for Vault, rather than forwarded as it came.
        self.rewrite = http10 or method == "LIST"

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def headers(self) -> list[tuple[bytes, bytes, bytes]]:
        """(lower name, value, raw line) of every field; built only when needed."""
        if self._headers is None:
            self._headers = _parse_fields(self.block)
        return self._headers

    def header(self, lower_name: bytes) -> bytes | None:
        for name, value, _ in self.headers:
            if name == lower_name:
                return value
        return None


def _field_error(block: bytes) -> ProtocolError:
    """The precise reason a header block failed the one-pass check."""
    for line in block.split(b"\r\n"):
        if b"\n" in line or b"\r" in line:
            return ProtocolError(400, "bare CR or LF in the message head")
        if line[:1] in (b" ", b"\t"):
            return ProtocolError(400, "obsolete line folding in a header field")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            return ProtocolError(400, "invalid header field name")
        if _BAD_VALUE.search(value):
            return ProtocolError(400, f"invalid character in header field {name.decode()!r}")
    return ProtocolError(400, "malformed header block")


def _parse_fields(block: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """Header lines as (lower name, value, raw line); `block` has no final CRLF."""
    if not block:
        return []
    if not _FIELDS.fullmatch(block):
        raise _field_error(block)
    lines = block.split(b"\r\n")
    if len(lines) > MAX_HEADERS:
        raise ProtocolError(431, f"more than {MAX_HEADERS} header fields")
    fields = []
    for line in lines:
        name, _, value = line.partition(b":")
        fields.append((name.lower(), value.strip(b" \t"), line))
    return fields


def parse_request(head: bytes) -> Request:
    """Parse a request head (without its final empty line)."""
    request_line, _, block = head.partition(b"\r\n")
    match = _REQUEST_LINE.fullmatch(request_line)
    if match is None:
        raise _request_line_error(request_line)
    method, target, version = match.groups()
    request = Request(method.decode(), target.decode(), http10=version == b"HTTP/1.0")
    request.raw_head = head
    if block:
        if not _FIELDS.fullmatch(block):
            raise _field_error(block)
        if block.count(b"\n") >= MAX_HEADERS:
            raise ProtocolError(431, f"more than {MAX_HEADERS} header fields")
        if not block.isascii():
            _check_utf8(block)
        request.block = block
    _read_request_semantics(request)
    return request


def _check_utf8(block: bytes) -> None:
    """RFC 9110 lets field values carry opaque bytes; Vault reads them as Go strings, so garbage is refused here."""
    for line in block.split(b"\r\n"):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            name = line.partition(b":")[0].decode("ascii")
            raise ProtocolError(
                400, f"header field {name!r} is not valid UTF-8; send ASCII, or percent-encode the value"
            ) from None


def _request_line_error(line: bytes) -> ProtocolError:
    parts = line.split(b" ")
    if b"\r" in line or b"\n" in line:
        return ProtocolError(400, "bare CR or LF in the message head")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        return ProtocolError(400, "malformed request line")
    if not _TARGET.fullmatch(parts[1]):
        return ProtocolError(400, "request target must be an absolute path")
    if _VERSION.fullmatch(parts[2]):
        return ProtocolError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    return ProtocolError(400, "malformed HTTP version")


def _read_request_semantics(request: Request) -> None:
    hosts = 0
    transfer_encodings = 0
    extra_drop: set[bytes] = set()
    for line in request.block.split(b"\r\n") if request.block else ():
        name, _, value = line.partition(b":")
        name = name.lower()
        if name not in _REQUEST_SPECIAL:
            continue
        value = value.strip(b" \t")
        if name in _REQUEST_DROP:
            request.rewrite = True
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
        request.rewrite = True


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
    if request.forwarded_for:
        forwarded = b"X-Forwarded-For: " + ", ".join(request.forwarded_for).encode("latin-1")
    elif client_address.startswith("127.") or client_address == "::1":
        # Vault records a loopback connection's own address, which is the same;
        # the templates set x_forwarded_for_reject_not_present = false for this.
        forwarded = b""
    else:
        forwarded = b"X-Forwarded-For: " + client_address.encode("latin-1")
    if not request.rewrite:
        return request.raw_head + (b"\r\n" + forwarded if forwarded else b"") + b"\r\n\r\n"
    method, target = request.method, request.target
    if method == "LIST":
        # The Functions host only admits standard methods; Vault treats
        # `GET ...?list=true` exactly like LIST.
        method = "GET"
        target += "&list=true" if "?" in target else "?list=true"
    version = "HTTP/1.0" if request.http10 else "HTTP/1.1"
    parts = [f"{method} {target} {version}".encode("latin-1")]
    drop = request.drop
    parts.extend(raw for name, _, raw in request.headers if name not in drop)
    if forwarded:
        parts.append(forwarded)
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

    `head` includes the final empty line. Vault is trusted to send valid
    fields, so only the framing and hop-by-hop ones are looked at, in one
    pass; the head is re-serialized only when one of those has to go, which
    for Vault's answers is rare.
    """
    status_line, _, block = head[:-4].partition(b"\r\n")
    if not _STATUS_LINE.fullmatch(status_line):
        raise ProtocolError(502, "malformed status line from Vault")
    response = Response(int(status_line[9:12]), head)
    rewrite = not client_keep_alive
    length_seen = False
    for name, value in _RESPONSE_FIELDS.findall(head.lower()):
        value = value.strip(b" \t")
        if name == b"content-length":
            if length_seen or not value.isdigit():
                raise ProtocolError(502, "invalid Content-Length from Vault")
            length_seen = True
            response.content_length = int(value)
        elif name == b"transfer-encoding":
            response.chunked = value.endswith(b"chunked")
            response.until_close = not response.chunked
        else:
            rewrite = True
            if name == b"connection" and b"close" in value:
                response.keep_alive = False
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
        kept = [raw for name, _, raw in _parse_fields(block) if name not in _RESPONSE_DROP]
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
