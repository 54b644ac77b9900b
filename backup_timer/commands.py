"""The operator verbs, shared by the command line and the timer job: build what each needs from settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.settings import BackupSettings

from .azure import ConfigurationError, destination_store, source_container
from .backup import BlobBackup, Progress, RaftBackup, RunResult, run
from .repository import Repository

REPOSITORY_ACCOUNT = "BACKUP_CONNECTION_STRING or BACKUP_ACCOUNT_NAME (the repository's storage account)"
VAULT_ACCOUNT = (
    "AZURE_STORAGE_CONNECTION_STRING, or AZURE_ACCOUNT_NAME with AZURE_STORAGE_KEY or the managed identity "
    "(Vault's storage account)"
)


@contextmanager
def naming(settings: str | None) -> Iterator[None]:
    """Say which settings a ConfigurationError raised while building a storage client is about."""
    try:
        yield
    except ConfigurationError as error:
        if settings is None:
            raise
        raise ConfigurationError(f"{settings}: {error}") from None


def open_repository(settings: BackupSettings, directory: Path | None = None) -> Repository:
    with naming(REPOSITORY_ACCOUNT if directory is None and settings.destination_container else None):
        return Repository(destination_store(settings, directory))


def raft_token(settings: BackupSettings) -> str:
    if settings.raft_token:
        return settings.raft_token
    if settings.raft_token_file.is_file():
        return settings.raft_token_file.read_text().strip()
    raise ConfigurationError(
        "raft backups need a token that can read sys/storage/raft/snapshot: set VAULTFN_BACKUP_TOKEN "
        "(see README, Backups, for the policy)"
    )


def backup(settings: BackupSettings, repository: Repository, progress: Progress | None = None) -> RunResult:
    if settings.source == "blob":
        with naming(VAULT_ACCOUNT if settings.source_container else None):
            container, urls = source_container(settings)
        return run(repository, BlobBackup(repository, container, urls, settings, progress))
    return run(repository, RaftBackup(repository, settings.raft_address, raft_token(settings)))
