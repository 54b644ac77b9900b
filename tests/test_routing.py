"""Unit tests of vault_handler.routing and the HTTP function's route in function.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vault_handler.http11 import Request, parse_request, upstream_head
from vault_handler.routing import PROXY, Decision, decide, is_vault_path

INIT_TOKEN = "0123456789abcdef0123456789abcdef"
FUNCTION_JSON = Path(__file__).resolve().parent.parent / "vault_handler" / "function.json"


def request(method: str, target: str, *headers: bytes) -> Request:
    return parse_request(b"\r\n".join([f"{method} {target} HTTP/1.1".encode(), b"Host: vault.example", *headers]))


def token_header(token: str) -> bytes:
    return b"X-Vaultfn-Init-Token: " + token.encode()


# -- proxy, invoke, answer ---------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "LIST"])
@pytest.mark.parametrize(
    "target",
    ["/", "/v1", "/ui", "/v1/sys/health", "/v1/secret/data/a?version=2", "/ui/vault/auth", "/v1/sys/init-x"],
)
def test_vault_paths_are_proxied(method: str, target: str):
    assert decide(request(method, target), None) is PROXY
    assert decide(request(method, target), INIT_TOKEN) is PROXY


def test_proxy_decision():
    assert Decision("proxy") == PROXY
    assert PROXY.kind == "proxy"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", True),
        ("/v1", True),
        ("/v1/", True),
        ("/v1/sys/health", True),
        ("/ui", True),
        ("/ui/", True),
        ("/ui/vault", True),
        ("", False),
        ("/v1x", False),
        ("/v2/x", False),
        ("/uix/y", False),
        ("/keepwarm_timer", False),
        ("/api/x", False),
        ("//v1/x", False),
    ],
)
def test_is_vault_path(path: str, expected: bool):
    assert is_vault_path(path) is expected


@pytest.mark.parametrize("name", ["keepwarm_timer", "backup_timer", "a", "Timer-2", "x" * 128])
def test_post_to_a_function_name_is_an_invocation(name: str):
    assert decide(request("POST", f"/{name}"), None) == Decision("invoke", function=name)


def test_invocation_ignores_the_query():
    assert decide(request("POST", "/keepwarm_timer?code=abc"), None) == Decision("invoke", function="keepwarm_timer")


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE"])
def test_other_methods_on_a_function_name_are_404(method: str):
    decision = decide(request(method, "/keepwarm_timer"), None)
    assert decision.kind == "answer"
    assert decision.status == 404
    assert decision.message.startswith(f"no route for {method} /keepwarm_timer: ")
    assert "/v1/" in decision.message


@pytest.mark.parametrize(
    "target",
    ["/api/keepwarm_timer", "/1timer", "/_timer", "/" + "x" * 129, "/timer/", "/timer.py", "/v1x/y", "/%6beepwarm"],
)
def test_post_to_other_paths_is_404(target: str):
    decision = decide(request("POST", target), None)
    assert decision.kind == "answer"
    assert decision.status == 404


# -- the sys/init guard ------------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_init_refused_without_a_configured_token(method: str):
    decision = decide(request(method, "/v1/sys/init", b"Content-Length: 2", token_header(INIT_TOKEN)), None)
    assert decision.kind == "answer"
    assert decision.status == 403
    assert "VAULTFN_INIT_TOKEN" in decision.message
    assert "X-Vaultfn-Init-Token" in decision.message
    assert "set the app setting" in decision.message


@pytest.mark.parametrize(
    "offered",
    [None, "", "wrong", INIT_TOKEN[:-1], INIT_TOKEN + "0", INIT_TOKEN.upper(), " " + INIT_TOKEN + "x"],
)
def test_init_refused_with_a_wrong_token(offered: str | None):
    headers = [] if offered is None else [token_header(offered)]
    decision = decide(request("PUT", "/v1/sys/init", *headers), INIT_TOKEN)
    assert decision.kind == "answer"
    assert decision.status == 403
    assert "X-Vaultfn-Init-Token" in decision.message
    assert INIT_TOKEN not in decision.message


@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_init_allowed_with_the_right_token(method: str):
    assert decide(request(method, "/v1/sys/init", token_header(INIT_TOKEN)), INIT_TOKEN) is PROXY


def test_init_token_header_name_is_case_insensitive_and_value_is_trimmed():
    raw = b"x-VAULTFN-init-token:   " + INIT_TOKEN.encode() + b"  "
    assert decide(request("PUT", "/v1/sys/init", raw), INIT_TOKEN) is PROXY


def test_init_token_is_not_forwarded_to_vault():
    allowed = request("PUT", "/v1/sys/init", token_header(INIT_TOKEN), b"Content-Length: 2")
    assert decide(allowed, INIT_TOKEN) is PROXY
    forwarded = upstream_head(allowed, "127.0.0.1")
    assert INIT_TOKEN.encode() not in forwarded
    assert b"init-token" not in forwarded.lower()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_init_status_reads_pass(method: str):
    assert decide(request(method, "/v1/sys/init"), None) is PROXY


@pytest.mark.parametrize("method", ["DELETE", "PATCH", "OPTIONS"])
def test_init_other_writes_are_guarded(method: str):
    decision = decide(request(method, "/v1/sys/init"), None)
    assert (decision.kind, decision.status) == ("answer", 403)


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/v1/sys//init", 403),
        ("/v1//sys/init", 403),
        ("/v1/sys/init/", 403),
        ("/v1/sys/init//", 403),
        ("/v1/sys/init?x=1", 403),
        ("/v1/sys/%69nit", 403),
        ("/v1/sys/%69%6E%69%74", 403),
        ("/v1/sys%2Finit", 403),
        ("/v1/sys/init%2F", 403),
        ("/v1/sys/./init", 403),
        ("/v1/sys/%2e/init", 403),
        ("/v1/sys/init/.", 403),
        ("/v1/secret/../sys/init", 403),
        ("/v1/sys/%2e%2e/sys/init", 403),
        ("/ui/../v1/sys/init", 403),
        ("/v1/SYS/INIT", 403),
        ("/v1/Sys/Init", 403),
        # Not a Vault path for this handler at all (Vault's own router is case-sensitive).
        ("/V1/SYS/INIT", 404),
        ("/V1/sys/init", 404),
    ],
)
def test_init_guard_bypass_attempts(target: str, status: int):
    for token in (None, INIT_TOKEN):
        decision = decide(request("PUT", target, token_header("not-the-token-at-all")), token)
        assert decision.kind == "answer", f"{target} with token {token!r} was {decision}"
        assert decision.status == status


def test_guard_bypass_attempts_pass_with_the_right_token():
    for target in ("/v1/sys//init", "/v1/sys/%69nit", "/v1/sys/./init", "/v1/SYS/INIT"):
        assert decide(request("PUT", target, token_header(INIT_TOKEN)), INIT_TOKEN) is PROXY


# -- function.json -----------------------------------------------------------------


def http_binding() -> dict:
    bindings = json.loads(FUNCTION_JSON.read_text(encoding="utf-8"))["bindings"]
    (trigger,) = [binding for binding in bindings if binding["type"] == "httpTrigger"]
    return trigger


def route_pattern() -> re.Pattern[str]:
    route = http_binding()["route"]
    match = re.fullmatch(r"\{\*path:regex\((.*)\)\}", route)
    assert match, f"unexpected route shape {route!r}"
    # ASP.NET route constraints match case-insensitively.
    return re.compile(match.group(1), re.IGNORECASE)


@pytest.mark.parametrize(
    "path",
    ["v1", "v1/", "v1/sys/health", "v1/sys/init", "v1/secret/data/a/b", "ui", "ui/", "ui/vault/auth", "V1/Sys", "UI"],
)
def test_function_route_admits_vault_paths(path: str):
    assert route_pattern().search(path)


@pytest.mark.parametrize(
    "path",
    ["keepwarm_timer", "backup_timer", "api/x", "api/v1/x", "v1x", "v1x/y", "uix", "v2/x", "xv1", "x/v1/y", "", "/v1"],
)
def test_function_route_refuses_other_paths(path: str):
    assert route_pattern().search(path) is None


def test_function_binding_is_anonymous_and_allows_vaults_methods():
    binding = http_binding()
    assert binding["authLevel"] == "anonymous"
    assert binding["direction"] == "in"
    assert {method.lower() for method in binding["methods"]} >= {"get", "head", "post", "put", "delete"}
