"""Unit tests of vault_handler.http11: request/response heads and body framing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vault_handler.http11 import (
    MAX_CHUNK_LINE,
    MAX_HEADERS,
    BodyFramer,
    ProtocolError,
    normalize_forwarded,
    parse_request,
    parse_response,
    upstream_head,
)


def head(*lines: bytes) -> bytes:
    """A request head as the proxy hands it over: CRLF-separated, no final empty line."""
    return b"\r\n".join(lines)


def refused(raw: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse_request(raw)
    return caught.value


# -- request heads: valid --------------------------------------------------------


def test_get_request_is_parsed():
    request = parse_request(head(b"GET /v1/sys/health?standbyok=true HTTP/1.1", b"Host: vault.example"))
    assert request.method == "GET"
    assert request.target == "/v1/sys/health?standbyok=true"
    assert request.path == "/v1/sys/health"
    assert request.http10 is False
    assert request.keep_alive is True
    assert request.content_length is None
    assert request.chunked is False
    assert request.has_body is False
    assert request.expect_continue is False
    assert request.forwarded_for == []
    assert request.header(b"host") == b"vault.example"
    assert request.header(b"x-missing") is None


def test_post_with_content_length():
    request = parse_request(
        head(b"POST /v1/secret/data/a HTTP/1.1", b"Host: h", b"Content-Length: 17", b"Content-Type: application/json")
    )
    assert request.method == "POST"
    assert request.content_length == 17
    assert request.has_body is True
    assert request.chunked is False


def test_content_length_zero_has_no_body():
    request = parse_request(head(b"PUT /v1/x HTTP/1.1", b"Host: h", b"Content-Length: 0"))
    assert request.content_length == 0
    assert request.has_body is False


def test_chunked_post():
    request = parse_request(head(b"POST /v1/x HTTP/1.1", b"Host: h", b"Transfer-Encoding: Chunked"))
    assert request.chunked is True
    assert request.content_length is None
    assert request.has_body is True


def test_list_method_is_parsed_as_is():
    request = parse_request(head(b"LIST /v1/secret/metadata/ HTTP/1.1", b"Host: h"))
    assert request.method == "LIST"
    assert request.path == "/v1/secret/metadata/"


def test_asterisk_target_is_accepted():
    assert parse_request(head(b"OPTIONS * HTTP/1.1", b"Host: h")).target == "*"


def test_header_raw_lines_and_values_are_preserved():
    raw_lines = [b"Host: h", b"X-Vault-Token:   s.abc  ", b"x-MiXeD-case:a\tb", b"X-Obs: caf\xc3\xa9"]
    request = parse_request(head(b"GET /v1/x HTTP/1.1", *raw_lines))
    assert [raw for _, _, raw in request.headers] == raw_lines
    assert [name for name, _, _ in request.headers] == [b"host", b"x-vault-token", b"x-mixed-case", b"x-obs"]
    # Values are trimmed of surrounding whitespace only; inner tabs and UTF-8 survive (other bytes: 400).
    assert request.header(b"x-vault-token") == b"s.abc"
    assert request.header(b"x-mixed-case") == b"a\tb"
    assert request.header(b"x-obs") == b"caf\xc3\xa9"


def test_header_returns_first_of_repeated_fields():
    request = parse_request(head(b"GET / HTTP/1.1", b"Host: h", b"X-A: 1", b"X-A: 2"))
    assert request.header(b"x-a") == b"1"


def test_connection_close_ends_keep_alive():
    request = parse_request(head(b"GET / HTTP/1.1", b"Host: h", b"Connection: Keep-Alive, Close"))
    assert request.keep_alive is False


def test_http10_request_never_keeps_alive_and_needs_no_host():
    request = parse_request(head(b"GET /v1/sys/health HTTP/1.0", b"Connection: keep-alive"))
    assert request.http10 is True
    assert request.keep_alive is False
    assert upstream_head(request, "10.0.0.1") == (b"GET /v1/sys/health HTTP/1.0\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n")


def test_http10_content_length_body():
    request = parse_request(head(b"POST /v1/x HTTP/1.0", b"Content-Length: 3"))
    assert request.content_length == 3


def test_expect_100_continue():
    request = parse_request(head(b"PUT /v1/x HTTP/1.1", b"Host: h", b"Content-Length: 3", b"Expect: 100-Continue"))
    assert request.expect_continue is True
    # HTTP/1.0 clients do not understand 100 Continue.
    request10 = parse_request(head(b"PUT /v1/x HTTP/1.0", b"Content-Length: 3", b"Expect: 100-continue"))
    assert request10.expect_continue is False


def test_expect_other_than_100_continue_is_417():
    error = refused(head(b"PUT /v1/x HTTP/1.1", b"Host: h", b"Expect: 200-ok"))
    assert error.status == 417


def test_exactly_max_headers_is_accepted():
    extra = [b"X-H%d: v" % i for i in range(MAX_HEADERS - 1)]
    request = parse_request(head(b"GET / HTTP/1.1", b"Host: h", *extra))
    assert len(request.headers) == MAX_HEADERS


# -- upstream head -----------------------------------------------------------------


def test_list_becomes_get_with_list_true():
    request = parse_request(head(b"LIST /v1/secret/metadata/ HTTP/1.1", b"Host: h"))
    assert upstream_head(request, "127.0.0.1") == (b"GET /v1/secret/metadata/?list=true HTTP/1.1\r\nHost: h\r\n\r\n")


def test_list_with_query_appends_list_true():
    request = parse_request(head(b"LIST /v1/auth/token/accessors?x=1 HTTP/1.1", b"Host: h"))
    first_line = upstream_head(request, "127.0.0.1").split(b"\r\n", 1)[0]
    assert first_line == b"GET /v1/auth/token/accessors?x=1&list=true HTTP/1.1"


def test_other_methods_are_forwarded_verbatim():
    request = parse_request(head(b"DELETE /v1/secret/data/a?versions=1 HTTP/1.1", b"Host: h"))
    assert upstream_head(request, "1.1.1.1").startswith(b"DELETE /v1/secret/data/a?versions=1 HTTP/1.1\r\n")


def test_hop_by_hop_and_proxy_headers_are_removed():
    request = parse_request(
        head(
            b"PUT /v1/sys/init HTTP/1.1",
            b"Host: vault.example",
            b"Connection: keep-alive, X-Private-Hop",
            b"Keep-Alive: timeout=5",
            b"TE: trailers",
            b"Trailer: X-T",
            b"Upgrade: websocket",
            b"Expect: 100-continue",
            b"Proxy-Connection: keep-alive",
            b"X-Private-Hop: secret",
            b"X-Vaultfn-Init-Token: 0123456789abcdef0123",
            b"X-Forwarded-For: 203.0.113.7:50312",
            b"X-Vault-Token: s.token",
            b"Content-Length: 2",
        )
    )
    assert upstream_head(request, "127.0.0.1") == (
        b"PUT /v1/sys/init HTTP/1.1\r\n"
        b"Host: vault.example\r\n"
        b"X-Vault-Token: s.token\r\n"
        b"Content-Length: 2\r\n"
        b"X-Forwarded-For: 203.0.113.7\r\n"
        b"\r\n"
    )


def test_chunked_framing_header_is_kept():
    request = parse_request(head(b"POST /v1/x HTTP/1.1", b"Host: h", b"Transfer-Encoding: chunked"))
    assert b"\r\nTransfer-Encoding: chunked\r\n" in upstream_head(request, "127.0.0.1")


def test_connection_named_header_only_dropped_when_named():
    request = parse_request(head(b"GET / HTTP/1.1", b"Host: h", b"X-Private-Hop: kept"))
    assert b"X-Private-Hop: kept" in upstream_head(request, "127.0.0.1")


@pytest.mark.parametrize(
    ("framing", "name"),
    [(b"Content-Length: 5", b"content-length"), (b"Transfer-Encoding: chunked", b"transfer-encoding")],
)
def test_connection_cannot_drop_body_framing_headers(framing: bytes, name: bytes):
    raw = head(b"POST /v1/sys/health HTTP/1.1", b"Host: h", b"Connection: " + name, framing)
    try:
        request = parse_request(raw)
    except ProtocolError as error:  # refusing the request is a correct fix too
        assert error.status == 400
        return
    assert b"\r\n" + framing + b"\r\n" in upstream_head(request, "127.0.0.1")


# -- X-Forwarded-For ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("1.2.3.4:5678", "1.2.3.4"),
        ("  1.2.3.4:5678 ", "1.2.3.4"),
        ("1.2.3.4", "1.2.3.4"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
        ("unknown", "unknown"),
        ("1.2.3.4:123456", "1.2.3.4:123456"),
    ],
)
def test_normalize_forwarded(entry: str, expected: str):
    assert normalize_forwarded(entry) == expected


def test_forwarded_for_entries_are_normalized_and_joined():
    request = parse_request(
        head(
            b"GET /v1/x HTTP/1.1",
            b"Host: h",
            b"X-Forwarded-For: 1.2.3.4:5678, [2001:db8::1]:443,, ",
            b"X-Forwarded-For: 2001:db8::2",
        )
    )
    assert request.forwarded_for == ["1.2.3.4", "2001:db8::1", "2001:db8::2"]
    assert upstream_head(request, "127.0.0.1").endswith(
        b"\r\nX-Forwarded-For: 1.2.3.4, 2001:db8::1, 2001:db8::2\r\n\r\n"
    )
    assert upstream_head(request, "127.0.0.1").count(b"X-Forwarded-For") == 1


def test_forwarded_for_absent_uses_client_address():
    request = parse_request(head(b"GET /v1/x HTTP/1.1", b"Host: h"))
    assert upstream_head(request, "198.51.100.9") == (
        b"GET /v1/x HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 198.51.100.9\r\n\r\n"
    )


@pytest.mark.parametrize("loopback", ["127.0.0.1", "127.8.9.10", "::1"])
def test_loopback_client_without_forwarded_for_is_forwarded_unchanged(loopback: str):
    raw = head(b"GET /v1/x?a=b HTTP/1.1", b"Host: h", b"X-Vault-Token: t", b"Accept: */*")
    request = parse_request(raw)
    assert upstream_head(request, loopback) == raw + b"\r\n\r\n"


def test_plain_head_from_remote_client_gets_forwarded_for_appended():
    raw = head(b"PUT /v1/x HTTP/1.1", b"Host: h", b"Content-Length: 2")
    assert upstream_head(parse_request(raw), "198.51.100.9") == raw + b"\r\nX-Forwarded-For: 198.51.100.9\r\n\r\n"


def test_empty_forwarded_for_uses_client_address():
    request = parse_request(head(b"GET /v1/x HTTP/1.1", b"Host: h", b"X-Forwarded-For: "))
    assert upstream_head(request, "198.51.100.9").endswith(b"X-Forwarded-For: 198.51.100.9\r\n\r\n")


# -- request heads: refused ------------------------------------------------------

REQUEST_LINE = b"POST /v1/x HTTP/1.1"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        # Content-Length and Transfer-Encoding together, in both orders.
        (head(REQUEST_LINE, b"Host: h", b"Content-Length: 5", b"Transfer-Encoding: chunked"), 400),
        (head(REQUEST_LINE, b"Host: h", b"Transfer-Encoding: chunked", b"Content-Length: 5"), 400),
        # Duplicate or non-numeric Content-Length.
        (head(REQUEST_LINE, b"Host: h", b"Content-Length: 5", b"Content-Length: 5"), 400),
        (head(REQUEST_LINE, b"Host: h", b"Content-Length: 5", b"content-length: 6"), 400),
        (head(REQUEST_LINE, b"Host: h", b"Content-Length: 5, 5"), 400),
        (head(REQUEST_LINE, b"Host: h", b"Content-Length: abc"), 400),
        (head(REQUEST_LINE, b"Host: h", b"Content-Length: -1"), 400),
        (head(REQUEST_LINE, b"Host: h", b"Content-Length: +5"), 400),
        (head(REQUEST_LINE, b"Host: h", b"Content-Length: 0x10"), 400),
        (head(REQUEST_LINE, b"Host: h", b"Content-Length: 1.0"), 400),
        (head(REQUEST_LINE, b"Host: h", b"Content-Length: "), 400),
        (head(REQUEST_LINE, b"Host: h", b"Content-Length: 1234567890123456789"), 400),
        # Transfer-Encoding other than one plain chunked.
        (head(REQUEST_LINE, b"Host: h", b"Transfer-Encoding: gzip"), 501),
        (head(REQUEST_LINE, b"Host: h", b"Transfer-Encoding: gzip, chunked"), 501),
        (head(REQUEST_LINE, b"Host: h", b"Transfer-Encoding: chunked, chunked"), 501),
        (head(REQUEST_LINE, b"Host: h", b"Transfer-Encoding: identity"), 501),
        (head(REQUEST_LINE, b"Host: h", b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), 501),
        (head(REQUEST_LINE, b"Host: h", b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip"), 501),
        (head(b"POST /v1/x HTTP/1.0", b"Transfer-Encoding: chunked"), 400),
        # Obsolete line folding, whitespace before the colon, bad names.
        (head(REQUEST_LINE, b"Host: h", b"X-A: one", b" two"), 400),
        (head(REQUEST_LINE, b"Host: h", b"X-A: one", b"\ttwo"), 400),
        (head(REQUEST_LINE, b"Host : h"), 400),
        (head(REQUEST_LINE, b"Host: h", b"Content-Length : 5"), 400),
        (head(REQUEST_LINE, b"Host: h", b"Transfer-Encoding\t: chunked"), 400),
        (head(REQUEST_LINE, b"Host: h", b": empty name"), 400),
        (head(REQUEST_LINE, b"Host: h", b"No colon"), 400),
        (head(REQUEST_LINE, b"Host: h", b"X(A): b"), 400),
        (head(REQUEST_LINE, b"Host: h", b""), 400),
        # Bare LF or CR anywhere in the head.
        (b"GET /v1/x HTTP/1.1\nHost: h", 400),
        (b"GET /v1/x HTTP/1.1\r\nHost: h\nX-A: b", 400),
        (b"GET /v1/x HTTP/1.1\r\nHost: h\rX-A: b", 400),
        (b"GET /v1/x HTTP/1.1\r\nX-A: a\rb\r\nHost: h", 400),
        (b"GET /v1/x HTTP/1.1\r\nHost: h\r\n", 400),
        # Control characters in values.
        (head(REQUEST_LINE, b"Host: h", b"X-A: a\x00b"), 400),
        (head(REQUEST_LINE, b"Host: h", b"X-A: a\x01b"), 400),
        (head(REQUEST_LINE, b"Host: h", b"X-A: a\x1bb"), 400),
        (head(REQUEST_LINE, b"Host: h", b"X-A: a\x7fb"), 400),
        # Host: exactly one in HTTP/1.1.
        (head(REQUEST_LINE), 400),
        (head(REQUEST_LINE, b"X-A: b"), 400),
        (head(REQUEST_LINE, b"Host: a", b"Host: b"), 400),
        (head(REQUEST_LINE, b"Host: a", b"host: a"), 400),
        (head(b"GET / HTTP/1.0", b"Host: a", b"Host: b"), 400),
        # Versions.
        (head(b"GET / HTTP/2.0", b"Host: h"), 505),
        (head(b"GET / HTTP/1.2", b"Host: h"), 505),
        (head(b"GET / HTTP/0.9", b"Host: h"), 505),
        (head(b"GET / HTTP/1.1x", b"Host: h"), 400),
        (head(b"GET / http/1.1", b"Host: h"), 400),
        (head(b"GET / HTTP/11", b"Host: h"), 400),
        (head(b"GET / FOO", b"Host: h"), 400),
        # Request line shape and target form.
        (head(b"GET http://vault.example/v1/x HTTP/1.1", b"Host: h"), 400),
        (head(b"CONNECT vault.example:443 HTTP/1.1", b"Host: h"), 400),
        (head(b"GET v1/x HTTP/1.1", b"Host: h"), 400),
        (head(b"GET /v1/\x7f HTTP/1.1", b"Host: h"), 400),
        (head(b"GET /v1/\xc3\xa9 HTTP/1.1", b"Host: h"), 400),
        (head(b"GET  /v1/x HTTP/1.1", b"Host: h"), 400),
        (head(b"GET /v1/x  HTTP/1.1", b"Host: h"), 400),
        (head(b"GET /v1/x HTTP/1.1 ", b"Host: h"), 400),
        (head(b"GET /v1/x", b"Host: h"), 400),
        (head(b"G(T /v1/x HTTP/1.1", b"Host: h"), 400),
        (head(b" GET /v1/x HTTP/1.1", b"Host: h"), 400),
        (b"", 400),
        # Too many header fields.
        (head(b"GET / HTTP/1.1", b"Host: h", *[b"X-H%d: v" % i for i in range(MAX_HEADERS)]), 431),
        # Expectations other than 100-continue.
        (head(REQUEST_LINE, b"Host: h", b"Expect: 100-continue, foo"), 417),
    ],
)
def test_refused_requests(raw: bytes, status: int):
    assert refused(raw).status == status


def test_refusal_reasons_name_the_problem():
    assert (
        "Content-Length" in refused(head(REQUEST_LINE, b"Host: h", b"Content-Length: 1", b"Content-Length: 1")).reason
    )
    assert "folding" in refused(head(REQUEST_LINE, b"Host: h", b"X-A: one", b" two")).reason
    assert "'X-A'" in refused(head(REQUEST_LINE, b"Host: h", b"X-A: \x00")).reason
    assert "Host" in refused(head(REQUEST_LINE)).reason
    error = refused(head(b"GET / HTTP/2.0", b"Host: h"))
    assert str(error) == error.reason == "only HTTP/1.0 and HTTP/1.1 are supported"


# -- response heads ------------------------------------------------------------------


def response_head(*lines: bytes) -> bytes:
    """A response head as the proxy hands it over: including the final empty line."""
    return b"\r\n".join([*lines, b"", b""])


def test_response_with_content_length_is_passed_unchanged():
    raw = response_head(b"HTTP/1.1 200 OK", b"Content-Type: application/json", b"Content-Length: 12")
    response = parse_response(raw, "GET", client_keep_alive=True)
    assert response.status == 200
    assert response.content_length == 12
    assert response.chunked is False
    assert response.until_close is False
    assert response.keep_alive is True
    assert response.head is raw


def test_chunked_response():
    raw = response_head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", b"Date: x")
    response = parse_response(raw, "GET", client_keep_alive=True)
    assert response.chunked is True
    assert response.content_length is None
    assert response.until_close is False
    assert response.keep_alive is True
    assert response.head is raw


def test_chunked_wins_over_content_length_in_response():
    raw = response_head(b"HTTP/1.1 200 OK", b"Content-Length: 10", b"Transfer-Encoding: chunked")
    response = parse_response(raw, "GET", client_keep_alive=True)
    assert response.chunked is True
    assert response.content_length is None


@pytest.mark.parametrize("extra", [[], [b"Transfer-Encoding: gzip"]])
def test_close_delimited_response(extra: list[bytes]):
    raw = response_head(b"HTTP/1.1 200 OK", b"Content-Type: text/plain", *extra)
    response = parse_response(raw, "GET", client_keep_alive=True)
    assert response.until_close is True
    assert response.chunked is False
    assert response.content_length is None
    assert response.keep_alive is False
    assert response.head == response_head(b"HTTP/1.1 200 OK", b"Content-Type: text/plain", *extra, b"Connection: close")


@pytest.mark.parametrize(
    ("method", "status_line", "extra"),
    [
        ("HEAD", b"HTTP/1.1 200 OK", [b"Content-Length: 120"]),
        ("HEAD", b"HTTP/1.1 200 OK", [b"Transfer-Encoding: chunked"]),
        ("HEAD", b"HTTP/1.1 200 OK", []),
        ("GET", b"HTTP/1.1 204 No Content", []),
        ("DELETE", b"HTTP/1.1 204 No Content", [b"Content-Length: 5"]),
        ("GET", b"HTTP/1.1 304 Not Modified", [b"Content-Length: 120"]),
        ("GET", b"HTTP/1.1 304 Not Modified", [b"Transfer-Encoding: chunked"]),
        ("PUT", b"HTTP/1.1 100 Continue", []),
    ],
)
def test_responses_without_body(method: str, status_line: bytes, extra: list[bytes]):
    raw = response_head(status_line, *extra)
    response = parse_response(raw, method, client_keep_alive=True)
    assert response.content_length == 0
    assert response.chunked is False
    assert response.until_close is False
    assert response.keep_alive is True
    assert response.head is raw
    assert BodyFramer(response.content_length, response.chunked).done is True


def test_vault_connection_close_is_stripped_but_remembered():
    raw = response_head(b"HTTP/1.1 200 OK", b"Connection: close", b"Content-Length: 2")
    response = parse_response(raw, "GET", client_keep_alive=True)
    assert response.keep_alive is False
    assert response.content_length == 2
    # The client's own connection stays open: the upstream one is Vault's business.
    assert response.head == response_head(b"HTTP/1.1 200 OK", b"Content-Length: 2")


def test_connection_close_added_when_client_is_not_keep_alive():
    raw = response_head(b"HTTP/1.1 200 OK", b"Content-Length: 2")
    response = parse_response(raw, "GET", client_keep_alive=False)
    assert response.keep_alive is True
    assert response.head == response_head(b"HTTP/1.1 200 OK", b"Content-Length: 2", b"Connection: close")


def test_connection_close_appears_once():
    raw = response_head(b"HTTP/1.1 200 OK", b"Connection: close")
    response = parse_response(raw, "GET", client_keep_alive=False)
    assert response.head == response_head(b"HTTP/1.1 200 OK", b"Connection: close")
    assert response.head.count(b"Connection") == 1


def test_response_hop_by_hop_headers_are_stripped():
    raw = response_head(
        b"HTTP/1.1 200 OK",
        b"Keep-Alive: timeout=5",
        b"Connection: keep-alive",
        b"Proxy-Connection: keep-alive",
        b"Upgrade: h2c",
        b"Trailer: X-T",
        b"Cache-Control: no-store",
        b"Content-Length: 0",
    )
    response = parse_response(raw, "GET", client_keep_alive=True)
    assert response.keep_alive is True
    assert response.head == response_head(b"HTTP/1.1 200 OK", b"Cache-Control: no-store", b"Content-Length: 0")


def test_error_status_is_parsed():
    raw = response_head(b"HTTP/1.1 404 Not Found", b"Content-Length: 17")
    assert parse_response(raw, "GET", client_keep_alive=True).status == 404
    raw10 = response_head(b"HTTP/1.0 503", b"Content-Length: 0")
    assert parse_response(raw10, "GET", client_keep_alive=True).status == 503


@pytest.mark.parametrize(
    "raw",
    [
        response_head(b"HTTP/2 200 OK", b"Content-Length: 0"),
        response_head(b"HTTP/1.1 2x0 OK", b"Content-Length: 0"),
        response_head(b"ICY 200 OK", b"Content-Length: 0"),
        response_head(b"HTTP/1.1 200 OK", b"Content-Length: 1", b"Content-Length: 1"),
        response_head(b"HTTP/1.1 200 OK", b"Content-Length: x"),
        response_head(b"HTTP/1.1 200 OK", b"Content-Length: -1"),
    ],
)
def test_malformed_responses_are_502(raw: bytes):
    with pytest.raises(ProtocolError) as caught:
        parse_response(raw, "GET", client_keep_alive=True)
    assert caught.value.status == 502


def test_bare_lf_in_response_is_refused():
    with pytest.raises(ProtocolError, match="bare CR or LF"):
        parse_response(b"HTTP/1.1 200 OK\r\nX: a\nContent-Length: 0\r\n\r\n", "GET", client_keep_alive=True)


# -- body framing: Content-Length ----------------------------------------------------


def test_content_length_counts_across_chunks_and_stops_at_the_boundary():
    framer = BodyFramer(10, chunked=False)
    assert framer.done is False
    assert framer.feed(b"abcd") == 4
    assert framer.remaining == 6
    assert framer.done is False
    data = b"efghijGET / HTTP/1.1\r\n"
    assert framer.feed(data) == 6
    assert framer.done is True
    assert data[6:] == b"GET / HTTP/1.1\r\n"
    # Once done, nothing more belongs to the body.
    assert framer.feed(b"more") == 0


def test_content_length_with_start_offset():
    framer = BodyFramer(3, chunked=False)
    assert framer.feed(b"HEADabcNEXT", 4) == 7
    assert framer.done is True


@pytest.mark.parametrize("length", [0, None])
def test_no_body_is_done_at_once(length: int | None):
    framer = BodyFramer(length, chunked=False)
    assert framer.done is True
    assert framer.feed(b"NEXT", 2) == 2


# -- body framing: chunked -----------------------------------------------------------


def feed_all(framer: BodyFramer, parts: list[bytes]) -> int:
    """Feed parts in order; the total number of bytes that belong to the body."""
    consumed = 0
    for part in parts:
        end = framer.feed(part)
        consumed += end
        if framer.done:
            break
        assert end == len(part), "the framer stopped early without being done"
    return consumed


CHUNKED = b"5\r\nhello\r\n1a;name=value;x\r\n" + b"z" * 26 + b"\r\n0\r\nX-Trailer: a\r\nY: b\r\n\r\n"


def test_chunked_all_at_once():
    framer = BodyFramer(None, chunked=True)
    data = CHUNKED + b"GET / HTTP/1.1\r\n"
    assert framer.feed(data) == len(CHUNKED)
    assert framer.done is True
    assert framer.feed(b"more") == 0


def test_chunked_one_byte_at_a_time_gives_the_same_end():
    data = CHUNKED + b"NEXT"
    framer = BodyFramer(None, chunked=True)
    consumed = feed_all(framer, [data[i : i + 1] for i in range(len(data))])
    assert framer.done is True
    assert consumed == len(CHUNKED)


def test_chunked_with_start_offset():
    framer = BodyFramer(None, chunked=True)
    data = b"HEAD" + b"3\r\nabc\r\n0\r\n\r\n" + b"NEXT"
    assert framer.feed(data, 4) == len(data) - 4
    assert framer.done is True


def test_chunked_not_done_until_final_crlf():
    framer = BodyFramer(None, chunked=True)
    assert framer.feed(b"3\r\nabc\r\n0\r\n") == 11
    assert framer.done is False
    assert framer.feed(b"\r\nNEXT") == 2
    assert framer.done is True


@pytest.mark.parametrize(
    "body",
    [
        b"0\r\n\r\n",
        b"0;ext=1\r\n\r\n",
        b"A\r\n0123456789\r\n0\r\n\r\n",
        b"a\r\n0123456789\r\n0\r\n\r\n",
        b"0005\r\nhello\r\n0\r\n\r\n",
        b"5 ;ext\r\nhello\r\n0\r\n\r\n",
        b'5;a="quoted; value"\r\nhello\r\n0\r\n\r\n',
        b"0\r\nX-Checksum: abc\r\n\r\n",
    ],
)
def test_valid_chunked_bodies(body: bytes):
    framer = BodyFramer(None, chunked=True)
    assert framer.feed(body + b"X") == len(body)
    assert framer.done is True


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"zz\r\n", 400),
        (b"-1\r\n", 400),
        (b"\r\n", 400),
        (b" 5\r\nhello\r\n", 400),
        (b"0x5\r\nhello\r\n", 400),
        (b"1000000000000000\r\n", 400),  # 16 hex digits
        (b"5\nhello\r\n0\r\n\r\n", 400),  # bare LF after the size
        (b"5\r\nhelloX\r\n0\r\n\r\n", 400),  # data longer than its size
        (b"5\r\nhello0\r\n\r\n", 400),  # no CRLF after the data
        (b"5\r\nhello\n0\r\n\r\n", 400),  # bare LF after the data
        (b"0\r\nX: a\n\r\n", 400),  # bare LF in a trailer
        (b"5;" + b"e" * MAX_CHUNK_LINE + b"\r\nhello\r\n", 400),  # oversized size line, complete
    ],
)
def test_invalid_chunked_bodies(body: bytes, status: int):
    framer = BodyFramer(None, chunked=True)
    with pytest.raises(ProtocolError) as caught:
        framer.feed(body)
    assert caught.value.status == status


def test_oversized_chunk_line_fed_in_pieces_is_refused_without_a_newline():
    framer = BodyFramer(None, chunked=True)
    framer.feed(b"5;" + b"e" * 1000)
    with pytest.raises(ProtocolError) as caught:
        for _ in range(10):
            framer.feed(b"e" * 1000)
    assert caught.value.status == 400
    assert "too long" in caught.value.reason


def test_oversized_trailer_is_refused():
    framer = BodyFramer(None, chunked=True)
    framer.feed(b"0\r\n")
    line = b"X-T: " + b"v" * 1000 + b"\r\n"
    with pytest.raises(ProtocolError) as caught:
        for _ in range(20):
            framer.feed(line)
    assert caught.value.status == 431


# -- properties ----------------------------------------------------------------------

chunk_extension = st.sampled_from([b"", b";a", b";a=b", b' ;n="v"'])
trailer_lines = st.lists(st.sampled_from([b"X-A: 1", b"Checksum: abc", b"X-Empty:"]), max_size=3)


@st.composite
def chunked_messages(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    chunks = draw(st.lists(st.binary(min_size=1, max_size=300), max_size=6))
    body = b""
    for chunk in chunks:
        size = draw(st.sampled_from(["%x", "%X", "%04x"])) % len(chunk)
        body += size.encode() + draw(chunk_extension) + b"\r\n" + chunk + b"\r\n"
    body += b"0" + draw(chunk_extension) + b"\r\n"
    body += b"".join(line + b"\r\n" for line in draw(trailer_lines)) + b"\r\n"
    data = body + draw(st.binary(max_size=40))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return body, parts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunked_messages())
def test_chunked_framer_finds_exactly_the_end(message: tuple[bytes, list[bytes]]):
    body, parts = message
    framer = BodyFramer(None, chunked=True)
    assert feed_all(framer, parts) == len(body)
    assert framer.done is True


_LINES = [
    b"GET / HTTP/1.1",
    b"POST /v1/x HTTP/1.1",
    b"POST /v1/x HTTP/1.0",
    b"Host: h",
    b"Content-Length: 5",
    b"Content-Length: 0",
    b"content-length:7",
    b"Content-Length : 5",
    b"Transfer-Encoding: chunked",
    b"transfer-encoding:CHUNKED",
    b"Transfer-Encoding: chunked, identity",
    b"Transfer-Encoding : chunked",
    b" Transfer-Encoding: chunked",
    b"Transfer-Encoding:\tchunked",
    b"Transfer-Encoding: \x0bchunked",
    b"Connection: close",
    b"Connection: content-length",
    b"X-A: b",
    b"",
]


@st.composite
def plausible_heads(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.sampled_from(_LINES), min_size=1, max_size=8))
    separator = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r"]))
    return separator.join(lines)


def _check_parse(raw: bytes) -> None:
    try:
        request = parse_request(raw)
    except ProtocolError as error:
        assert error.status in (400, 417, 431, 501, 505)
        return
    assert not (request.chunked and request.content_length is not None)
    names = [name for name, _, _ in request.headers]
    assert not (b"content-length" in names and b"transfer-encoding" in names)
    assert names.count(b"content-length") <= 1
    assert names.count(b"transfer-encoding") <= 1
    assert isinstance(upstream_head(request, "127.0.0.1"), bytes)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_parse_request_only_raises_protocol_error(raw: bytes):
    _check_parse(raw)


@settings(max_examples=500, deadline=None)
@given(st.one_of(plausible_heads(), st.binary(max_size=200).map(lambda b: b"GET / HTTP/1.1\r\nHost: h\r\n" + b)))
def test_parse_request_never_accepts_both_framings(raw: bytes):
    _check_parse(raw)
