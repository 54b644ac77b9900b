"""The operator verbs, shared by the command line and the timer job: build what each needs from settings."""

from __future__ import annotations

from pathlib import Path

from shared.settings import BackupSettings

from .azure import ConfigurationError, destination_store, source_container
from .backup import BlobBackup, Progress, RaftBackup, RunResult, run
from .repository import Repository


def open_repository(settings: BackupSettings, directory: Path | None = None) -> Repository:
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
        container, urls = source_container(settings)
        return run(repository, BlobBackup(repository, container, urls, settings, progress))
    return run(repository, RaftBackup(repository, settings.raft_address, raft_token(settings)))
