"""The Terraform in infra/ parses, passes checkov, sets every production setting; the Functions layout matches."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest

from shared.settings import PRODUCTION_SETTINGS, SCHEDULE_DEFAULTS
from vault_handler.invocations import FUNCTION_JOBS
from vault_handler.routing import is_vault_path

from .conftest import REPO

INFRA = REPO / "infra"
FUNCTION_APPS = {"consumption": "azurerm_linux_function_app", "flex": "azurerm_function_app_flex_consumption"}
SKIP = re.compile(r"#checkov:skip=(CKV2?_[A-Z]+_\d+):(.*)")


def tf_files() -> list[Path]:
    return sorted(INFRA.glob("*.tf"))


def parsed() -> dict[str, list[Any]]:
    """All .tf files merged: top-level block type -> list of blocks (python-hcl2's shape)."""
    merged: dict[str, list[Any]] = {}
    for path in tf_files():
        for key, blocks in hcl2.loads(path.read_text(encoding="utf-8")).items():
            merged.setdefault(key, []).extend(blocks)
    return merged


def locals_() -> dict[str, Any]:
    return {name: value for block in parsed()["locals"] for name, value in block.items() if not name.startswith("__")}


def resource(kind: str, name: str) -> dict[str, Any]:
    (found,) = [block[kind][name] for block in parsed()["resource"] if name in block.get(kind, {})]
    return found


def first(value: Any) -> Any:
    """python-hcl2 wraps every attribute value in a list."""
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def setting_names(expression: Any, flavor: str, local_values: dict[str, Any]) -> set[str]:
    """The app setting names a map expression yields: literal keys, inline map keys, locals it merges."""
    expression = first(expression)
    if isinstance(expression, dict):
        return set(expression)
    names = set(re.findall(r"'([A-Za-z_][A-Za-z0-9_]*)':", expression))
    for local, by_flavor in re.findall(r"local\.(\w+)(\[var\.vault_flavor\])?", expression):
        value = first(local_values[local])
        names |= setting_names(value[flavor] if by_flavor else value, flavor, local_values)
    return names


def derived_settings(kind: str, body: dict[str, Any]) -> set[str]:
    """Settings the azurerm provider writes itself from the resource's arguments."""
    site_config = first(body["site_config"])
    derived = set()
    if "application_insights_connection_string" in site_config:
        derived.add("APPLICATIONINSIGHTS_CONNECTION_STRING")
    if kind == "azurerm_linux_function_app" and "python_version" in first(site_config["application_stack"]):
        derived.add("FUNCTIONS_WORKER_RUNTIME")  # application_stack.python_version sets it to python
    if kind == "azurerm_function_app_flex_consumption" and first(body["runtime_name"]) == "python":
        derived.add("FUNCTIONS_WORKER_RUNTIME")  # Flex: the runtime, not an app setting
    return derived


def app_settings(plan: str, flavor: str = "vault") -> set[str]:
    kind = FUNCTION_APPS[plan]
    body = resource(kind, "consumption" if plan == "consumption" else "flex")
    return setting_names(body["app_settings"], flavor, locals_()) | derived_settings(kind, body)


def test_every_tf_file_parses():
    """Every .tf file in infra/ parses with python-hcl2 (bc-python-hcl2, the module checkov uses)."""
    assert {path.name for path in tf_files()} >= {"providers.tf", "variables.tf", "outputs.tf", "main.tf", "auth.tf"}
    for path in tf_files():
        assert hcl2.loads(path.read_text(encoding="utf-8")), path


def test_variables_and_outputs_are_documented():
    """Every variable has a description and a type, every output a description, and infra/README.md lists them."""
    readme = (INFRA / "README.md").read_text(encoding="utf-8")
    tree = parsed()
    for block in tree["variable"]:
        for name, body in block.items():
            assert first(body.get("description")) and body.get("type"), name
            assert f"`{name}`" in readme, f"variable {name} missing from infra/README.md"
    for block in tree["output"]:
        for name, body in block.items():
            assert first(body.get("description")), name
            assert f"`{name}`" in readme, f"output {name} missing from infra/README.md"


def run_checkov(*extra: str) -> dict[str, Any]:
    checkov = REPO / ".venv-checkov" / "bin" / "checkov"  # made by `make install`
    command = str(checkov) if checkov.exists() else shutil.which("checkov")
    assert command, "checkov is not installed: run `make install` (it makes .venv-checkov)"
    # Offline: no guideline download, no platform calls.
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_NO_OUTPUT_COLOR": "1", "LOG_LEVEL": "ERROR"}
    args = [command, "-d", str(INFRA), "--framework", "terraform", "--quiet", "--compact", "--skip-download", *extra]
    result = subprocess.run(
        [*args, "-o", "json"], capture_output=True, text=True, env=env, timeout=120, check=False, cwd=REPO
    )
    assert result.stdout.strip(), result.stderr[-2000:]
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


@pytest.fixture(scope="module")
def checkov_report() -> dict[str, Any]:
    return run_checkov()


def test_checkov_passes(checkov_report: dict[str, Any]):
    """checkov finds no failed check in infra/ (skips are only the justified ones in the .tf files)."""
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in checkov_report["results"]["failed_checks"]]
    summary = checkov_report["summary"]
    assert summary["failed"] == 0 and not failed, failed
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 0 and summary["resource_count"] > 0


