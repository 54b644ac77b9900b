"""No secret leaves: the whole app runs with distinctive values in every secret setting, then every output is searched.

Searched: the handler's stdout/stderr, every command's stdout/stderr, every raw telemetry
body the ingestion endpoint received, Vault's audit log, and every file written under the
data dir, the app's temporary dir (TMPDIR), the raft backup dir and the storage emulator's
data; each for the raw values and their URL-, JSON-, hex- and base64-encoded forms. Only
the files that exist to hold a secret are exempt, and they must be 0600.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import stat
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, quote_plus

from backup_timer.commands import open_repository
from shared.scrub import SECRET_SETTINGS
from shared.settings import Settings
from vault_handler import bootstrap
from vault_handler.scheduler import timer_payload

from .azurite import Azurite, fill_like_vault, new_container
from .conftest import LOCAL_TEMPLATE, REPO, RunningHandler, wait_until
from .ingestion import IngestionServer

CANARY = uuid.uuid4().hex[:16]
ACCOUNT = "vaultfncanary"


def storage_key(purpose: str) -> tuple[bytes, str]:
    """(64 key bytes that say what they are, their base64 as Azure shows a key)."""
    raw = f"vaultfn-canary-{purpose}-key-{CANARY}".encode().ljust(64, b"~")
    return raw, base64.b64encode(raw).decode()


ACCOUNT_KEY_BYTES, ACCOUNT_KEY = storage_key("storage-account")
WRONG_KEY_BYTES, WRONG_KEY = storage_key("wrong-storage")
INSTRUMENTATION_KEY = f"c0ffee00-cafe-4bad-9bad-{CANARY[:12]}"
# Custom Vault token ids may not contain a dot, so these are found only by their exact values.
OPERATOR_TOKEN = f"canaryOperatorToken{CANARY}"
BACKUP_TOKEN = f"canaryBackupToken{CANARY}"
INIT_TOKEN = f"canary-init-token-{CANARY}"
KV_VALUE = f"canary-kv-password-{CANARY}"
INIT_TOKEN_HEADER, PROBE_HEADER, PROBE = "X-Vaultfn-Init-Token", "X-Canary-Probe", f"probe-{CANARY}"
# A SAS signature is derived from the account key: a read credential for its lifetime.
LIVE_SAS = re.compile(rb"[?&]sig=(?!\[REDACTED\])[^&\s\"'<]{8,}")


def encodings(secret: bytes) -> dict[str, bytes]:
    """The forms a secret can take in text: raw, URL-, JSON-, hex- and base64-encoded (at any alignment)."""
    forms = {"raw": secret, "hex": secret.hex().encode()}
    if secret.isascii():
        text = secret.decode()
        forms["url-encoded"] = quote(text, safe="").encode()
        forms["form-encoded"] = quote_plus(text).encode()
        forms["json-escaped"] = json.dumps(text)[1:-1].encode()
    for shift in range(3):  # inside a longer base64 text: the part that does not depend on the neighbours
        core = base64.b64encode(b"\0" * shift + secret)[4 if shift else 0 : -4]
        forms[f"base64+{shift}"] = core
        forms[f"base64url+{shift}"] = core.replace(b"+", b"-").replace(b"/", b"_")
    unique = {value: form for form, value in reversed(forms.items()) if len(value) >= 16}  # first name wins
    return {form: value for value, form in unique.items()}


def leaks(secrets: dict[str, bytes], haystacks: dict[str, bytes]) -> list[str]:
    found = []
    for secret_name, secret in secrets.items():
        for form, needle in encodings(secret).items():
            found += [f"{secret_name} ({form}) in {where}" for where, hay in haystacks.items() if needle in hay]
    return found


def files_under(roots: list[Path], exempt: set[Path]) -> dict[str, bytes]:
    """Every file's bytes (gzip archives also unpacked), except the exempt ones."""
    contents = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and path not in exempt:
                contents[str(path)] = data = path.read_bytes()
                if data[:2] == b"\x1f\x8b":
                    contents[f"{path} (gunzipped)"] = gzip.decompress(data)
    return contents


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def vault_call(
    handler: RunningHandler, method: str, path: str, token: str, body: dict | None = None, **headers: str
) -> dict:
    status, _, answer = handler.request(method, path, body, {"X-Vault-Token": token, **headers}, timeout=60)
    assert status in (200, 204), (method, path, status, answer)
    return json.loads(answer) if answer else {}


