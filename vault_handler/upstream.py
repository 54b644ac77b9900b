"""Keep-alive connections from the handler to the Vault child on loopback."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .proxy import ClientConnection

MAX_IDLE = 64


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to Vault; lent to one client request at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client: ClientConnection | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.client is None:
            # Vault never speaks first; bytes on an idle connection mean it is unusable.
            self.close()
            return
        self.client.upstream_data(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        client, self.client = self.client, None
        if client is not None:
            client.upstream_lost()

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_reading("upstream")

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_reading("upstream")

    def close(self) -> None:
        self.closed = True
        self.client = None
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    """Idle keep-alive connections to the current Vault child, newest first."""

    def __init__(self) -> None:
        self._idle: list[UpstreamConnection] = []
        self.port: int | None = None

    def take_idle(self) -> UpstreamConnection | None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    async def connect(self, port: int) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(lambda: UpstreamConnection(port), "127.0.0.1", port)
        return connection

    def release(self, connection: UpstreamConnection) -> None:
        connection.client = None
        if connection.closed or connection.port != self.port or len(self._idle) >= MAX_IDLE:
            connection.close()
        else:
            self._idle.append(connection)

    def reset(self, port: int | None) -> None:
        """Forget every idle connection, e.g. when Vault restarted on another port."""
        self.port = port
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
