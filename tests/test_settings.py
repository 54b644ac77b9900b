"""Unit tests of shared.settings: typed, validated settings from the environment."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shared.settings import (
    LOCAL_TEMPLATE,
    MIN_INIT_TOKEN_LENGTH,
    PRODUCTION_TEMPLATE,
    Settings,
    SettingsError,
)

INIT_TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def error_for(env: dict[str, str]) -> SettingsError:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    return caught.value


def test_defaults(tmp_path: Path):
    settings = Settings.from_env({})
    assert settings.listen_host == "127.0.0.1"
    assert settings.listen_port == 8200
    assert settings.under_functions_host is False
    assert settings.config_template == LOCAL_TEMPLATE
    assert settings.local is True
    assert settings.auto_init is True
    assert settings.eager_start is False
    assert settings.max_request_duration == 90.0
    assert settings.vault_port == 0
    assert settings.vault_binary is None
    assert settings.init_token is None
    assert settings.log_level == "INFO"
    assert settings.vault_api_addr is None
    assert settings.data_dir == tmp_path / ".data"
    assert settings.shutdown_timeout == 10.0
    assert dict(settings.environment) == {}


def test_templates_exist():
    assert LOCAL_TEMPLATE.is_file()
    assert PRODUCTION_TEMPLATE.is_file()
    assert LOCAL_TEMPLATE != PRODUCTION_TEMPLATE


def test_under_the_functions_host():
    settings = Settings.from_env(
        {"FUNCTIONS_CUSTOMHANDLER_PORT": "34567", "VAULTFN_HOST": "0.0.0.0", "VAULTFN_PORT": "9000"}
    )
    assert settings.under_functions_host is True
    assert settings.listen_host == "127.0.0.1"
    assert settings.listen_port == 34567
    assert settings.config_template == PRODUCTION_TEMPLATE
    assert settings.local is False
    assert settings.auto_init is False


def test_empty_host_port_means_not_under_the_host():
    settings = Settings.from_env({"FUNCTIONS_CUSTOMHANDLER_PORT": ""})
    assert settings.under_functions_host is False
    assert settings.listen_port == 8200


def test_local_host_and_port():
    settings = Settings.from_env({"VAULTFN_HOST": "0.0.0.0", "VAULTFN_PORT": "9000"})
    assert (settings.listen_host, settings.listen_port) == ("0.0.0.0", 9000)


def test_auto_init_follows_the_host_not_the_template():
    # Under the Functions host Vault is never initialized automatically, whatever the template.
    under_host = {"FUNCTIONS_CUSTOMHANDLER_PORT": "34567", "VAULT_CONFIG_TEMPLATE": str(LOCAL_TEMPLATE)}
    settings = Settings.from_env(under_host)
    assert settings.config_template == LOCAL_TEMPLATE
    assert settings.local is False
    assert settings.auto_init is False
    settings = Settings.from_env({"VAULT_CONFIG_TEMPLATE": str(PRODUCTION_TEMPLATE)})
    assert settings.config_template == PRODUCTION_TEMPLATE
    assert settings.local is True
    assert settings.auto_init is True


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("false", False)])
def test_auto_init_can_be_set(raw: str, expected: bool):
    assert Settings.from_env({"VAULTFN_AUTO_INIT": raw}).auto_init is expected
    assert Settings.from_env({"VAULTFN_AUTO_INIT": raw, "FUNCTIONS_CUSTOMHANDLER_PORT": "1"}).auto_init is expected


def test_custom_template_relative_to_cwd(tmp_path: Path):
    (tmp_path / "my.hcl.tpl").write_text("ui = true\n", encoding="utf-8")
    settings = Settings.from_env({"VAULT_CONFIG_TEMPLATE": "my.hcl.tpl"})
    assert settings.config_template == tmp_path / "my.hcl.tpl"
    assert settings.local is True


@pytest.mark.parametrize("name", ["VAULTFN_PORT", "FUNCTIONS_CUSTOMHANDLER_PORT", "VAULTFN_VAULT_PORT"])
@pytest.mark.parametrize("raw", ["abc", "65536", "-1", "80.0", " 80", "8o80", "99999999999999999999"])
def test_invalid_ports(name: str, raw: str):
    error = error_for({name: raw})
    assert error.name == name
    assert str(error).startswith(f"{name}: {raw!r} is not a port number; ")


@pytest.mark.parametrize("name", ["VAULTFN_PORT", "FUNCTIONS_CUSTOMHANDLER_PORT"])
def test_port_zero_is_invalid_for_the_handler(name: str):
    assert error_for({name: "0"}).name == name


def test_port_bounds():
    assert Settings.from_env({"VAULTFN_PORT": "1"}).listen_port == 1
    assert Settings.from_env({"VAULTFN_PORT": "65535"}).listen_port == 65535
    assert Settings.from_env({"VAULTFN_VAULT_PORT": "0"}).vault_port == 0
    assert Settings.from_env({"VAULTFN_VAULT_PORT": "41234"}).vault_port == 41234


def test_superscript_digit_port_is_a_settings_error():
    assert error_for({"VAULTFN_PORT": "²"}).name == "VAULTFN_PORT"


def test_vault_port_equal_to_the_handler_port():
    error = error_for({"VAULTFN_PORT": "9000", "VAULTFN_VAULT_PORT": "9000"})
    assert error.name == "VAULTFN_VAULT_PORT"
    assert "9000 is the handler's own port" in str(error)
    error = error_for({"FUNCTIONS_CUSTOMHANDLER_PORT": "34567", "VAULTFN_VAULT_PORT": "34567"})
    assert error.name == "VAULTFN_VAULT_PORT"


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("1", True), ("YES", True), (" On ", True)])
def test_true_flags(raw: str, expected: bool):
    assert Settings.from_env({"VAULTFN_EAGER_START": raw}).eager_start is expected


@pytest.mark.parametrize("raw", ["false", "0", "No", "off", ""])
def test_false_flags(raw: str):
    assert Settings.from_env({"VAULTFN_EAGER_START": raw}).eager_start is False
    assert Settings.from_env({"VAULTFN_AUTO_INIT": raw}).auto_init is False


@pytest.mark.parametrize("name", ["VAULTFN_EAGER_START", "VAULTFN_AUTO_INIT"])
@pytest.mark.parametrize("raw", ["maybe", "2", "y", "enabled"])
def test_invalid_flags(name: str, raw: str):
    error = error_for({name: raw})
    assert error.name == name
    assert str(error) == f"{name}: {raw!r} is not a boolean; set it to true or false"


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("1.5m", 90.0),
        ("500ms", 0.5),
        ("2h", 7200.0),
        (" 30s ", 30.0),
        ("0.25", 0.25),
        ("", 90.0),
    ],
)
def test_durations(raw: str, seconds: float):
    assert Settings.from_env({"VAULTFN_MAX_REQUEST_DURATION": raw}).max_request_duration == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["0", "0s", "-5", "abc", "5x", "1.5.0", "90 s", "1e3", "inf", ".5", "5min"])
def test_invalid_durations(raw: str):
    error = error_for({"VAULTFN_MAX_REQUEST_DURATION": raw})
    assert error.name == "VAULTFN_MAX_REQUEST_DURATION"
    assert "is not a duration" in str(error)
    assert "90s, 1.5m, 500ms" in str(error)


@pytest.mark.parametrize(("raw", "level"), [("debug", "DEBUG"), ("Warning", "WARNING"), ("ERROR", "ERROR")])
def test_log_levels(raw: str, level: str):
    assert Settings.from_env({"VAULTFN_LOG_LEVEL": raw}).log_level == level


@pytest.mark.parametrize("raw", ["TRACE", "verbose", "CRITICAL"])
def test_invalid_log_level(raw: str):
    error = error_for({"VAULTFN_LOG_LEVEL": raw})
    assert error.name == "VAULTFN_LOG_LEVEL"
    assert "DEBUG, INFO, WARNING, ERROR" in str(error)


def test_init_token():
    assert Settings.from_env({"VAULTFN_INIT_TOKEN": INIT_TOKEN}).init_token == INIT_TOKEN
    assert Settings.from_env({"VAULTFN_INIT_TOKEN": "x" * MIN_INIT_TOKEN_LENGTH}).init_token == "x" * 16
    assert Settings.from_env({"VAULTFN_INIT_TOKEN": ""}).init_token is None


def test_short_init_token():
    short = "shorttoken12345"
    assert len(short) == MIN_INIT_TOKEN_LENGTH - 1
    error = error_for({"VAULTFN_INIT_TOKEN": short})
    assert error.name == "VAULTFN_INIT_TOKEN"
    assert "shorter than 16 characters" in str(error)
    assert short not in str(error)


@pytest.mark.parametrize("raw", ["/nonexistent/vault.hcl.tpl", "missing.tpl", "."])
def test_missing_template(raw: str):
    error = error_for({"VAULT_CONFIG_TEMPLATE": raw})
    assert error.name == "VAULT_CONFIG_TEMPLATE"
    assert "does not exist" in str(error)


def test_vault_binary():
    assert Settings.from_env({"VAULT_BINARY": "/opt/vault"}).vault_binary == "/opt/vault"
    assert Settings.from_env({"VAULT_BINARY": ""}).vault_binary is None


def test_data_dir(tmp_path: Path):
    assert Settings.from_env({"VAULTFN_DATA_DIR": "state"}).data_dir == tmp_path / "state"
    assert Settings.from_env({"VAULTFN_DATA_DIR": "/var/lib/vaultfn"}).data_dir == Path("/var/lib/vaultfn")


def test_api_addr():
    assert Settings.from_env({"VAULT_API_ADDR": "https://vault.example"}).vault_api_addr == "https://vault.example"
    both = {"VAULT_API_ADDR": "https://vault.example", "WEBSITE_HOSTNAME": "app.azurewebsites.net"}
    assert Settings.from_env(both).vault_api_addr == "https://vault.example"
    on_azure = {"WEBSITE_HOSTNAME": "app.azurewebsites.net"}
    assert Settings.from_env(on_azure).vault_api_addr == "https://app.azurewebsites.net"
    empty = {"VAULT_API_ADDR": "", "WEBSITE_HOSTNAME": "app.azurewebsites.net"}
    assert Settings.from_env(empty).vault_api_addr == "https://app.azurewebsites.net"
    assert Settings.from_env({"WEBSITE_HOSTNAME": ""}).vault_api_addr is None


def test_environment_is_a_copy_kept_out_of_repr():
    env = {"AZURE_STORAGE_KEY": "c2VjcmV0LXN0b3JhZ2Uta2V5", "VAULT_API_ADDR": "https://vault.example"}
    settings = Settings.from_env(env)
    assert settings.environment["AZURE_STORAGE_KEY"] == "c2VjcmV0LXN0b3JhZ2Uta2V5"
    env["AZURE_STORAGE_KEY"] = "changed"
    assert settings.environment["AZURE_STORAGE_KEY"] == "c2VjcmV0LXN0b3JhZ2Uta2V5"
    assert "c2VjcmV0LXN0b3JhZ2Uta2V5" not in repr(settings)
    assert "c2VjcmV0LXN0b3JhZ2Uta2V5" not in str(settings)
    assert "https://vault.example" in repr(settings)  # ordinary fields do show


def test_init_token_is_kept_out_of_repr():
    assert INIT_TOKEN not in repr(Settings.from_env({"VAULTFN_INIT_TOKEN": INIT_TOKEN}))


def test_settings_are_frozen():
    settings = Settings.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.listen_port = 1  # type: ignore[misc]


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch):
    for name in ("FUNCTIONS_CUSTOMHANDLER_PORT", "VAULT_CONFIG_TEMPLATE", "VAULTFN_VAULT_PORT", "VAULTFN_INIT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VAULTFN_PORT", "9123")
    monkeypatch.setenv("VAULTFN_MAX_REQUEST_DURATION", "2m")
    settings = Settings.from_env()
    assert settings.listen_port == 9123
    assert settings.max_request_duration == 120.0
    assert settings.environment["VAULTFN_PORT"] == "9123"


def test_the_lock_is_on_whenever_vault_stores_in_a_container():
    assert Settings.from_env({}).lock.enabled is False
    lock = Settings.from_env({"AZURE_BLOB_CONTAINER": "vault", "AZURE_ACCOUNT_NAME": "acct"}).lock
    assert (lock.enabled, lock.container, lock.blob, lock.lease_seconds) == (True, "vault", "vaultfn.lock", 60)
    off = Settings.from_env({"AZURE_BLOB_CONTAINER": "vault", "AZURE_ACCOUNT_NAME": "acct", "VAULTFN_LOCK": "off"})
    assert off.lock.enabled is False


def test_the_lock_key_stays_out_of_repr():
    settings = Settings.from_env(
        {
            "VAULTFN_LOCK": "on",
            "AZURE_BLOB_CONTAINER": "vault",
            "AZURE_ACCOUNT_NAME": "a",
            "AZURE_STORAGE_KEY": "S3CR3T",
        }
    )
    assert "S3CR3T" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "name", "message"),
    [
        ({"VAULTFN_LOCK": "on", "AZURE_ACCOUNT_NAME": "a"}, "VAULTFN_LOCK", "names no container"),
        ({"VAULTFN_LOCK": "on", "AZURE_BLOB_CONTAINER": "v"}, "VAULTFN_LOCK", "no storage account"),
        ({"VAULTFN_LOCK": "maybe"}, "VAULTFN_LOCK", "not a known value"),
        (
            {"AZURE_BLOB_CONTAINER": "v", "AZURE_ACCOUNT_NAME": "a", "VAULTFN_LOCK_LEASE": "90s"},
            "VAULTFN_LOCK_LEASE",
            "from 15 to 60",
        ),
        (
            {"AZURE_BLOB_CONTAINER": "v", "AZURE_ACCOUNT_NAME": "a", "VAULTFN_LOCK_LEASE": "14"},
            "VAULTFN_LOCK_LEASE",
            "from 15 to 60",
        ),
        (
            {"AZURE_BLOB_CONTAINER": "v", "AZURE_ACCOUNT_NAME": "a", "VAULTFN_LOCK_BLOB": "dir/"},
            "VAULTFN_LOCK_BLOB",
            "not a blob name",
        ),
    ],
)
def test_lock_settings_are_checked(env: dict[str, str], name: str, message: str):
    error = error_for(env)
    assert error.name == name
    assert message in str(error)
