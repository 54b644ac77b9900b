"""Render Vault's config template.

The language is the seed launcher's subset of Go templates, so existing
templates work unchanged: `{{ env "NAME" }}` and `{{ cwd "a" "b" }}`, plus a
Sprig-style `| default "value"`. Unlike the seed, a reference to a variable
that is not set is an error naming the variable and the line, because a Vault
config with an empty account name or seal key fails much later and less
clearly. Values are never echoed in errors: they may be storage keys.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_ACTION = re.compile(r"{{(.*?)}}", re.S)
_TOKEN = re.compile(r'\s*(?:"((?:[^"\\\n]|\\.)*)"|(\|)|([A-Za-z_][A-Za-z0-9_]*))')
_LISTENER = re.compile(r'listener\s+"tcp"\s*{')
_ADDRESS = re.compile(r'(?m)^\s*address\s*=\s*"([^"]*)"')
_FORBIDDEN_IN_VALUES = re.compile(r'["\\\x00-\x1f]|[$%]{')


class TemplateError(ValueError):
    """The template cannot be rendered into a usable config."""


@dataclass(frozen=True)
class _Call:
    name: str
    args: tuple[str, ...]


class _Missing:
    """An `env` lookup of an unset variable; only `default` may consume it."""

    def __init__(self, variable: str) -> None:
        self.variable = variable


def render(template: Path, env: Mapping[str, str], cwd: Path) -> str:
    text = template.read_text(encoding="utf-8")

    def replace(match: re.Match[str]) -> str:
        line = text.count("\n", 0, match.start()) + 1
        where = f"{template.name}:{line}: {match.group(0)}"
        try:
            return _evaluate(_parse(match.group(1)), env, cwd)
        except TemplateError as error:
            raise TemplateError(f"{where}: {error}") from None

    # Actions blanked out, line breaks kept: a value may contain '{{', the template may not.
    skeleton = _ACTION.sub(lambda action: "\n" * action.group(0).count("\n"), text)
    unclosed = skeleton.find("{{")
    if unclosed >= 0:
        line = skeleton.count("\n", 0, unclosed) + 1
        raise TemplateError(f"{template.name}:{line}: unclosed '{{{{' (every action needs a closing '}}}}')")
    return _ACTION.sub(replace, text)


def _parse(action: str) -> list[_Call]:
    calls: list[_Call] = []
    words: list[str] = []
    names: list[str] = []
    position = 0
    source = action.strip()
    while position < len(source):
        token = _TOKEN.match(source, position)
        if token is None or token.end() == position:
            raise TemplateError(f"cannot parse {source[position:]!r} (expected a function name or a quoted string)")
        position = token.end()
        string, pipe, name = token.groups()
        if pipe:
            calls.append(_make_call(names, words))
            names, words = [], []
        elif name is not None:
            if names:
                raise TemplateError(f"unexpected {name!r}: only quoted strings may follow {names[0]!r}")
            names.append(name)
        else:
            words.append(string.encode().decode("unicode_escape") if "\\" in string else string)
    calls.append(_make_call(names, words))
    return calls


def _make_call(names: list[str], args: list[str]) -> _Call:
    if not names:
        raise TemplateError("empty action or pipe stage (expected env, cwd or default)")
    return _Call(names[0], tuple(args))


def _evaluate(calls: list[_Call], env: Mapping[str, str], cwd: Path) -> str:
    value: str | _Missing | None = None
    for call in calls:
        args = call.args if value is None else (*call.args, value)
        value = _call(call.name, args, env, cwd)
    if isinstance(value, _Missing):
        raise TemplateError(
            f'{value.variable} is not set; set it, or give a default: {{{{ env "{value.variable}" | default "..." }}}}'
        )
    assert value is not None
    if _FORBIDDEN_IN_VALUES.search(value):
        raise TemplateError(
            "the value contains a quote, backslash, control character or HCL interpolation ('${' or '%{'), "
            "which would break the config"
        )
    return value


def _call(name: str, args: tuple, env: Mapping[str, str], cwd: Path) -> str | _Missing:
    if name == "env":
        if len(args) != 1 or not isinstance(args[0], str):
            raise TemplateError('env takes one variable name: {{ env "NAME" }}')
        return env[args[0]] if args[0] in env else _Missing(args[0])
    if name == "cwd":
        if not all(isinstance(a, str) for a in args):
            raise TemplateError("cwd takes path parts as quoted strings")
        return str(cwd.joinpath(*args))
    if name == "default":
        if len(args) != 2 or not isinstance(args[0], str):
            raise TemplateError('default takes one value and a piped input: {{ env "NAME" | default "value" }}')
        fallback, piped = args
        return fallback if isinstance(piped, _Missing) or piped == "" else piped
    raise TemplateError(f"unknown function {name!r} (known: env, cwd, default)")


def _block_body(config: str, start: int) -> str:
    """The text of the block whose `{` is at `start`, up to its matching `}`."""
    depth = 0
    in_string = False
    position = start
    while position < len(config):
        char = config[position]
        if in_string:
            if char == "\\":
                position += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return config[start + 1 : position]
        position += 1
    return config[start + 1 :]


def listener_ports(config: str) -> list[int]:
    """Ports of the `listener "tcp"` blocks of a rendered config."""
    ports = []
    for match in _LISTENER.finditer(config):
        body = _block_body(config, match.end() - 1)
        for address in _ADDRESS.findall(body):
            _, _, port = address.rpartition(":")
            if port.isdigit():
                ports.append(int(port))
    return ports


def check_listener(config: str, handler_port: int, vault_port: int) -> None:
    ports = listener_ports(config)
    if handler_port in ports:
        raise TemplateError(
            f"the tcp listener uses port {handler_port}, which the handler itself listens on "
            "(FUNCTIONS_CUSTOMHANDLER_PORT or VAULTFN_PORT); Vault must listen on the loopback port "
            'the handler picks: address = "127.0.0.1:{{ env "VAULT_LISTEN_PORT" }}"'
        )
    if vault_port not in ports:
        raise TemplateError(
            f"no tcp listener on VAULT_LISTEN_PORT ({vault_port}); the handler proxies to that port: "
            'address = "127.0.0.1:{{ env "VAULT_LISTEN_PORT" }}"'
        )


def write_private(config: str, directory: Path) -> Path:
    """Write the rendered config readable by this user only (0600 in a 0700 dir)."""
    path = directory / "vault.hcl"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(config)
    return path


def private_directory() -> Path:
    """A fresh 0700 directory outside the (possibly read-only) app folder."""
    return Path(tempfile.mkdtemp(prefix="vaultfn-"))
