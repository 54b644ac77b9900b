"""Build the Azure clients and stores from settings: connection string, account key, or managed identity.

The Azure SDKs are imported here, on the backup's first run, never on the
handler's start path.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.settings import BackupSettings

from .stores import BlobStore, DirStore, Store

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient, ContainerClient

SAS_LIFETIME = timedelta(hours=2)


class ConfigurationError(ValueError):
    """Backups are not configured well enough to run; the message says what to set."""


def _account_url(account: str) -> str:
    return f"https://{account}.blob.core.windows.net"


def service_client(
    connection_string: str | None, account: str | None, key: str | None, retries: int = 3
) -> BlobServiceClient:
    from azure.storage.blob import BlobServiceClient, ExponentialRetry  # noqa: PLC0415 - slow, only for backups

    # The SDK's default waits 15 s, then 18 s, then 24 s: too long for a timer that must
    # say soon that storage is down. Transient faults still get a few quick retries.
    options = {
        "retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=retries),
        "session": _pooled_session(),
    }
    if connection_string:
        return BlobServiceClient.from_connection_string(connection_string, **options)
    if not account:
        raise ConfigurationError("no storage account: set the account name, or a connection string")
    if key:
        return BlobServiceClient(_account_url(account), credential=key, **options)
    from azure.identity import DefaultAzureCredential  # noqa: PLC0415

    return BlobServiceClient(_account_url(account), credential=DefaultAzureCredential(), **options)


def _pooled_session() -> Any:
    """A requests session with a pool as large as the copies in flight (requests' default is 10)."""
    import requests  # noqa: PLC0415

    session = requests.Session()
    session.trust_env = False  # else every request re-reads proxy variables and ~/.netrc: ~9% of a backup's CPU
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _vault_service(settings: BackupSettings) -> BlobServiceClient:
    return service_client(
        settings.source_connection_string, settings.source_account, settings.source_key, settings.storage_retries
    )


class ReadUrls:
    """Read-only SAS URLs for a container's blobs, for server-side copies across accounts.

    Signed with the account key where there is one, else with a user delegation
    key obtained through the managed identity (Storage Blob Data Reader suffices).
    """

    def __init__(self, service: BlobServiceClient, container: str) -> None:
        self.service = service
        self.container = container
        self._delegation_key = None

    def url(self, name: str) -> str:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas  # noqa: PLC0415

        expiry = datetime.now(UTC) + SAS_LIFETIME
        credential = self.service.credential
        signing: dict[str, object]
        if hasattr(credential, "account_key"):
            signing = {"account_key": credential.account_key}
        else:
            if self._delegation_key is None:
                self._delegation_key = self.service.get_user_delegation_key(datetime.now(UTC), expiry)
            signing = {"user_delegation_key": self._delegation_key}
        sas = generate_blob_sas(
            self.service.account_name,
            self.container,
            name,
            permission=BlobSasPermissions(read=True),
            expiry=expiry,
            **signing,
        )
        blob = self.service.get_blob_client(self.container, name)
        return f"{blob.url}?{sas}"


def source_container(settings: BackupSettings) -> tuple[ContainerClient, ReadUrls]:
    if not settings.source_container:
        raise ConfigurationError("the blob source needs AZURE_BLOB_CONTAINER (the container Vault stores its data in)")
    service = _vault_service(settings)
    return service.get_container_client(settings.source_container), ReadUrls(service, settings.source_container)


def vault_account_container(settings: BackupSettings, name: str) -> ContainerClient:
    """A container in Vault's own storage account (where a restored container must live for Vault to use it)."""
    return _vault_service(settings).get_container_client(name)


def destination_store(settings: BackupSettings, directory: Path | None = None) -> Store:
    """The repository's store: BACKUP_DIR, else BACKUP_CONTAINER (the account by identity or connection string)."""
    if directory is not None:
        return DirStore(directory)
    if settings.destination_container:
        service = service_client(
            settings.destination_connection_string, settings.destination_account, None, settings.storage_retries
        )
        container = service.get_container_client(settings.destination_container)
        description = f"container {settings.destination_container} in {service.account_name}"
        return BlobStore(container, description, ReadUrls(service, settings.destination_container))
    if settings.destination_dir is not None:
        return DirStore(settings.destination_dir)
    raise ConfigurationError(
        "no backup destination: set BACKUP_CONTAINER with BACKUP_ACCOUNT_NAME (managed identity) or "
        "BACKUP_CONNECTION_STRING, ideally in another account and region with an immutability policy; "
        "or BACKUP_DIR for a local directory"
    )