def test_every_checkov_skip_is_justified(checkov_report: dict[str, Any]):
    """Each `#checkov:skip` carries a real justification, and checkov applied them all (no stale skips)."""
    written = [match for path in tf_files() for match in SKIP.findall(path.read_text(encoding="utf-8"))]
    assert written
    for check, reason in written:
        assert len(reason.split()) >= 8, f"{check}: justification too short: {reason!r}"
    assert checkov_report["summary"]["skipped"] == len(written)


@pytest.mark.parametrize("plan", sorted(FUNCTION_APPS))
def test_terraform_sets_every_production_setting(plan: str):
    """The function app's settings (app_settings plus what the provider derives) cover PRODUCTION_SETTINGS."""
    missing = set(PRODUCTION_SETTINGS) - app_settings(plan)
    assert not missing, f"plan {plan}: Terraform does not set {sorted(missing)}"


@pytest.mark.parametrize("plan", sorted(FUNCTION_APPS))
def test_openbao_flavor_gets_its_seal_key_from_key_vault(plan: str):
    """With vault_flavor = "openbao" the seal settings are a Key Vault reference instead of the Key Vault seal's."""
    settings = app_settings(plan, "openbao")
    assert "VAULT_STATIC_SEAL_KEY" in settings
    assert not settings & {"VAULT_AZUREKEYVAULT_VAULT_NAME", "VAULT_AZUREKEYVAULT_KEY_NAME"}
    reference = first(locals_()["seal_settings"])["openbao"]["VAULT_STATIC_SEAL_KEY"]
    assert "@Microsoft.KeyVault(SecretUri=" in reference


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def test_timer_functions_match_the_jobs_and_terraform():
    """Each job in FUNCTION_JOBS has a timer function.json on a `%SETTING%` schedule that Terraform sets."""
    for plan in FUNCTION_APPS:
        settings = app_settings(plan)
        for name in FUNCTION_JOBS:
            (binding,) = load_json(REPO / name / "function.json")["bindings"]
            assert binding["type"] == "timerTrigger" and binding["direction"] == "in", name
            match = re.fullmatch(r"%(\w+)%", binding["schedule"])
            assert match and match.group(1) in SCHEDULE_DEFAULTS, f"{name}: schedule {binding['schedule']!r}"
            assert match.group(1) in settings, f"plan {plan}: {match.group(1)} not set"


def test_only_http_function_is_vault_handler_and_its_route_admits_only_vault_paths():
    """vault_handler is the only httpTrigger; its route admits /v1/... and /ui/..., never a timer's path."""
    functions = {path.parent.name: load_json(path) for path in REPO.glob("*/function.json")}
    http = [name for name, spec in functions.items() if any(b["type"] == "httpTrigger" for b in spec["bindings"])]
    assert http == ["vault_handler"]
    assert set(functions) == {"vault_handler", *FUNCTION_JOBS}
    (trigger,) = [b for b in functions["vault_handler"]["bindings"] if b["type"] == "httpTrigger"]
    route = re.fullmatch(r"\{\*path:regex\((.*)\)\}", trigger["route"])
    assert route, trigger["route"]
    pattern = re.compile(route.group(1), re.IGNORECASE)  # ASP.NET constraints ignore case
    for path in ("v1/sys/health", "v1/secret/data/x", "v1", "ui", "ui/vault/auth"):
        assert pattern.search(path) and is_vault_path("/" + path), path
    for name in FUNCTION_JOBS:
        assert pattern.search(name) is None and not is_vault_path("/" + name), name


