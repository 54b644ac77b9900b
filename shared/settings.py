"""The one place where the app reads its settings from the environment.

Every part of the app reads a `Settings` object; nothing else looks at
`os.environ` for configuration. `Settings.from_env` validates everything up
front so that a bad value stops the handler at start with one line that names
the setting and says how to fix it.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent.parent
CONFIG_DIR = APP_DIR / "config"
PRODUCTION_TEMPLATE = CONFIG_DIR / "vault.hcl.tpl"
LOCAL_TEMPLATE = CONFIG_DIR / "local.hcl.tpl"

_KEEP_DEFAULTS = {
    "BACKUP_KEEP_LAST": 7,
    "BACKUP_KEEP_HOURLY": 24,
    "BACKUP_KEEP_DAILY": 14,
    "BACKUP_KEEP_WEEKLY": 8,
    "BACKUP_KEEP_MONTHLY": 12,
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MIN_INIT_TOKEN_LENGTH = 16
DEFAULT_LOCK_BLOB = "vaultfn.lock"
MIN_LEASE, MAX_LEASE = 15, 60  # what Azure allows for a blob lease, in seconds
# Defaults of the timers' `%SETTING%` schedules (six-field NCRONTAB, seconds first),
# for the local scheduler; on Azure the app settings must be set (see README).
SCHEDULE_DEFAULTS = {"KEEPWARM_SCHEDULE": "0 */5 * * * *", "BACKUP_SCHEDULE": "0 0 3 * * *"}
# App settings a production deployment (HashiCorp Vault, config/vault.hcl.tpl) must set; infra/ sets them all.
PRODUCTION_SETTINGS = (
    "FUNCTIONS_WORKER_RUNTIME",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    *SCHEDULE_DEFAULTS,
    "VAULT_API_ADDR",
    "AZURE_TENANT_ID",
    "VAULT_AZUREKEYVAULT_VAULT_NAME",
    "VAULT_AZUREKEYVAULT_KEY_NAME",
    "AZURE_ACCOUNT_NAME",
    "AZURE_BLOB_CONTAINER",
    "VAULTFN_LOCK",
    "BACKUP_ACCOUNT_NAME",
    "BACKUP_CONTAINER",
)


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names it and the fix."""

    def __init__(self, name: str, problem: str, fix: str) -> None:
        super().__init__(f"{name}: {problem}; {fix}")
        self.name = name


@dataclass(frozen=True)
class BackupSettings:
    """Where backups come from and go to (see README, Backups). Secrets stay out of repr."""

    source: str  # "blob" or "raft"
    source_account: str | None
    source_container: str | None
    source_key: str | None = field(repr=False)
    source_connection_string: str | None = field(repr=False)
    raft_address: str
    raft_token: str | None = field(repr=False)
    raft_token_file: Path
    operator_token: str | None = field(repr=False)  # VAULT_TOKEN: restores into a running Vault
    destination_container: str | None
    destination_account: str | None
    destination_connection_string: str | None = field(repr=False)
    destination_dir: Path | None
    keep_last: int
    keep_hourly: int
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    parallelism: int
    max_passes: int
    verify_sample: int
    storage_retries: int
    lock_blob: str  # the single-writer lock's blob in Vault's container: not part of Vault's data

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], reader: _Reader, base_url: str, data_dir: Path, local: bool, lock_blob: str
    ) -> BackupSettings:
        container = env.get("AZURE_BLOB_CONTAINER") or None
        source = reader.choice("BACKUP_SOURCE", "BLOB" if container else "RAFT", ("BLOB", "RAFT")).lower()
        destination_dir = env.get("BACKUP_DIR") or None
        destination_container = env.get("BACKUP_CONTAINER") or None
        if destination_dir is None and destination_container is None and local:
            destination_dir = str(data_dir / "backups")
        keep = {name: reader.count(name, default) for name, default in _KEEP_DEFAULTS.items()}
        if not any(keep.values()):
            raise SettingsError(
                "BACKUP_KEEP_LAST",
                "every BACKUP_KEEP_* is 0, which would prune all but the newest snapshot",
                "keep at least one rule above 0 (defaults: last 7, hourly 24, daily 14, weekly 8, monthly 12)",
            )
        return cls(
            source=source,
            source_account=env.get("AZURE_ACCOUNT_NAME") or None,
            source_container=container,
            source_key=env.get("AZURE_STORAGE_KEY") or None,
            source_connection_string=env.get("AZURE_STORAGE_CONNECTION_STRING") or None,
            raft_address=(env.get("BACKUP_VAULT_ADDR") or base_url).rstrip("/"),
            raft_token=env.get("VAULTFN_BACKUP_TOKEN") or None,
            raft_token_file=data_dir / "backup-token",  # written by the local first start
            operator_token=env.get("VAULT_TOKEN") or env.get("BAO_TOKEN") or None,
            destination_container=destination_container,
            destination_account=env.get("BACKUP_ACCOUNT_NAME") or None,
            destination_connection_string=env.get("BACKUP_CONNECTION_STRING") or None,
            destination_dir=Path(destination_dir).absolute() if destination_dir else None,
            keep_last=keep["BACKUP_KEEP_LAST"],
            keep_hourly=keep["BACKUP_KEEP_HOURLY"],
            keep_daily=keep["BACKUP_KEEP_DAILY"],
            keep_weekly=keep["BACKUP_KEEP_WEEKLY"],
            keep_monthly=keep["BACKUP_KEEP_MONTHLY"],
            parallelism=max(1, reader.count("BACKUP_PARALLELISM", 16)),
            max_passes=max(1, reader.count("BACKUP_MAX_PASSES", 3)),
            verify_sample=reader.count("BACKUP_VERIFY_SAMPLE", 20),
            storage_retries=reader.count("BACKUP_STORAGE_RETRIES", 3),
            lock_blob=lock_blob,
        )


