"""A real Azurite blob service for tests, and helpers to fill it like Vault's azure storage backend.

    with Azurite() as azurite:
        container = new_container(azurite)
        contents = fill_like_vault(container, blobs=1000)
        azurite.stop()      # "Azurite went away in the middle of a run" (SIGTERM, then SIGKILL)
        azurite.restart()   # same port, same location: the data is still there
        assert read_all(container) == contents

Every Azurite runs in a process group of its own on a free loopback port with a temporary
location; it is stopped by `stop()`/`close()`/the context manager, and as a safety net at
interpreter exit (weakref.finalize) and, when started from the main thread, by the kernel
if the Python process dies without running its exit handlers (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import requests
from azure.storage.blob import BlobServiceClient, ContainerClient, LinearRetry
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

REPO = Path(__file__).resolve().parent.parent
AZURITE_BLOB = REPO / "node_modules" / ".bin" / "azurite-blob"

ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

PARALLELISM = 16

T = TypeVar("T")
R = TypeVar("R")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when the thread that started it dies (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


class Azurite:
    """One `azurite-blob` process; `start()` again after `stop()` keeps port and data."""

    def __init__(
        self,
        location: Path | None = None,
        port: int | None = None,
        start_timeout: float = 20,
        account: str = ACCOUNT,
        key: str = ACCOUNT_KEY,
    ) -> None:
        """`account`/`key` (base64): a custom account instead of the well-known devstoreaccount1.

        Azurite then serves only that account (AZURITE_ACCOUNTS="name:key"), and every address,
        connection string and client of this object uses it.
        """
        self.account = account
        self.key = key
        self._root = Path(tempfile.mkdtemp(prefix="azurite-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._root, ignore_errors=True)
        self.location = Path(location) if location is not None else self._root / "data"
        self.location.mkdir(parents=True, exist_ok=True)
        self.log_path = self._root / "azurite.log"
        self._port_fixed = port is not None
        self.port = port if port is not None else _free_port()
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self._reaper: weakref.finalize | None = None
        self._service: BlobServiceClient | None = None

    # -- addresses -------------------------------------------------------------------------

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.account}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.key};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    @property
    def service(self) -> BlobServiceClient:
        """A client shared by the helpers (one connection pool per Azurite)."""
        if self._service is None:
            self._service = service(self.connection_string)
        return self._service

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Azurite:
        if self.running:
            return self
        for attempt in range(3):
            try:
                self._spawn()
                self._port_fixed = True  # a restart comes back on the same port, or fails
                return self
            except RuntimeError as error:
                # Another process may have taken the free port between probing and binding.
                if self._port_fixed or attempt == 2 or "EADDRINUSE" not in str(error):
                    raise
                self.port = _free_port()
                self._service = None
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        command = [
            str(AZURITE_BLOB),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            "--location",
            str(self.location),
            "--silent",
            "--skipApiVersionCheck",
            "--disableTelemetry",
        ]
        main_thread = threading.current_thread() is threading.main_thread()
        env = None
        if (self.account, self.key) != (ACCOUNT, ACCOUNT_KEY):
            env = {**os.environ, "AZURITE_ACCOUNTS": f"{self.account}:{self.key}"}
        with self.log_path.open("ab") as log_file:
            log_file.write(f"--- starting on port {self.port}\n".encode())
            log_file.flush()
            process = subprocess.Popen(
                command,
                cwd=self._root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # Only from the main thread: PDEATHSIG fires when the starting *thread* exits.
                preexec_fn=_die_with_parent if main_thread else None,
            )
        self.process = process
        self._reaper = weakref.finalize(self, _kill_group, process)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if process.poll() is not None:
                self._reaper.detach()
                raise RuntimeError(f"Azurite exited with {process.returncode} before listening:\n{self.log[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"Azurite not listening on {self.port} after {self.start_timeout}s:\n{self.log}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM (Azurite saves its metadata and closes), SIGKILL after `timeout` s. Returns the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(process)
        _kill_group(process)  # any leftover in the group
        if self._reaper is not None:
            self._reaper.detach()
        return process.returncode

    def kill(self) -> int | None:
        """SIGKILL at once, like a crash.

        Azurite keeps its metadata (containers, blob lists) in LokiJS and saves it every 5 s and on
        SIGTERM, so after a kill everything since the last save is gone - even whole containers.
        That is the emulator, not Azure: use stop() for "Azurite went away", kill() only on purpose.
        """
        process = self.process
        if process is None:
            return None
        _kill_group(process)
        if self._reaper is not None:
            self._reaper.detach()
        return process.returncode

    def restart(self) -> Azurite:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop for good and delete the temporary directory."""
        self.stop()
        if self._service is not None:
            self._service.close()
            self._service = None
        self._cleanup()

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Azurite(port={self.port}, running={self.running}, location={self.location})"


# -- clients -------------------------------------------------------------------------------


