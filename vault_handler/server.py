"""The handler: listen on the host's port, dispatch invocations, proxy the rest to Vault."""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
from collections.abc import Mapping

from shared import telemetry
from shared.settings import APP_DIR, Settings

from . import bootstrap
from .binary import resolve_binary
from .invocations import FUNCTION_JOBS, Dispatcher, Job
from .proxy import ClientConnection
from .scheduler import LocalScheduler, ScheduleError, discover
from .supervisor import VaultSupervisor, free_port
from .upstream import UpstreamPool

log = logging.getLogger("vaultfn.handler")

DRAIN_TIMEOUT = 5.0


class Handler:
    def __init__(self, settings: Settings, jobs: Mapping[str, Job | str] | None = None) -> None:
        """Check everything that can be checked before serving; raise with the reason."""
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.pool = UpstreamPool()
        self.supervisor = VaultSupervisor(settings, resolve_binary(settings.vault_binary, APP_DIR), self.pool.reset)
        # Render once now so that a broken template stops the handler at start, not at the first request.
        self.supervisor.render_config(settings.vault_port or free_port(), free_port())
        if settings.local:
            bootstrap.prepare_data_dir(settings.data_dir)
        self.dispatcher = Dispatcher(FUNCTION_JOBS if jobs is None else jobs, settings)
        self.connections: set[ClientConnection] = set()
        self.stopping = False
        self._stopped = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._watchdog: asyncio.Task | None = None
        self.telemetry = telemetry.current()
        self.scheduler: LocalScheduler | None = None

    async def start(self) -> None:
        settings = self.settings
        self._server = await self.loop.create_server(
            lambda: ClientConnection(self), settings.listen_host, settings.listen_port, backlog=1024, reuse_address=True
        )
        log.info("handler listening on http://%s:%d", settings.listen_host, settings.listen_port)
        self.telemetry = telemetry.start(settings.environment)  # sets up in a thread: off the start path
        self._watchdog = self.loop.create_task(self._watch_deadlines())
        if settings.local:
            # Without the Functions host nobody else fires the timers.
            try:
                self.scheduler = LocalScheduler(discover(APP_DIR, settings), self.dispatcher)
            except ScheduleError:
                self._server.close()
                raise
            self.scheduler.start()
        if settings.lock.enabled:
            # The lock needs the Azure SDK before Vault can start: import it now, while nothing waits for it.
            self.loop.run_in_executor(None, importlib.import_module, "azure.storage.blob")
        if settings.eager_start:
            self.supervisor.start()

    async def _watch_deadlines(self) -> None:
        """One sweep for all connections instead of a timer per request, which costs on every request."""
        limit = self.settings.max_request_duration
        interval = min(1.0, limit / 4)
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            for connection in list(self.connections):
                connection.check_deadline(now, limit)

    async def run(self) -> None:
        await self.start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self.stop)
        await self._stopped.wait()
        await self.shutdown()

    def stop(self) -> None:
        self._stopped.set()

    async def shutdown(self) -> None:
        """Stop accepting, let requests in flight finish (bounded), then stop Vault."""
        log.info("shutting down")
        self.stopping = True
        if self._server is not None:
            self._server.close()
            self._watchdog.cancel()
        if self.scheduler is not None:
            self.scheduler.stop()
        for connection in list(self.connections):
            if not connection.busy:
                connection.transport.close()
        deadline = self.loop.time() + DRAIN_TIMEOUT
        # Busy: a request in flight; a write buffer: an answer still going out to a slow reader.
        while self.loop.time() < deadline and any(
            c.busy or c.transport.get_write_buffer_size() for c in self.connections
        ):
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.transport.abort()
        await self.supervisor.stop()
        log.info("stopped")
        await asyncio.to_thread(self.telemetry.shutdown)  # the host may freeze the instance right after
