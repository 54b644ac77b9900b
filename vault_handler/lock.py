"""The single-writer lock: at most one Vault on a storage container.

Vault's `azure` storage backend has no HA lock: two Vaults writing one
container overwrite each other's keyring, mounts and leases and corrupt it.
On Flex Consumption more than one instance may serve HTTP, and every instance
starts this handler. So before Vault starts, the handler takes a blob lease on
a lock blob in Vault's container and holds it while Vault runs:

- it renews the lease every third of the lease period;
- when a renewal is refused (someone broke or took the lease) the lease is
  lost now; when renewals keep failing (storage unreachable) it is treated as
  lost two thirds into the period. Either way the supervisor stops proxying
  and stops Vault (SIGTERM, then SIGKILL after a sixth of the period), so Vault
  is gone before the lease can expire and another instance can take it;
- it is released after Vault has stopped at a graceful shutdown; after a crash
  it expires on its own, and another instance takes it within one period.

See docs/reliability.md for the cases and docs/security.md for what it does
not protect against.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from shared.settings import LockSettings

log = logging.getLogger("vaultfn.lock")

RELEASE_TIMEOUT = 5.0


class LockUnavailable(Exception):
    """The lock cannot be taken now; the message says why and is safe to show to clients."""


class SingleWriterLock:
    def __init__(self, settings: LockSettings) -> None:
        self.settings = settings
        self.lease_seconds = settings.lease_seconds
        self.held = False
        self.resumed = False  # the last acquire took back a lease this instance held already
        self.valid_until = 0.0  # event-loop time until which the lease is certainly ours
        self._blob: Any = None
        self._lease: Any = None

    @property
    def retry_every(self) -> float:
        """How often an instance without the lock tries again."""
        return min(5.0, self.lease_seconds / 3)

    @property
    def stop_grace(self) -> float:
        """How long Vault gets to stop after the lease is lost, before SIGKILL."""
        return self.lease_seconds / 6

    def _lease_client(self) -> Any:
        if self._lease is None:
            import uuid  # noqa: PLC0415 - off the handler's start path

            from azure.storage.blob import BlobLeaseClient  # noqa: PLC0415

            from shared.storage import service_client  # noqa: PLC0415

            settings = self.settings
            timeout = max(2.0, self.lease_seconds / 6)
            service = service_client(
                settings.connection_string,
                settings.account,
                settings.key,
                retries=0,  # the renewal loop retries on its own clock, which the fencing depends on
                connection_timeout=timeout,
                read_timeout=timeout,
            )
            self._blob = service.get_blob_client(settings.container, settings.blob)
            if settings.instance_id:
                lease_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"vaultfn:{settings.instance_id}:{self._blob.url}"))
            else:
                lease_id = str(uuid.uuid4())
            self._lease = BlobLeaseClient(self._blob, lease_id=lease_id)
        return self._lease

    # -- acquire ----------------------------------------------------------------------------------

    async def acquire(self) -> None:
        """Take the lease, or raise LockUnavailable saying who holds it or what is wrong."""
        loop = asyncio.get_running_loop()
        sent = loop.time()
        try:
            await asyncio.wait_for(asyncio.to_thread(self._acquire), timeout=self.lease_seconds / 3)
        except TimeoutError:
            raise LockUnavailable(f"storage did not answer the lock request ({self.settings.where})") from None
        self.valid_until = sent + self.lease_seconds
        self.held = True
        log.info(
            "took the single-writer lock (%s, lease %ds, renewed every %ds)",
            self.settings.where,
            self.lease_seconds,
            self.lease_seconds // 3,
        )

    def _acquire(self) -> None:
        from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError  # noqa: PLC0415

        try:
            lease = self._lease_client()
        except ValueError as error:  # shared.storage.ConfigurationError: names the setting, never the value
            raise LockUnavailable(str(error)) from None
        where = self.settings.where
        try:
            try:
                self.resumed = self._held_already()
                lease.acquire(lease_duration=self.lease_seconds)
            except ResourceNotFoundError as error:
                if error.error_code == "ContainerNotFound":
                    raise LockUnavailable(
                        f"container {self.settings.container} does not exist: create it, or fix AZURE_BLOB_CONTAINER"
                    ) from None
                try:
                    self._blob.upload_blob(b"", overwrite=False)
                except ResourceExistsError:
                    pass  # another instance created it first
                lease.acquire(lease_duration=self.lease_seconds)
            self._blob.set_blob_metadata(
                {"holder": self.settings.instance_id or "local", "since": datetime.now(UTC).isoformat()}, lease=lease
            )
        except ResourceExistsError:
            raise LockUnavailable(
                f"another instance holds the single-writer lock ({where}{self._holder()}); this instance starts "
                f"no Vault while it does and tries again every {self.retry_every:g}s"
            ) from None
        except AzureError as error:
            hint = ""
            if getattr(error, "status_code", None) == 403:
                hint = "; give the app's identity Storage Blob Data Contributor on the container, or fix the key"
            raise LockUnavailable(f"cannot take the single-writer lock ({where}): {describe(error)}{hint}") from None

    def _held_already(self) -> bool:
        """Whether the lease is active before this handler acquires it: with a lease id derived from
        the instance, a success then means a previous handler on this instance held it, and its Vault
        (sent SIGTERM by its parent's death) may still be stopping."""
        if not self.settings.instance_id:
            return False
        from azure.core.exceptions import ResourceNotFoundError  # noqa: PLC0415

        try:
            return self._blob.get_blob_properties().lease.state == "leased"
        except ResourceNotFoundError:
            return False

    def _holder(self) -> str:
        try:
            metadata = self._blob.get_blob_properties().metadata
        except Exception:  # only decorates the message
            return ""
        if "holder" not in metadata:
            return ""
        return f", held by {metadata['holder']} since {metadata.get('since', '?')}"

    # -- hold -------------------------------------------------------------------------------------

    async def keep(self, on_lost: Callable[[str], None]) -> None:
        """Renew until cancelled; call `on_lost` (once) early enough to stop Vault before the lease expires."""
        loop = asyncio.get_running_loop()
        period = self.lease_seconds
        while True:
            await asyncio.sleep(max(0.0, self.valid_until - period * 2 / 3 - loop.time()))
            fence_at = self.valid_until - period / 3
            while True:
                sent = loop.time()
                try:
                    await asyncio.wait_for(asyncio.to_thread(self._lease.renew), timeout=max(0.5, fence_at - sent))
                except Exception as error:
                    reason = self._renewal_failed(error, fence_at - loop.time())
                    if reason is not None:
                        self.held = False
                        on_lost(reason)
                        return
                    await asyncio.sleep(min(1.0, max(0.0, fence_at - loop.time())))
                else:
                    self.valid_until = sent + period
                    break

    def _renewal_failed(self, error: Exception, time_left: float) -> str | None:
        """The reason the lease counts as lost, or None to retry (a transient fault with time left)."""
        from azure.core.exceptions import HttpResponseError  # noqa: PLC0415

        status = getattr(error, "status_code", None)
        if isinstance(error, HttpResponseError) and status in (404, 409, 412):
            return f"the single-writer lock was lost ({self.settings.where}: {describe(error)})"
        if time_left <= 0:
            return (
                f"could not renew the single-writer lock for {self.lease_seconds * 2 / 3:.0f}s "
                f"({self.settings.where}: {describe(error)})"
            )
        log.warning("renewing the single-writer lock failed (%s); retrying for %.0fs", describe(error), time_left)
        return None

    # -- release ----------------------------------------------------------------------------------

    async def release(self) -> None:
        """Give the lease up (only after Vault has stopped); if storage is down it expires on its own."""
        if not self.held:
            return
        self.held = False
        try:
            await asyncio.wait_for(asyncio.to_thread(self._lease.release), RELEASE_TIMEOUT)
        except Exception as error:
            log.warning(
                "could not release the single-writer lock (%s); it expires within %ds",
                describe(error),
                self.lease_seconds,
            )
        else:
            log.info("released the single-writer lock (%s)", self.settings.where)


def describe(error: BaseException) -> str:
    """What went wrong, without the SDK's full message (which can quote URLs and request details)."""
    status = getattr(error, "status_code", None)
    code = getattr(error, "error_code", None)
    if status is not None:
        return f"HTTP {status}" + (f" {code}" if code else "")
    if isinstance(error, TimeoutError):
        return "timed out"
    from azure.core.exceptions import ServiceRequestError  # noqa: PLC0415 - loaded already: the error came from it

    if isinstance(error, ServiceRequestError):
        return "storage unreachable (ServiceRequestError)"
    return type(error).__name__