def service(conn_str: str, **kwargs: object) -> BlobServiceClient:
    """A BlobServiceClient whose connection pool fits PARALLELISM threads; ignores *_PROXY variables.

    It retries twice after ~0.2 s (the SDK's default waits 15 s, 18 s, 24 s per request, so a
    fill against a stopped Azurite took minutes to fail). kwargs go to `from_connection_string`
    and win (e.g. `retry_policy=...`, `session=...`).
    """
    session = requests.Session()
    session.trust_env = False
    adapter = HTTPAdapter(
        pool_connections=4,
        pool_maxsize=PARALLELISM * 2,
        max_retries=Retry(total=False, redirect=False, raise_on_status=False),
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    kwargs.setdefault("session", session)
    kwargs.setdefault("retry_policy", LinearRetry(backoff=0.2, random_jitter_range=0.1, retry_total=2))
    return BlobServiceClient.from_connection_string(conn_str, **kwargs)


def new_container(azurite: Azurite | str, prefix: str = "c") -> ContainerClient:
    """Create a uniquely named container (on an Azurite, or the account of a connection string)."""
    client = azurite.service if isinstance(azurite, Azurite) else service(azurite)
    name = f"{prefix.lower()}-{uuid.uuid4().hex}"[:63]
    return client.create_container(name)


# -- Vault-like content --------------------------------------------------------------------

CORE_BLOBS = (
    "core/seal-config",
    "core/keyring",
    "core/master",
    "core/hsm/barrier-unseal-keys",
    "core/recovery-config",
    "core/recovery-key",
    "core/mounts",
    "core/auth",
    "core/audit",
    "core/local-mounts",
)
POLICIES = ("default", "response-wrapping", "admin", "ops", "ci-deploy", "app-read", "app-write", "backup")
# Names a Vault user can create that need URL-encoding; every fill includes them (if blobs allows).
ODD_SECRET_PATHS = (
    "secret/team a/db password",
    "secret/ünïcode/κλειδί",
    "secret/odd+chars=&%20;,@!",
    "secret/#hash?query",
)
_ENVS = ("prod", "staging", "dev", "qa")
_APPS = ("billing", "web", "api", "worker", "search", "auth", "reports", "mail", "queue", "cache")
_KEYS = ("db", "redis", "smtp", "api-key", "tls/cert", "tls/key", "oauth/client", "s3", "stripe", "sentry")


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _random_content(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randint(50, 2000))


def vault_blob_names(blobs: int = 1000, seed: int = 0) -> list[str]:
    """`blobs` distinct names laid out like Vault's storage: core/, sys/, logical/<uuid>/, auth/<uuid>/."""
    rng = random.Random(seed)
    kv_mounts = [_uuid(rng) for _ in range(3)]  # kv v1-style: logical/<uuid>/secret/<env>/<app>/<key>
    kv2_mount = _uuid(rng)  # kv v2-style: logical/<uuid>/metadata/<salted>, .../versions/<salted>/<n>
    auth_mounts = [(_uuid(rng), kind) for kind in ("token", "userpass", "approle")]
    names = list(CORE_BLOBS) + [f"sys/policy/{name}" for name in POLICIES]
    names += [f"logical/{kv_mounts[0]}/{path}" for path in ODD_SECRET_PATHS]
    seen = set(names)
    while len(names) < blobs:
        roll = rng.random()
        if roll < 0.15:  # a token: its entry and its accessor
            candidates = [
                f"sys/token/id/h{rng.getrandbits(256):064x}",
                f"sys/token/accessor/{rng.getrandbits(160):040x}",
            ]
        elif roll < 0.60:
            mount = rng.choice(kv_mounts)
            path = f"{rng.choice(_ENVS)}/{rng.choice(_APPS)}/{rng.choice(_KEYS)}"
            candidates = [
                f"logical/{mount}/secret/{path}" + (f"-{rng.randrange(10_000)}" if rng.random() < 0.9 else "")
            ]
        elif roll < 0.80:
            salted = f"{rng.getrandbits(256):064x}"
            candidates = [f"logical/{kv2_mount}/metadata/{salted}"]
            candidates += [f"logical/{kv2_mount}/versions/{salted}/{v}" for v in range(1, rng.randint(1, 3) + 1)]
        else:
            mount, kind = rng.choice(auth_mounts)
            if kind == "userpass":
                candidates = [f"auth/{mount}/user/user{rng.randrange(100_000)}"]
            elif kind == "approle":
                role = f"role{rng.randrange(1_000)}"
                candidates = [
                    f"auth/{mount}/role/{role}",
                    f"auth/{mount}/secret_id/{rng.getrandbits(256):064x}/{rng.getrandbits(256):064x}",
                ]
            else:
                candidates = [f"auth/{mount}/salt", f"auth/{mount}/parent/{rng.getrandbits(128):032x}"]
        for name in candidates:
            if name not in seen and len(names) < blobs:
                seen.add(name)
                names.append(name)
    return names[:blobs]


def _parallel(function: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """function over items on PARALLELISM threads, in order; the first error cancels the rest."""
    with ThreadPoolExecutor(PARALLELISM) as pool:
        futures = [pool.submit(function, item) for item in items]
        try:
            return [future.result() for future in futures]
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _upload_all(container: ContainerClient, contents: dict[str, bytes]) -> None:
    def upload(item: tuple[str, bytes]) -> None:
        # One Put Blob per key, as Vault writes; the service then stores Content-MD5.
        container.upload_blob(item[0], item[1], overwrite=True)

    _parallel(upload, contents.items())


def fill_like_vault(container: ContainerClient, blobs: int = 1000, seed: int = 0) -> dict[str, bytes]:
    """Upload `blobs` Vault-like blobs with random 50..2000-byte values (deterministic from seed)."""
    rng = random.Random(f"content-{seed}")
    contents = {name: _random_content(rng) for name in vault_blob_names(blobs, seed)}
    _upload_all(container, contents)
    return contents


def read_all(container: ContainerClient) -> dict[str, bytes]:
    """Every blob's content, by name (for byte-identical comparisons)."""
    names = [blob.name for blob in container.list_blobs()]

    def download(name: str) -> bytes:
        return container.download_blob(name).readall()

    return dict(zip(names, _parallel(download, names), strict=True))


def change_blobs(container: ContainerClient, names: Iterable[str], seed: int) -> dict[str, bytes]:
    """Overwrite the named blobs (created if missing) with new random content; returns {name: new content}."""
    rng = random.Random(f"change-{seed}")
    contents = {name: _random_content(rng) for name in names}
    _upload_all(container, contents)
    return contents