@dataclass(frozen=True)
class LockSettings:
    """The single-writer lock: a blob lease held while this instance runs Vault (see docs/reliability.md)."""

    enabled: bool
    container: str | None
    blob: str
    lease_seconds: int
    account: str | None
    key: str | None = field(repr=False)
    connection_string: str | None = field(repr=False)
    # The same on every start of the handler on one instance, so that a handler the host
    # restarts takes its own lease back at once instead of waiting for it to expire.
    instance_id: str | None = None

    @property
    def where(self) -> str:
        return f"blob {self.blob} in container {self.container}"

    @classmethod
    def from_env(cls, env: Mapping[str, str], reader: _Reader) -> LockSettings:
        container = env.get("VAULTFN_LOCK_CONTAINER") or env.get("AZURE_BLOB_CONTAINER") or None
        mode = reader.choice("VAULTFN_LOCK", "AUTO", ("AUTO", "ON", "OFF"))
        enabled = mode == "ON" or (mode == "AUTO" and bool(env.get("AZURE_BLOB_CONTAINER")))
        account = env.get("AZURE_ACCOUNT_NAME") or None
        connection_string = env.get("AZURE_STORAGE_CONNECTION_STRING") or None
        if enabled and container is None:
            raise SettingsError(
                "VAULTFN_LOCK", "is on but names no container", "set AZURE_BLOB_CONTAINER or VAULTFN_LOCK_CONTAINER"
            )
        if enabled and account is None and connection_string is None:
            raise SettingsError(
                "VAULTFN_LOCK",
                "is on but no storage account is set",
                "set AZURE_ACCOUNT_NAME (managed identity or AZURE_STORAGE_KEY) or AZURE_STORAGE_CONNECTION_STRING",
            )
        lease = reader.duration("VAULTFN_LOCK_LEASE", 60.0)
        if not MIN_LEASE <= lease <= MAX_LEASE or lease != int(lease):
            raise SettingsError(
                "VAULTFN_LOCK_LEASE",
                f"{lease:g}s is not a lease Azure grants",
                f"use whole seconds from {MIN_LEASE} to {MAX_LEASE}",
            )
        blob = env.get("VAULTFN_LOCK_BLOB") or DEFAULT_LOCK_BLOB
        if blob.endswith("/") or len(blob) > 1024:
            raise SettingsError("VAULTFN_LOCK_BLOB", f"{blob!r} is not a blob name", "use a name such as vaultfn.lock")
        return cls(
            enabled=enabled,
            container=container,
            blob=blob,
            lease_seconds=int(lease),
            account=account,
            key=env.get("AZURE_STORAGE_KEY") or None,
            connection_string=connection_string,
            instance_id=env.get("WEBSITE_INSTANCE_ID") or None,
        )


