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
import logging
import shutil
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from shared import telemetry
from shared.settings import APP_DIR, Settings
from shared.telemetry import METRIC_VAULT_RESTARTS, METRIC_VAULT_START_MS

from . import bootstrap, template, vaultlog
from .binary import executable

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
        self._ready = asyncio.Event()
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
        if self._stop.is_set():
            raise VaultUnavailable("the handler is shutting down", retry_after=10)
        self.start()
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            reason = f": {self.last_error}" if self.last_error else ""
            raise VaultUnavailable(f"Vault is not ready after {timeout:.0f}s{reason}") from None
        return self.port

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = FIRST_BACKOFF
        while not self._stop.is_set():
            started = loop.time()
            try:
                await self._start_once()
            except (VaultStartError, template.TemplateError, bootstrap.BootstrapError, OSError) as error:
                # Clients see a summary; Vault's own output stays in the log.
                summary = error.summary if isinstance(error, VaultStartError) else "see the app's log"
                self.last_error = f"Vault failed to start ({summary})"
                log.error("Vault failed to start: %s", error)
                await self._terminate()
            else:
                code = await self._process.wait()
                self._set_down()
                if self._stop.is_set():
                    break
                self.last_error = f"Vault exited unexpectedly with code {code}"
                log.error("%s; restarting it", self.last_error)
            if loop.time() - started > STABLE_AFTER:
                backoff = FIRST_BACKOFF
            try:
                await asyncio.wait_for(self._stop.wait(), backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, MAX_BACKOFF)
            self.restarts += 1
            telemetry.current().metric(METRIC_VAULT_RESTARTS, self.restarts)

    async def _start_once(self) -> None:
        settings = self.settings
        port = settings.vault_port or free_port()
        config = self.render_config(port, free_port())
        if settings.local:
            bootstrap.prepare_data_dir(settings.data_dir)
        config_path = template.write_private(config, self.private_dir)
        binary = executable(self.binary, self.private_dir)
        env = {k: v for k, v in settings.environment.items() if not k.startswith("VAULTFN_INIT_TOKEN")}
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
        self._ready.set()
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
        self._ready.clear()
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
        await self._terminate()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        shutil.rmtree(self.private_dir, ignore_errors=True)