def invoke_timer(handler: RunningHandler, function: str) -> tuple[int, dict]:
    """POST /<function> with the payload the Functions host sends for a timer: (status, envelope)."""
    now = datetime.now(UTC)
    payload = json.dumps(timer_payload(function, now - timedelta(minutes=5), now, now + timedelta(minutes=5)))
    status, _, answer = handler.request("POST", f"/{function}", payload.encode(), timeout=120)
    return status, json.loads(answer)


def command(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def initialize_through_the_guard(handler: RunningHandler) -> dict:
    """sys/init as an operator does it on Azure: refused without the init token, admitted with it."""
    assert wait_until(lambda: handler.request("GET", "/v1/sys/health", timeout=60)[0] == 501, timeout=60)
    request = {"recovery_shares": 3, "recovery_threshold": 2}
    assert handler.request("PUT", "/v1/sys/init", request)[0] == 403
    assert handler.request("PUT", "/v1/sys/init", request, {INIT_TOKEN_HEADER: "x" * 40})[0] == 403
    status, _, answer = handler.request("PUT", "/v1/sys/init", request, {INIT_TOKEN_HEADER: INIT_TOKEN})
    assert status == 200, answer
    handler.wait_healthy()
    return json.loads(answer)


def check_private_config(handler: RunningHandler, temp_dir: Path, settings: dict[str, str]) -> tuple[Path, bytes]:
    """The rendered config: 0600 in a fresh 0700 dir under TMPDIR, named on Vault's command line, never quoted there."""
    (vault_pid,) = handler.vault_pids()
    vault_command = Path(f"/proc/{vault_pid}/cmdline").read_bytes()
    (argument,) = [arg for arg in vault_command.split(b"\0") if arg.startswith(b"-config=")]
    config = Path(argument.removeprefix(b"-config=").decode())
    assert config.parent.parent == temp_dir
    assert (mode(config.parent), mode(config)) == (0o700, 0o600)
    command_lines = vault_command + Path(f"/proc/{handler.process.pid}/cmdline").read_bytes()
    assert leaks({name: value.encode() for name, value in settings.items()}, {"command lines": command_lines}) == []
    # Vault keeps only what it reads itself: a service principal or the identity endpoint for its seal.
    vaults_own = {
        "AZURE_CLIENT_SECRET",
        "AZURE_CLIENT_CERTIFICATE_PASSWORD",
        "IDENTITY_HEADER",
        "MSI_SECRET",
        "VAULT_STATIC_SEAL_KEY",
    }
    not_for_vault = {name: value.encode() for name, value in settings.items() if name not in vaults_own}
    vault_environment = {"Vault's environment": Path(f"/proc/{vault_pid}/environ").read_bytes()}
    assert leaks(not_for_vault, vault_environment) == []
    return config, config.read_bytes()


def use_vault(handler: RunningHandler, root_token: str) -> None:
    """An operator token and a raft-snapshot-only backup token with the planted ids, and a kv secret."""
    vault_call(handler, "POST", "/v1/auth/token/create", root_token, {"id": OPERATOR_TOKEN, "policies": ["root"]})
    policy = f"/v1/sys/policies/acl/{bootstrap.BACKUP_POLICY_NAME}"
    vault_call(handler, "PUT", policy, OPERATOR_TOKEN, {"policy": bootstrap.BACKUP_POLICY})
    backup_token = {"id": BACKUP_TOKEN, "policies": [bootstrap.BACKUP_POLICY_NAME], "period": "768h"}
    vault_call(handler, "POST", "/v1/auth/token/create-orphan", OPERATOR_TOKEN, backup_token)
    vault_call(handler, "POST", "/v1/sys/mounts/secret", OPERATOR_TOKEN, {"type": "kv", "options": {"version": 2}})
    vault_call(handler, "PUT", "/v1/secret/data/app/db", OPERATOR_TOKEN, {"data": {"password": KV_VALUE}})
    # The audit log records these headers in plain text: the init token's must never reach Vault.
    for header in (INIT_TOKEN_HEADER, PROBE_HEADER):
        vault_call(handler, "PUT", f"/v1/sys/config/auditing/request-headers/{header}", OPERATOR_TOKEN, {"hmac": False})
    headers = {INIT_TOKEN_HEADER: INIT_TOKEN, PROBE_HEADER: PROBE}
    read = vault_call(handler, "GET", "/v1/secret/data/app/db", OPERATOR_TOKEN, **headers)
    assert read["data"]["data"] == {"password": KV_VALUE}


def fire_timers(handler: RunningHandler) -> None:
    """The timers as the host fires them, and a backup that fails (repository locked) and logs its exception."""
    status, envelope = invoke_timer(handler, "keepwarm_timer")
    assert status == 200 and envelope["ReturnValue"]["state"] == "active", envelope
    status, envelope = invoke_timer(handler, "backup_timer")
    assert status == 200 and envelope["ReturnValue"]["verify_ok"], envelope
    held = open_repository(Settings.from_env(handler.env).backup).lock("test_secrets")
    try:
        status, envelope = invoke_timer(handler, "backup_timer")
    finally:
        held.release()
    assert status == 500, envelope


def run_commands(env: dict[str, str], backup_dir: Path) -> dict[str, subprocess.CompletedProcess]:
    """The operator commands with the app's settings; one with a wrong storage key, which must fail."""
    wrong = env["BACKUP_CONNECTION_STRING"].replace(ACCOUNT_KEY, WRONG_KEY)
    runs = {
        "backup_timer run": command("backup_timer", "run", "--json", env=env),
        "backup_timer list": command("backup_timer", "list", "--json", env=env),
        "backup_timer verify": command("backup_timer", "verify", "--json", env=env),
        "keepwarm_timer": command("keepwarm_timer", "--json", env=env),
        "backup_timer run (raft)": command(
            "backup_timer", "run", "--json", "--repo-dir", str(backup_dir), env={**env, "BACKUP_SOURCE": "raft"}
        ),
        "backup_timer list (wrong key)": command(
            "backup_timer", "list", env={**env, "BACKUP_CONNECTION_STRING": wrong, "BACKUP_STORAGE_RETRIES": "0"}
        ),
    }
    for name, run in runs.items():
        assert (run.returncode != 0) is name.endswith("(wrong key)"), f"{name}: {run.stderr}"
    assert len(json.loads(runs["backup_timer list"].stdout)) == 2  # the timer's and the command's
    return runs


def test_no_secret_reaches_logs_telemetry_commands_or_files(make_handler, tmp_path: Path) -> None:
    """Every secret setting, the init result and a kv value: found in no log, envelope or file; config 0600."""
    data_dir, temp_dir, backup_dir, audit_dir = (tmp_path / name for name in ("data", "tmp", "backups", "audit"))
    for directory in (temp_dir, audit_dir):
        directory.mkdir(mode=0o700)
    audit_log = audit_dir / "audit.log"
    template = tmp_path / "secrets.hcl.tpl"
    template.write_text(
        LOCAL_TEMPLATE.read_text()
        # As in the production template: the storage key goes into the rendered config.
        + '\n# accountKey = "{{ env "AZURE_STORAGE_KEY" }}"\n'
        + f'audit "file" "test" {{\n  options {{\n    file_path = "{audit_log}"\n  }}\n}}\n'
    )
    ingestion = IngestionServer()
    azurite = Azurite(account=ACCOUNT, key=ACCOUNT_KEY).start()
    try:
        source = new_container(azurite, "vault")
        fill_like_vault(source, 100)
        secret_settings = {
            "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
            "AZURE_STORAGE_KEY": ACCOUNT_KEY,
            # The same account written differently, so that each string is searched for on its own.
            "BACKUP_CONNECTION_STRING": (
                f"AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};BlobEndpoint={azurite.blob_endpoint};"
            ),
            "VAULTFN_INIT_TOKEN": INIT_TOKEN,
            "VAULT_TOKEN": OPERATOR_TOKEN,
            "VAULTFN_BACKUP_TOKEN": BACKUP_TOKEN,
            "APPLICATIONINSIGHTS_CONNECTION_STRING": (
                f"InstrumentationKey={INSTRUMENTATION_KEY};"
                f"IngestionEndpoint=http://127.0.0.1:{ingestion.server.server_address[1]}/"
            ),
        }
        # Every other setting the scrubber knows as secret (the platform's, the Azure SDK's) gets a value too.
        secret_settings |= {
            name: f"canary-{name.lower()}-{CANARY}" for name in set(SECRET_SETTINGS) - set(secret_settings)
        }
        handler: RunningHandler = make_handler(
            data_dir=data_dir,
            **secret_settings,
            AZURE_ACCOUNT_NAME=ACCOUNT,
            AZURE_BLOB_CONTAINER=source.container_name,
            BACKUP_SOURCE="blob",
            BACKUP_CONTAINER=new_container(azurite, "backups").container_name,
            BACKUP_SCHEDULE="0 0 0 1 1 *",  # the local scheduler stays out of the way
            VAULTFN_AUTO_INIT="false",
            VAULTFN_LOCK="on",
            VAULTFN_LOCK_LEASE="15s",
            VAULT_CONFIG_TEMPLATE=str(template),
            APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL="true",
            TMPDIR=str(temp_dir),
        )
        init = initialize_through_the_guard(handler)
        config, rendered = check_private_config(handler, temp_dir, secret_settings)
        use_vault(handler, init["root_token"])
        fire_timers(handler)
        runs = run_commands(handler.env, backup_dir)
        for name in ("PUT /v1/sys/init", "PUT /v1/secret/*", "POST /keepwarm_timer", "POST /backup_timer"):
            ingestion.wait_for("RequestData", lambda data, name=name: data["name"] == name)
        ingestion.wait_for("AvailabilityData")
        ingestion.wait_for("ExceptionData", lambda data: data["exceptions"][0]["typeName"].endswith("LockHeld"))
        assert handler.stop() == 0  # SIGTERM: the rest of the telemetry is flushed
        assert not config.parent.exists()
        assert any("[core]" in data.get("message", "") for data in ingestion.of_type("MessageData"))
        azurite.stop()  # saves its metadata: the backup store's blobs and properties as the app left them

        # Files that exist to hold a secret: the static seal key. init.json and backup-token are written only by
        # auto-init, which is off. The audit log holds HMACs of secrets only, and is searched like the rest.
        seal_key = data_dir / bootstrap.SEAL_KEY_FILE
        assert not (data_dir / bootstrap.INIT_FILE).exists() and not (data_dir / bootstrap.BACKUP_TOKEN_FILE).exists()
        assert (mode(seal_key), mode(audit_log), mode(data_dir)) == (0o600, 0o600, 0o700)
        assert [path for path in data_dir.rglob("*") if mode(path) & 0o077] == []  # private all the way down

        secrets = {name: value.encode() for name, value in secret_settings.items()}
        secrets |= {
            "storage account key (decoded)": ACCOUNT_KEY_BYTES,
            "wrong storage key": WRONG_KEY.encode(),
            "wrong storage key (decoded)": WRONG_KEY_BYTES,
            "root token": init["root_token"].encode(),
            "kv secret value": KV_VALUE.encode(),
            "static seal key": seal_key.read_bytes(),
        }
        recovery = zip(init["recovery_keys"], init["recovery_keys_base64"], strict=True)
        for index, (hex_key, base64_key) in enumerate(recovery):
            secrets[f"recovery key {index}"] = bytes.fromhex(hex_key)
            secrets[f"recovery key {index} (base64)"] = base64_key.encode()
        assert "AZURE_STORAGE_KEY (raw) in the rendered config" in leaks(secrets, {"the rendered config": rendered})

        outputs = {"handler stdout/stderr": handler.log_path.read_bytes()}
        for name, run in runs.items():
            outputs[f"`{name}` stdout"] = run.stdout.encode()
            outputs[f"`{name}` stderr"] = run.stderr.encode()
        telemetry = {f"telemetry body {index}": body for index, body in enumerate(ingestion.raw)}
        written = files_under([data_dir, temp_dir, backup_dir, audit_dir, azurite.location], exempt={seal_key})
        assert any("/raft/" in name for name in written)
        audited = written[str(audit_log)]
        assert b"secret/data/app/db" in audited and b"hmac-sha256:" in audited and PROBE.encode() in audited
        everything = {**outputs, **telemetry, **written}
        found = leaks(secrets, everything)
        # The instrumentation key must reach the ingestion endpoint, and nothing else.
        found += leaks({"instrumentation key": INSTRUMENTATION_KEY.encode()}, {**outputs, **written})
        # The emulator's metadata records each server-side copy's source URL, SAS included (x-ms-copy-source).
        emulator_metadata = {str(path) for path in azurite.location.glob("__azurite_db_*")}
        found += [
            f"a SAS signature in {where}"
            for where, hay in everything.items()
            if where not in emulator_metadata and LIVE_SAS.search(hay)
        ]
        assert found == [], "\n".join(found)
    finally:
        azurite.close()
        ingestion.close()