@dataclass(frozen=True)
class Settings:
    """Validated configuration of the handler process (see README, Settings)."""

    listen_host: str
    listen_port: int
    under_functions_host: bool
    config_template: Path
    vault_binary: str | None
    vault_port: int
    data_dir: Path
    eager_start: bool
    auto_init: bool
    max_request_duration: float
    init_token: str | None = field(repr=False)
    log_level: str
    vault_api_addr: str | None
    vault_health_url: str | None
    keepwarm_timeout: float
    backup: BackupSettings
    lock: LockSettings
    # The whole environment, for the template's `env` function and Vault's own
    # variables. Kept out of repr: it holds storage keys and tokens.
    environment: Mapping[str, str] = field(repr=False, default_factory=dict)
    shutdown_timeout: float = 10.0

    @property
    def handler_url(self) -> str:
        """Where this handler itself answers."""
        return _handler_url(self.listen_host, self.listen_port)

    def schedule(self, setting: str) -> str | None:
        """A timer's `%SETTING%` schedule: the app setting, else its documented default."""
        return self.environment.get(setting) or SCHEDULE_DEFAULTS.get(setting)

    @property
    def local(self) -> bool:
        """Outside the Functions host: `make run`, tests, a developer's machine."""
        return not self.under_functions_host

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        reader = _Reader(env)
        host_port = reader.port("FUNCTIONS_CUSTOMHANDLER_PORT", None)
        under_host = host_port is not None
        if under_host:
            listen_host, listen_port = "127.0.0.1", host_port
        else:
            listen_host = reader.text("VAULTFN_HOST", "127.0.0.1")
            listen_port = reader.port("VAULTFN_PORT", 8200)
        default_template = PRODUCTION_TEMPLATE if under_host else LOCAL_TEMPLATE
        template = reader.existing_file("VAULT_CONFIG_TEMPLATE", default_template)
        vault_port = reader.port("VAULTFN_VAULT_PORT", 0, allow_zero=True)
        if vault_port and vault_port == listen_port:
            raise SettingsError(
                "VAULTFN_VAULT_PORT",
                f"{vault_port} is the handler's own port",
                "leave it unset (a free loopback port is picked) or choose another port",
            )
        init_token = env.get("VAULTFN_INIT_TOKEN") or None
        if init_token is not None and len(init_token) < MIN_INIT_TOKEN_LENGTH:
            raise SettingsError(
                "VAULTFN_INIT_TOKEN",
                f"shorter than {MIN_INIT_TOKEN_LENGTH} characters",
                "use a long random value, e.g. `openssl rand -hex 32`",
            )
        data_dir = Path(env.get("VAULTFN_DATA_DIR") or ".data").absolute()
        api_addr = _api_addr(env)
        base_url = api_addr or _handler_url(listen_host, listen_port)
        lock = LockSettings.from_env(env, reader)
        return cls(
            listen_host=listen_host,
            listen_port=listen_port,
            under_functions_host=under_host,
            config_template=template,
            vault_binary=env.get("VAULT_BINARY") or None,
            vault_port=vault_port,
            data_dir=data_dir,
            eager_start=reader.flag("VAULTFN_EAGER_START", False),
            auto_init=reader.flag("VAULTFN_AUTO_INIT", not under_host),
            max_request_duration=reader.duration("VAULTFN_MAX_REQUEST_DURATION", 90.0),
            init_token=init_token,
            log_level=reader.choice("VAULTFN_LOG_LEVEL", "INFO", _LOG_LEVELS),
            vault_api_addr=api_addr,
            vault_health_url=reader.url("VAULT_HEALTH_URL"),
            keepwarm_timeout=reader.duration("KEEPWARM_TIMEOUT", 60.0),
            backup=BackupSettings.from_env(env, reader, base_url, data_dir, not under_host, lock.blob),
            lock=lock,
            environment=dict(env),
        )


def settings_for_command(program: str) -> Settings | None:
    """Settings for a command-line tool, or None after printing the one-line reason (exit with 2)."""
    try:
        return Settings.from_env()
    except SettingsError as error:
        print(f"{program}: invalid setting {error}", file=sys.stderr)
        return None


def _handler_url(host: str, port: int) -> str:
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"


def _api_addr(env: Mapping[str, str]) -> str | None:
    """Vault's advertised address: VAULT_API_ADDR, else the app's public host name on Azure."""
    if env.get("VAULT_API_ADDR"):
        return env["VAULT_API_ADDR"]
    if env.get("WEBSITE_HOSTNAME"):
        return f"https://{env['WEBSITE_HOSTNAME']}"
    return None


class _Reader:
    """Typed accessors that raise `SettingsError` naming the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str, default: str) -> str:
        return self._env.get(name) or default

    def port(self, name: str, default: int | None, allow_zero: bool = False) -> int | None:
        raw = self._env.get(name)
        if not raw:
            return default
        low = 0 if allow_zero else 1
        if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= 65535:
            raise SettingsError(name, f"{raw!r} is not a port number", f"set it to a number from {low} to 65535")
        return int(raw)

    def count(self, name: str, default: int) -> int:
        raw = self._env.get(name)
        if not raw:
            return default
        if not (raw.isascii() and raw.isdigit()):
            raise SettingsError(name, f"{raw!r} is not a whole number", "set it to 0 or more")
        return int(raw)

    def flag(self, name: str, default: bool) -> bool:
        raw = self._env.get(name)
        if raw is None:
            return default
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise SettingsError(name, f"{raw!r} is not a boolean", "set it to true or false")

    def duration(self, name: str, default: float) -> float:
        raw = self._env.get(name)
        if not raw:
            return default
        match = _DURATION.match(raw.strip())
        if not match or float(match.group(1)) <= 0:
            raise SettingsError(name, f"{raw!r} is not a duration", "use seconds such as 90, or 90s, 1.5m, 500ms")
        return float(match.group(1)) * _DURATION_UNITS[match.group(2)]

    def url(self, name: str) -> str | None:
        raw = self._env.get(name)
        if not raw:
            return None
        if not raw.startswith(("http://", "https://")) or len(raw) < len("http://x"):
            raise SettingsError(
                name,
                f"{raw!r} is not an http(s) URL",
                "give a full URL such as https://vault.example.com/v1/sys/health",
            )
        return raw

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = (self._env.get(name) or default).upper()
        if value not in choices:
            raise SettingsError(name, f"{value!r} is not a known value", f"use one of {', '.join(choices)}")
        return value

    def existing_file(self, name: str, default: Path) -> Path:
        raw = self._env.get(name)
        path = Path(raw).absolute() if raw else default
        if not path.is_file():
            raise SettingsError(
                name, f"template {str(path)!r} does not exist", "point it at a readable Vault config template"
            )
        return path