def test_host_json_runs_the_handler():
    """host.json runs `python -m vault_handler` with request forwarding and no /api route prefix."""
    host = load_json(REPO / "host.json")
    handler = host["customHandler"]
    assert handler["enableForwardingHttpRequest"] is True
    assert handler["description"]["defaultExecutablePath"] == "python"
    assert handler["description"]["arguments"] == ["-m", "vault_handler"]
    assert host["extensions"]["http"]["routePrefix"] == ""


COUNTS = {"${var.oidc_enabled ? 1 : 0}", "${var.azure_auth_enabled ? 1 : 0}"}


def test_auth_tf_is_off_by_default_and_checkov_passes_with_it_on(tmp_path: Path):
    """auth.tf's resources exist only with oidc_enabled / azure_auth_enabled (default false); checkov passes them on."""
    tree = parsed()
    defaults = {name: first(body.get("default")) for block in tree["variable"] for name, body in block.items()}
    assert defaults["oidc_enabled"] is False and defaults["azure_auth_enabled"] is False
    for block in tree["resource"]:
        for kind, bodies in block.items():
            for name, body in bodies.items():
                if kind.startswith(("azuread_", "time_")) or name.endswith(("_oidc", "_azure_auth")):
                    assert first(body["count"]) in COUNTS, name
    (tmp_path / "on.tfvars").write_text("oidc_enabled = true\nazure_auth_enabled = true\n", encoding="utf-8")
    report = run_checkov("--var-file", str(tmp_path / "on.tfvars"))
    assert report["summary"]["failed"] == 0, report["results"]["failed_checks"]


def test_oidc_app_redirects_to_the_function_and_the_cli():
    """The Entra ID app's web redirect URIs: the UI callback on the function's host name and the CLI's localhost one."""
    app = resource("azuread_application", "vault_oidc")
    local_values = locals_()
    web = first(app["web"])
    names = [re.fullmatch(r"\$\{local\.(\w+)\}", uri).group(1) for uri in first(web["redirect_uris"])]
    uris = [first(local_values[name]) for name in names]
    assert uris == [
        "https://${local.default_hostname}/ui/vault/auth/oidc/oidc/callback",
        "http://localhost:8250/oidc/callback",
    ]
    assert first(app["group_membership_claims"]) in (["SecurityGroup"], "SecurityGroup")
    assert first(first(first(app["optional_claims"])["id_token"])["name"]) == "groups"
    # The callbacks the UI follows (/ui/...) and the API it calls (/v1/...) are routed to Vault.
    route = load_json(REPO / "vault_handler" / "function.json")["bindings"][0]["route"]
    pattern = re.compile(re.fullmatch(r"\{\*path:regex\((.*)\)\}", route).group(1), re.IGNORECASE)
    for path in ("/ui/vault/auth/oidc/oidc/callback", "/v1/auth/oidc/oidc/callback", "/v1/auth/oidc/oidc/auth_url"):
        assert pattern.search(path.lstrip("/")) and is_vault_path(path), path


def test_azure_auth_role_only_reads():
    """The azure auth method's custom role holds only named read actions: no wildcard, write, delete or action."""
    role = resource("azurerm_role_definition", "vault_azure_auth")
    permissions = first(role["permissions"])
    actions = first(permissions["actions"])
    read = re.compile(r"Microsoft\.[A-Za-z]+(/[A-Za-z]+)+/read")
    assert actions and all(read.fullmatch(action) for action in actions), actions
    assert not first(permissions.get("not_actions", [])) and "data_actions" not in permissions
    assignment = resource("azurerm_role_assignment", "vault_azure_auth")
    assert first(assignment["principal_id"]) == "${local.principal_id}"
    assert first(assignment["scope"]) == first(role["scope"]) == "${local.azure_auth_scope}"


def test_auth_outputs_exist():
    """The outputs the auth command's file needs: tenant, client id and secret (sensitive), redirect URIs, principal."""
    outputs = {name: body for block in parsed()["output"] for name, body in block.items()}
    wanted = {"tenant_id", "oidc_client_id", "oidc_client_secret", "oidc_ui_redirect_uri", "oidc_cli_redirect_uri"}
    assert wanted | {"principal_id"} <= set(outputs)
    assert first(outputs["oidc_client_secret"].get("sensitive")) is True
