"""Start, watch and restart the Vault child process.

Vault starts lazily, on the first request that needs it (on Flex Consumption
an instance that only runs timers must never start one), or eagerly when
`VAULTFN_EAGER_START` is set. It runs in its own session, so a Ctrl-C meant
for the handler does not reach it, and with a parent-death signal, so it never
outlives the handler, even after `kill -9`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import shutil
import signal
import socket
from collections.abc import Callable, Mapping
from pathlib import Path

from shared import telemetry
from shared.settings import APP_DIR, Settings
from shared.telemetry import METRIC_VAULT_RESTARTS, METRIC_VAULT_START_MS

from . import bootstrap, template, vaultlog
from .binary import executable
from .lock import LockUnavailable, SingleWriterLock

log = logging.getLogger("vaultfn.supervisor")

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0
START_TIMEOUT = 60.0
_PR_SET_PDEATHSIG = 1


class VaultUnavailable(Exception):
    """Vault cannot serve right now; answered as 503 with Retry-After."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class VaultStartError(RuntimeError):
    """Vault did not come up; `summary` is safe to show to clients, the message goes to the log."""

    def __init__(self, summary: str, details: str = "") -> None:
        super().__init__(f"{summary}: {details}" if details else summary)
        self.summary = summary


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _parent_death_signal() -> Callable[[], None] | None:
    import ctypes  # noqa: PLC0415 - only when Vault starts
    import sys  # noqa: PLC0415

    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class VaultSupervisor:
    def __init__(self, settings: Settings, binary: Path, on_port: Callable[[int | None], None]) -> None:
        self.settings = settings
        self.binary = binary
        self.on_port = on_port
        self.ready = False
        self.port: int | None = None
        self.restarts = 0
        self.last_error: str | None = None
        self.start_seconds: float | None = None
        self.private_dir = template.private_directory()
        # Why Vault requests are refused at once instead of waiting: the lock is held elsewhere,
        # or the last start failed and the next one is a backoff away. None: wait for Vault.
        self.unavailable: str | None = None
        self.next_attempt = 0.0
        self.lock = SingleWriterLock(settings.lock) if settings.lock.enabled else None
        self._keeper: asyncio.Task | None = None
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._relays: list[asyncio.Task] = []
        self._recent: collections.deque[str] = collections.deque(maxlen=5)

    # -- config --------------------------------------------------------------

    def render_config(self, port: int, cluster_port: int) -> str:
        """Render and check the template; raises TemplateError with the reason."""
        settings = self.settings
        env = dict(settings.environment)
        env["VAULT_LISTEN_PORT"] = str(port)
        env["VAULT_CLUSTER_PORT"] = str(cluster_port)
        env["VAULTFN_DATA_DIR"] = str(settings.data_dir)
        env["VAULTFN_SEAL_KEY_FILE"] = str(settings.data_dir / bootstrap.SEAL_KEY_FILE)
        if settings.vault_api_addr:
            env["VAULT_API_ADDR"] = settings.vault_api_addr
        config = template.render(settings.config_template, env, APP_DIR)
        template.check_listener(config, settings.listen_port, port)
        return config

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        if self._task is None and not self._stop.is_set():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def ensure_ready(self, timeout: float) -> int:
        if self.ready:
            return self.port
        self.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.ready:
            if self._stop.is_set():
                raise VaultUnavailable("the handler is shutting down", retry_after=10)
            if self.unavailable is not None:
                retry_after = max(1, math.ceil(self.next_attempt - loop.time()))
                raise VaultUnavailable(f"Vault is not ready: {self.unavailable}", retry_after)
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
            except TimeoutError:
                reason = f": {self.last_error}" if self.last_error else ""
                raise VaultUnavailable(f"Vault is not ready after {timeout:.0f}s{reason}") from None
        return self.port

    def _notify(self) -> None:
        """Wake every request waiting in ensure_ready to look at the state again."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = FIRST_BACKOFF
        while not self._stop.is_set():
            if self.lock is not None and not self.lock.held:
                await self._take_lock()
                if self._stop.is_set():
                    break
            started = loop.time()
            self.unavailable = None
            self._notify()
            try:
                await self._start_once()
            except (VaultStartError, template.TemplateError, bootstrap.BootstrapError, OSError) as error:
                await self._terminate()
                if self._fenced():
                    continue
                # Clients see a summary; Vault's own output stays in the log.
                summary = error.summary if isinstance(error, VaultStartError) else "see the app's log"
                self.last_error = f"Vault failed to start ({summary})"
                log.error("Vault failed to start: %s", error)
                self.unavailable = f"{self.last_error}; the next attempt is in {backoff:g}s"
            else:
                code = await self._process.wait()
                self._set_down()
                if self._stop.is_set():
                    break
                if self._fenced():
                    continue
                self.last_error = f"Vault exited unexpectedly with code {code}"
                log.error("%s; restarting it", self.last_error)
            if loop.time() - started > STABLE_AFTER:
                backoff = FIRST_BACKOFF
            self.next_attempt = loop.time() + backoff
            self._notify()
            await self._pause(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            self.restarts += 1
            telemetry.current().metric(METRIC_VAULT_RESTARTS, self.restarts)

    # -- the single-writer lock ------------------------------------------------

    async def _take_lock(self) -> None:
        """Try until the lock is ours or the handler stops; meanwhile Vault requests get 503 saying why."""
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            try:
                await self.lock.acquire()
            except LockUnavailable as error:
                if self.unavailable != str(error):
                    log.warning("Vault not started: %s", error)
                self.unavailable = str(error)
                self.next_attempt = loop.time() + self.lock.retry_every
                self._notify()
                await self._pause(self.lock.retry_every)
            else:
                self._keeper = loop.create_task(self.lock.keep(self._on_lock_lost))
                if self.lock.resumed:
                    log.warning(
                        "took back this instance's lock from a previous handler; waiting %gs for its Vault to stop",
                        self.lock.stop_grace,
                    )
                    await self._pause(self.lock.stop_grace)
                return

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if the handler stops meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _fenced(self) -> bool:
        """Vault stopped because the lock was lost: not a failure to back off from."""
        return self.lock is not None and not self.lock.held

    def _on_lock_lost(self, reason: str) -> None:
        """Stop proxying now and Vault within `stop_grace`, before the lease can expire."""
        log.error("%s: stopping Vault", reason)
        self.unavailable = f"{reason}; this instance stopped Vault and is trying to take the lock again"
        self.next_attempt = asyncio.get_running_loop().time() + self.lock.retry_every
        self._set_down()
        process = self._process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            asyncio.get_running_loop().call_later(self.lock.stop_grace, _kill_if_running, process)

    async def _start_once(self) -> None:
        settings = self.settings
        port = settings.vault_port or free_port()
        config = self.render_config(port, free_port())
        if settings.local:
            bootstrap.prepare_data_dir(settings.data_dir)
        config_path = template.write_private(config, self.private_dir)
        binary = executable(self.binary, self.private_dir)
        env = vault_environment(settings.environment)
        loop = asyncio.get_running_loop()
        spawned = loop.time()
        self._recent.clear()
        self._process = await asyncio.create_subprocess_exec(
            str(binary),
            "server",
            f"-config={config_path}",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
            preexec_fn=_parent_death_signal(),
        )
        self._relays = [
            loop.create_task(self._relay(self._process.stdout, logging.INFO)),
            loop.create_task(self._relay(self._process.stderr, logging.WARNING)),
        ]
        await self._wait_listening(port)
        self.start_seconds = loop.time() - spawned
        telemetry.current().metric(METRIC_VAULT_START_MS, self.start_seconds * 1000, {"restarts": self.restarts})
        log.info(
            "Vault (pid %d) is listening on 127.0.0.1:%d after %.0f ms",
            self._process.pid,
            port,
            self.start_seconds * 1000,
        )
        if settings.auto_init:
            await bootstrap.initialize(port, settings.data_dir)
        self.port = port
        self.on_port(port)
        self.ready = True
        self.last_error = None
        self._notify()
        if settings.local:
            address = f"http://{settings.listen_host}:{settings.listen_port}"
            init_file = settings.data_dir / bootstrap.INIT_FILE
            log.info("Vault is ready at %s (root token and recovery key: %s)", address, init_file)

    async def _wait_listening(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            if self._process.returncode is not None:
                await asyncio.gather(*self._relays)
                recent = " | ".join(self._recent) or "no output"
                raise VaultStartError(f"exited with code {self._process.returncode} while starting", recent)
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if loop.time() > deadline:
                    raise VaultStartError(f"did not listen on its port within {START_TIMEOUT:g}s") from None
                await asyncio.sleep(0.005)
            else:
                writer.close()
                return

    async def _relay(self, stream: asyncio.StreamReader, plain_level: int) -> None:
        while line := await stream.readline():
            self._recent.append(line.decode("utf-8", "replace").strip()[:300])
            vaultlog.relay(line, plain_level)

    def _set_down(self) -> None:
        self.ready = False
        self.on_port(None)

    async def _terminate(self) -> None:
        """SIGTERM, then SIGKILL after the shutdown timeout; never leave an orphan."""
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self.settings.shutdown_timeout)
            except TimeoutError:
                log.warning("Vault did not stop within %gs; killing it", self.settings.shutdown_timeout)
                process.kill()
                await process.wait()
        await asyncio.gather(*self._relays, return_exceptions=True)
        self._set_down()

    async def stop(self) -> None:
        self._stop.set()
        self._notify()
        await self._terminate()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._keeper is not None:
            self._keeper.cancel()
        if self.lock is not None:
            await self.lock.release()  # only now: Vault has stopped
        shutil.rmtree(self.private_dir, ignore_errors=True)


# Settings for the handler, the timers and telemetry that Vault never reads: kept out of its
# environment, so a Vault plugin or a `sys/` endpoint can't reveal them. Vault still gets its own
# (VAULT_*, BAO_*, AZURE_* for its seal, the identity endpoint).
_NOT_FOR_VAULT = ("VAULTFN_", "BACKUP_", "KEEPWARM_", "APPLICATIONINSIGHTS_", "AzureWebJobs")
# The storage key reaches Vault through the rendered config, not its environment.
_NOT_FOR_VAULT_NAMES = {"AZURE_STORAGE_KEY", "AZURE_STORAGE_CONNECTION_STRING", "VAULT_TOKEN", "BAO_TOKEN"}


def vault_environment(environment: Mapping[str, str]) -> dict[str, str]:
    return {
        name: value
        for name, value in environment.items()
        if not name.startswith(_NOT_FOR_VAULT) and name not in _NOT_FOR_VAULT_NAMES
    }


def _kill_if_running(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        log.warning("Vault did not stop after the lock was lost; killing it")
        process.kill()
