"""Build the Azure clients and stores from settings: connection string, account key, or managed identity.

The Azure SDKs are imported here, on the backup's first run, never on the
handler's start path.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from shared.settings import BackupSettings
from shared.storage import ConfigurationError, service_client

from .stores import BlobStore, DirStore, Store

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient, ContainerClient

# Each SAS is made right before its copy: a short life limits what a SAS kept in a copy's
# properties (the service records the copy source) could read later.
SAS_LIFETIME = timedelta(minutes=15)
DELEGATION_KEY_LIFETIME = timedelta(days=1)


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
                now = datetime.now(UTC)
                self._delegation_key = self.service.get_user_delegation_key(now, now + DELEGATION_KEY_LIFETIME)
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
