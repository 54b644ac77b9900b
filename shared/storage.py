"""Blob service clients for Vault's storage account and the backup account.

One way to reach Azure Storage for every part of the app: a connection string,
an account name with its key, or the app's managed identity. The Azure SDKs
are imported when a client is first built, never on the handler's start path.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient


class ConfigurationError(ValueError):
    """Storage is not configured well enough to use; the message says what to set."""


def account_url(account: str) -> str:
    return f"https://{account}.blob.core.windows.net"


def service_client(
    connection_string: str | None, account: str | None, key: str | None, retries: int = 3, **options: Any
) -> BlobServiceClient:
    """`options` go to the SDK client, e.g. `connection_timeout` and `read_timeout` in seconds."""
    from azure.storage.blob import BlobServiceClient, ExponentialRetry  # noqa: PLC0415 - slow, only when used

    # The SDK's default waits 15 s, then 18 s, then 24 s: too long for a timer that must
    # say soon that storage is down. Transient faults still get a few quick retries.
    options.setdefault("retry_policy", ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=retries))
    options.setdefault("session", _pooled_session())
    if connection_string:
        _check_key(_field(connection_string, "AccountKey"), "the storage connection string's AccountKey")
        try:
            return BlobServiceClient.from_connection_string(connection_string, **options)
        except ValueError as error:
            # The SDK's message can quote the string, key included: name the problem, never the value.
            raise ConfigurationError(
                f"the storage connection string is not valid ({type(error).__name__}); copy it again from the "
                "storage account's Access keys page, or use the account name with a managed identity"
            ) from None
    if not account:
        raise ConfigurationError("no storage account: set the account name, or a connection string")
    if key:
        _check_key(key, "the storage account key")
        return BlobServiceClient(account_url(account), credential=key, **options)
    from azure.identity import DefaultAzureCredential  # noqa: PLC0415

    return BlobServiceClient(account_url(account), credential=DefaultAzureCredential(), **options)


def _field(connection_string: str, name: str) -> str | None:
    for part in connection_string.split(";"):
        field, _, value = part.partition("=")
        if field.strip().lower() == name.lower():
            return value.strip()
    return None


def _check_key(key: str | None, what: str) -> None:
    """A key that is not base64 fails only at the first signed request, with a message that quotes nothing useful."""
    if key is None:
        return
    try:
        base64.b64decode(key, validate=True)
    except binascii.Error:
        raise ConfigurationError(
            f"{what} is not base64; copy key1 or key2 again from the storage account's Access keys page"
        ) from None


def _pooled_session() -> Any:
    """A requests session with a pool as large as the copies in flight (requests' default is 10)."""
    import requests  # noqa: PLC0415

    session = requests.Session()
    session.trust_env = False  # else every request re-reads proxy variables and ~/.netrc: ~9% of a backup's CPU
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
