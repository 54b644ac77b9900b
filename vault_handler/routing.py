"""Decide what happens to a request: proxy it, run a host invocation, or refuse.

Vault's own paths (`/`, `/v1/...`, `/ui/...`) go to Vault. The Functions host
POSTs every non-HTTP trigger to `/<functionName>`; the HTTP function's route
in function.json admits only Vault's paths, so such a request can only come
from the host (or from a local caller under `make run`).
"""

from __future__ import annotations

import hmac
import posixpath
import re
from dataclasses import dataclass
from urllib.parse import unquote

from .http11 import Request

INIT_TOKEN_HEADER = b"x-vaultfn-init-token"
_FUNCTION_PATH = re.compile(r"/([A-Za-z][A-Za-z0-9_-]{0,127})")
_READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class Decision:
    kind: str  # "proxy", "invoke" or "answer"
    status: int = 200
    message: str = ""
    function: str = ""


PROXY = Decision("proxy")


def is_vault_path(path: str) -> bool:
    return path == "/" or path.startswith(("/v1/", "/ui/")) or path in ("/v1", "/ui")


def decide(request: Request, init_token: str | None) -> Decision:
    path = request.path
    if is_vault_path(path):
        if request.method not in _READ_METHODS and _canonical(path) == "/v1/sys/init":
            return _guard_init(request, init_token)
        return PROXY
    match = _FUNCTION_PATH.fullmatch(path)
    if match and request.method == "POST":
        return Decision("invoke", function=match.group(1))
    return Decision("answer", 404, f"no route for {request.method} {path}: this app serves Vault under /v1/ and /ui/")


def _canonical(path: str) -> str:
    """The path as Vault would route it, so that `/v1/sys//init/` or `%69nit` cannot slip past."""
    return posixpath.normpath(re.sub("/+", "/", unquote(path))).lower()


def _guard_init(request: Request, init_token: str | None) -> Decision:
    # An uninitialized Vault behind a public URL belongs to whoever calls sys/init first.
    if init_token is None:
        return Decision(
            "answer",
            403,
            "sys/init is disabled through this endpoint: set the app setting VAULTFN_INIT_TOKEN "
            "and send its value in the X-Vaultfn-Init-Token header to initialize Vault",
        )
    offered = request.header(INIT_TOKEN_HEADER) or b""
    if not hmac.compare_digest(offered, init_token.encode()):
        return Decision("answer", 403, "sys/init needs the X-Vaultfn-Init-Token header to match VAULTFN_INIT_TOKEN")
    return PROXY
