"""`python -m vault_handler.migrate`: the `vault operator migrate` config, run as the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
# Distinctive, valid base64, so that any trace of it in the output is found.
STORAGE_KEY = "bWlncmF0ZS10ZXN0LXN0b3JhZ2Uta2V5LTdmM2E5YzFl"
BASE_ENV = {"AZURE_ACCOUNT_NAME": "vaultstore", "AZURE_BLOB_CONTAINER": "vault"}
ARGS = ["--raft-path", "/vault/data", "--node-id", "vault-0"]


def run(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "VAULT", "BACKUP_", "FUNCTIONS_"))}
    return subprocess.run(
        [sys.executable, "-m", "vault_handler.migrate", *args],
        env={**clean, "PYTHONPATH": str(REPO), **env},
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _plain(value: Any) -> Any:
    """python-hcl2 versions differ: attribute values may come in a list, strings with their quotes."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse_hcl(text: str) -> dict[str, Any]:
    try:
        import hcl2  # noqa: PLC0415 - optional: the `hcl2` module (python-hcl2, or bc-python-hcl2 via checkov)
    except ImportError:
        pytest.skip("python-hcl2 is not installed")
    return {key: _plain(value) for key, value in hcl2.loads(text).items()}


def test_config_parses_with_the_right_blocks_and_values():
    """The printed config is valid HCL with storage_source azure, storage_destination raft and cluster_addr."""
    result = run(
        {**BASE_ENV, "AZURE_STORAGE_KEY": STORAGE_KEY}, *ARGS, "--cluster-addr", "https://vault-0.internal:8201"
    )
    assert result.returncode == 0, result.stderr
    config = parse_hcl(result.stdout)
    assert set(config) == {"storage_source", "storage_destination", "cluster_addr"}
    assert config["storage_source"] == {
        "azure": {"accountName": "vaultstore", "container": "vault", "environment": "AzurePublicCloud"}
    }
    assert config["storage_destination"] == {"raft": {"path": "/vault/data", "node_id": "vault-0"}}
    assert config["cluster_addr"] == "https://vault-0.internal:8201"


def test_cluster_addr_defaults_to_the_node_id():
    """Without --cluster-addr the node's address is https://NODE_ID:8201."""
    result = run(BASE_ENV, *ARGS)
    assert result.returncode == 0, result.stderr
    assert parse_hcl(result.stdout)["cluster_addr"] == "https://vault-0:8201"


def test_storage_key_never_appears_and_the_command_reads_it_from_the_environment(tmp_path: Path):
    """With an account key the output holds no key, no accountKey, and a command that sets AZURE_ACCOUNT_KEY."""
    env = {**BASE_ENV, "AZURE_STORAGE_KEY": STORAGE_KEY}
    plain = run(env, *ARGS)
    as_json = run(env, *ARGS, "--json")
    to_file = run(env, *ARGS, "--out", str(tmp_path / "migrate.hcl"))
    for result in (plain, as_json, to_file):
        assert result.returncode == 0, result.stderr
        assert STORAGE_KEY not in result.stdout + result.stderr
    written = (tmp_path / "migrate.hcl").read_text()
    assert STORAGE_KEY not in written
    assert "accountKey" not in parse_hcl(written)["storage_source"]["azure"]
    assert "AZURE_ACCOUNT_KEY=" in plain.stderr
    assert "vault operator migrate -config migrate.hcl" in plain.stderr


def test_connection_string_gives_the_account_and_keeps_its_key_out():
    """A connection string source yields its AccountName; its AccountKey is never printed."""
    connection = f"DefaultEndpointsProtocol=https;AccountName=vaultstore;AccountKey={STORAGE_KEY}"
    env = {"AZURE_STORAGE_CONNECTION_STRING": connection, "AZURE_BLOB_CONTAINER": "vault"}
    result = run(env, *ARGS, "--json")
    assert result.returncode == 0, result.stderr
    assert STORAGE_KEY not in result.stdout + result.stderr
    assert json.loads(result.stdout)["account"] == "vaultstore"


def test_json_output_holds_config_command_and_notes():
    """--json prints one object with the parsed values, the HCL text, the command and notes."""
    result = run(BASE_ENV, *ARGS, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["account"] == "vaultstore"
    assert data["container"] == "vault"
    assert data["raft_path"] == "/vault/data"
    assert data["node_id"] == "vault-0"
    assert data["key_from_env"] is False  # managed identity
    assert parse_hcl(data["config"])["storage_destination"]["raft"]["node_id"] == "vault-0"
    assert data["command"].endswith("vault operator migrate -config migrate.hcl")
    assert "AZURE_ACCOUNT_KEY=" not in data["command"]
    assert any("Stop the function app" in note for note in data["notes"])


def test_out_writes_the_file_and_prints_the_command(tmp_path: Path):
    """--out writes the config to the file and prints where, the notes and the command naming that file."""
    target = tmp_path / "m.hcl"
    result = run(BASE_ENV, *ARGS, "--out", str(target))
    assert result.returncode == 0, result.stderr
    assert parse_hcl(target.read_text())["storage_source"]["azure"]["container"] == "vault"
    assert f"vault operator migrate -config {target}" in result.stdout


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({}, ARGS, "not a blob container"),
        ({"AZURE_BLOB_CONTAINER": "vault"}, ARGS, "AZURE_ACCOUNT_NAME"),
        ({**BASE_ENV, "AZURE_BLOB_CONTAINER": "Bad_Name"}, ARGS, "not a blob container name"),
        (BASE_ENV, [*ARGS, "--cluster-addr", "vault-0:8201"], "not a cluster address"),
        (BASE_ENV, [*ARGS, "--cluster-addr", "https://vault-0"], "not a cluster address"),
        (BASE_ENV, ["--raft-path", "data", "--node-id", "vault-0"], "not absolute"),
        (BASE_ENV, ["--raft-path", '/x"y', "--node-id", "vault-0"], "plain value"),
        (BASE_ENV, ["--raft-path", "/vault/data", "--node-id", "vault 0"], "not a node id"),
    ],
)
def test_bad_settings_or_arguments_exit_2(env: dict[str, str], args: list[str], message: str):
    """A missing or invalid source, or a bad argument, exits 2 with a message that names it and prints no config."""
    result = run(env, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_missing_required_arguments_exit_2():
    """Without --raft-path and --node-id argparse exits 2."""
    result = run(BASE_ENV)
    assert result.returncode == 2
    assert "--raft-path" in result.stderr


def test_handler_start_path_does_not_import_migrate():
    """Importing the handler's entry point and server leaves vault_handler.migrate unloaded."""
    code = "import sys, vault_handler.__main__, vault_handler.server; print('vault_handler.migrate' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
