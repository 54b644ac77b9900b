"""`python -m vault_handler.auth apply`: sign-in for people and machines, against the shared real OpenBao.

A test identity provider made here (an RSA key, its discovery document and JWKS on a
loopback port) stands in for Entra ID and GitHub Actions: OpenBao fetches the discovery
document when the OIDC config is written, and checks GitHub-shaped tokens against the JWKS.
"""

from __future__ import annotations

import base64
import copy
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt  # PyJWT
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.scrub import REDACTED
from vault_handler import auth

from .conftest import RunningHandler, token_header

REPO = Path(__file__).resolve().parent.parent
GITHUB = "https://token.actions.githubusercontent.com"
AUDIENCE = "https://github.com/org"
# Distinctive, so that any trace of it in the output is found.
CLIENT_SECRET = "oidc-client-secret-5f1e0c9a7b3d"
TENANT_GROUP = "0b8f4a52-3c1e-4d6f-9a7b-2e5c8d1f0a93"
APP_POLICY = 'path "secret/data/signin-app/*" { capabilities = ["read"] }\n'
TEAM_POLICY = 'path "secret/data/signin-team/*" { capabilities = ["read"] }\n'


class IdentityProvider:
    """An RSA key with its OIDC discovery document and JWKS served on loopback."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        keys = {"keys": [{**public, "kid": "test-key", "use": "sig", "alg": "RS256"}]}
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.answer(200, provider.discovery() if self.path.endswith("/openid-configuration") else keys)

            def do_POST(self) -> None:
                """The token endpoint: the client secret must match; the code is the nonce to sign in."""
                form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                basic = base64.b64decode(self.headers.get("Authorization", "Basic ")[6:]).decode()
                secret = basic.partition(":")[2] or form.get("client_secret", [""])[0]
                if secret != provider.client_secret:
                    self.answer(401, {"error": "invalid_client"})
                else:
                    id_token = provider.id_token(nonce=form["code"][0])
                    self.answer(200, {"access_token": "at", "token_type": "Bearer", "id_token": id_token})

            def answer(self, status: int, document: dict[str, Any]) -> None:
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.client_secret = CLIENT_SECRET
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "jwks_uri": f"{self.url}/jwks",
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def github_token(self, key: rsa.RSAPrivateKey | None = None, **overrides: Any) -> str:
        """A GitHub Actions-shaped token for org/app on main, signed RS256."""
        now = int(time.time())
        claims = {
            "iss": GITHUB,
            "aud": AUDIENCE,
            "sub": "repo:org/app:ref:refs/heads/main",
            "repository": "org/app",
            "repository_owner": "org",
            "ref": "refs/heads/main",
            "environment": "production",
            "iat": now,
            "nbf": now - 5,
            "exp": now + 300,
            **overrides,
        }
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": "test-key"})

    def id_token(self, nonce: str) -> str:
        """A person's ID token from the Entra-like tenant, member of TENANT_GROUP."""
        now = int(time.time())
        claims = {"iss": self.url, "aud": "vault-ui", "sub": "person-1", "oid": "oid-person-1", "tid": "tenant"}
        claims.update(groups=[TENANT_GROUP], nonce=nonce, iat=now, nbf=now - 5, exp=now + 300)
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "test-key"})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def auth_file(idp: IdentityProvider) -> dict[str, Any]:
    return {
        "policies": {"app-read": APP_POLICY, "team-read": TEAM_POLICY},
        "oidc": {
            "discovery_url": idp.url,
            "client_id": "vault-ui",
            "client_secret_env": "TEST_OIDC_SECRET",
            "host": "https://vault.example.com",
            "default_role": "people",
            "roles": {"people": {"bound_claims": {"tid": "tenant"}}},
            "groups": {TENANT_GROUP: {"name": "vault-readers", "policies": ["team-read"]}},
        },
        "jwt": {
            "jwks_url": f"{idp.url}/jwks",
            "bound_issuer": GITHUB,
            "roles": {
                "deploy": {
                    "repository": "org/app",
                    "ref": "refs/heads/main",
                    "bound_audiences": [AUDIENCE],
                    "token_policies": ["app-read"],
                }
            },
        },
    }


def run_auth(
    vault: RunningHandler, tmp: Path, spec: dict[str, Any] | None, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    path = tmp / "auth.json"
    if spec is not None:
        path.write_text(json.dumps(spec))
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "VAULT", "BAO_", "BACKUP_", "FUNCTIONS_"))
    }
    base = {"PYTHONPATH": str(REPO), "VAULT_ADDR": vault.url, "VAULT_TOKEN": vault.root_token}
    return subprocess.run(
        [sys.executable, "-m", "vault_handler.auth", "apply", "--file", str(path), *args],
        env={**clean, **base, "TEST_OIDC_SECRET": CLIENT_SECRET, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def read(vault: RunningHandler, path: str) -> tuple[int, dict[str, Any]]:
    status, _, body = vault.request("GET", f"/v1/{path}", headers=token_header(vault))
    return status, (json.loads(body).get("data") or {}) if body else {}


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    yield provider
    provider.close()


@pytest.fixture(scope="module")
def applied(vault: RunningHandler, idp: IdentityProvider, tmp_path_factory: pytest.TempPathFactory):
    """The example file applied once to the shared OpenBao: (first run, the file, its folder)."""
    tmp = tmp_path_factory.mktemp("auth")
    spec = auth_file(idp)
    first = run_auth(vault, tmp, spec)
    assert first.returncode == 0, first.stderr
    for secret_path, value in (("signin-app/config", "allowed"), ("signin-other/config", "forbidden")):
        status, _, body = vault.request(
            "POST", f"/v1/secret/data/{secret_path}", {"data": {"value": value}}, token_header(vault)
        )
        assert status == 200, body
    return first, spec, tmp


def login(vault: RunningHandler, token: str, role: str = "deploy") -> tuple[int, dict[str, Any]]:
    status, _, body = vault.request("POST", "/v1/auth/jwt/login", {"role": role, "jwt": token})
    return status, json.loads(body)


def test_apply_twice_changes_nothing_the_second_time(vault: RunningHandler, applied) -> None:
    """The first run enables, creates and writes; the second prints only `unchanged:` and `no changes`."""
    first, spec, tmp = applied
    for line in (
        "created policy app-read",
        "enabled auth method oidc/ (oidc)",
        "enabled auth method jwt/ (jwt)",
        "created role jwt/deploy",
        "created role oidc/people",
        "wrote oidc/ config",
        "wrote jwt/ config",
        "created external group vault-readers (policies: team-read)",
        f"created group alias {TENANT_GROUP} on oidc/ -> vault-readers",
    ):
        assert line in first.stdout.splitlines(), first.stdout
    second = run_auth(vault, tmp, spec)
    assert second.returncode == 0, second.stderr
    lines = second.stdout.splitlines()
    assert lines[-1] == "no changes"
    assert all(line.startswith("unchanged: ") for line in lines[:-1]), second.stdout
    assert "unchanged: role jwt/deploy" in lines and "unchanged: oidc/ config" in lines


@pytest.mark.usefixtures("applied")
def test_vault_state_read_back_equals_the_file(vault: RunningHandler, idp: IdentityProvider) -> None:
    """Roles, the OIDC config, the external group and its alias, and the policy read back as declared."""
    status, role = read(vault, "auth/jwt/role/deploy")
    assert status == 200
    assert role["role_type"] == "jwt" and role["user_claim"] == "repository"
    assert role["bound_claims"] == {"repository": "org/app", "ref": "refs/heads/main"}
    assert role["bound_audiences"] == [AUDIENCE] and role["token_policies"] == ["app-read"]
    assert (role["token_ttl"], role["token_max_ttl"]) == (600, 900)
    _, config = read(vault, "auth/jwt/config")
    assert (config["jwks_url"], config["bound_issuer"], config["oidc_discovery_url"]) == (f"{idp.url}/jwks", GITHUB, "")
    _, config = read(vault, "auth/oidc/config")
    assert (config["oidc_discovery_url"], config["oidc_client_id"], config["default_role"]) == (
        idp.url,
        "vault-ui",
        "people",
    )
    assert "oidc_client_secret" not in config
    _, role = read(vault, "auth/oidc/role/people")
    assert sorted(role["allowed_redirect_uris"]) == [
        "http://localhost:8250/oidc/callback",
        "https://vault.example.com/ui/vault/auth/oidc/oidc/callback",
    ]
    assert (role["groups_claim"], role["user_claim"], role["bound_claims"]) == ("groups", "oid", {"tid": "tenant"})
    _, group = read(vault, "identity/group/name/vault-readers")
    _, mounts = read(vault, "sys/auth")
    assert group["type"] == "external" and group["policies"] == ["team-read"]
    assert group["alias"]["name"] == TENANT_GROUP
    assert group["alias"]["mount_accessor"] == mounts["oidc/"]["accessor"]
    _, policy = read(vault, "sys/policies/acl/app-read")
    assert policy["policy"] == APP_POLICY


def test_dry_run_then_a_change_reports_only_the_changed_field(vault: RunningHandler, applied) -> None:
    """--dry-run writes nothing; a new ref is reported as `updated role jwt/deploy: bound_claims` alone."""
    _, spec, tmp = applied
    changed = copy.deepcopy(spec)
    changed["jwt"]["roles"]["deploy"]["ref"] = "refs/heads/release"
    dry = run_auth(vault, tmp, changed, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[0] == "would update role jwt/deploy: bound_claims"
    assert read(vault, "auth/jwt/role/deploy")[1]["bound_claims"]["ref"] == "refs/heads/main"
    try:
        real = run_auth(vault, tmp, changed, "--json")
        assert real.returncode == 0, real.stderr
        result = json.loads(real.stdout)
        assert result["changes"] == ["updated role jwt/deploy: bound_claims"] and result["error"] is None
        assert read(vault, "auth/jwt/role/deploy")[1]["bound_claims"]["ref"] == "refs/heads/release"
    finally:
        back = run_auth(vault, tmp, spec)
    assert back.returncode == 0 and back.stdout.splitlines()[0] == "updated role jwt/deploy: bound_claims"


@pytest.mark.usefixtures("applied")
def test_bound_repository_and_ref_log_in_and_read_only_their_secret(
    vault: RunningHandler, idp: IdentityProvider
) -> None:
    """A token of org/app on main logs in through the handler, reads secret/signin-app/* and gets 403 elsewhere."""
    status, answer = login(vault, idp.github_token())
    assert status == 200, answer
    assert answer["auth"]["policies"] == ["app-read", "default"]
    assert answer["auth"]["lease_duration"] == 600
    headers = {"X-Vault-Token": answer["auth"]["client_token"]}
    status, _, body = vault.request("GET", "/v1/secret/data/signin-app/config", headers=headers)
    assert status == 200 and json.loads(body)["data"]["data"] == {"value": "allowed"}
    status, _, _ = vault.request("GET", "/v1/secret/data/signin-other/config", headers=headers)
    assert status == 403


@pytest.mark.parametrize(
    "overrides",
    [
        {"repository": "org/other", "sub": "repo:org/other:ref:refs/heads/main"},
        {"ref": "refs/heads/feature"},
        {"aud": "https://github.com/someone-else"},
        {"exp": int(time.time()) - 600, "iat": int(time.time()) - 900, "nbf": int(time.time()) - 900},
        {"iss": "https://issuer.example.com"},
        {"key": "another"},
    ],
    ids=["wrong-repository", "wrong-ref", "wrong-audience", "expired", "wrong-issuer", "wrong-key"],
)
@pytest.mark.usefixtures("applied")
def test_tokens_that_do_not_match_are_refused(
    vault: RunningHandler, idp: IdentityProvider, overrides: dict[str, Any]
) -> None:
    """Another repository or ref, audience, issuer or signing key, or an expired token, gets no Vault token."""
    overrides = dict(overrides)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if overrides.pop("key", None) else None
    status, answer = login(vault, idp.github_token(key=key, **overrides))
    assert status in (400, 403), answer
    assert not answer.get("auth")


def _spoil(spec: dict[str, Any], change: str) -> None:
    role = spec["jwt"]["roles"]["deploy"]
    if change == "unknown-field":
        role["bound_audience"] = [AUDIENCE]
    elif change == "no-bound-claims":
        del role["repository"], role["ref"]
    elif change == "wildcard-audience":
        role["bound_audiences"] = ["*"]
    elif change == "no-audience":
        del role["bound_audiences"]
    elif change == "ttl-above-cap":
        role["token_ttl"] = "2h"
    elif change == "bad-redirect":
        spec["oidc"]["roles"]["people"]["allowed_redirect_uris"] = ["http://vault.example.com/callback"]
    elif change == "unknown-section":
        spec["ldap"] = {}


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ("unknown-field", "jwt.roles.deploy.bound_audience: is not a known field"),
        ("no-bound-claims", "jwt.roles.deploy: binds no claim"),
        ("wildcard-audience", "jwt.roles.deploy.bound_audiences: contains a wildcard"),
        ("no-audience", "jwt.roles.deploy.bound_audiences: is missing or empty"),
        ("ttl-above-cap", "jwt.roles.deploy.token_ttl: 2h is above the cap of 1h"),
        ("bad-redirect", "oidc.roles.people.allowed_redirect_uris[0]: 'http://vault.example.com/callback'"),
        ("unknown-section", "ldap: is not a known field"),
        ("missing-secret", "oidc.client_secret_env: the environment variable TEST_OIDC_SECRET is not set"),
    ],
)
def test_invalid_files_are_refused_and_nothing_changes(vault: RunningHandler, applied, change: str, where: str) -> None:
    """Exit 2 with one line naming the path in the file and the fix; Vault is left as it was."""
    _, spec, tmp = applied
    spoiled = copy.deepcopy(spec)
    spoiled["policies"]["must-not-exist"] = APP_POLICY
    spoiled["jwt"]["roles"]["deploy"]["token_policies"] = ["must-not-exist"]
    _spoil(spoiled, change)
    before = read(vault, "auth/jwt/role/deploy")
    result = run_auth(vault, tmp, spoiled, **({"TEST_OIDC_SECRET": ""} if change == "missing-secret" else {}))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and where in lines[0] and "; " in lines[0], result.stderr
    assert read(vault, "sys/policies/acl/must-not-exist")[0] == 404
    assert read(vault, "auth/jwt/role/deploy") == before


def test_azure_section_on_openbao_exits_1_and_touches_nothing(vault: RunningHandler, applied) -> None:
    """OpenBao has no azure auth method: exit 1 with a clear line, and not even the file's policies are written."""
    _, _, tmp = applied
    spec = {
        "policies": {"azure-app": APP_POLICY},
        "azure": {
            "tenant_id": "6f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
            "roles": {
                "web": {
                    "bound_service_principal_ids": ["1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"],
                    "token_policies": ["azure-app"],
                }
            },
        },
    }
    result = run_auth(vault, tmp, spec)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the server has no azure auth method (OpenBao: install the plugin" in result.stderr
    assert read(vault, "sys/policies/acl/azure-app")[0] == 404
    assert "azure/" not in read(vault, "sys/auth")[1]


def test_no_secret_in_any_output(vault: RunningHandler, applied) -> None:
    """The client secret and the token appear in no output: text, JSON, dry run, rotation, refusal, error."""
    _, spec, tmp = applied
    rotated = run_auth(vault, tmp, spec, "--rotate-client-secret")
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.splitlines()[0] == "updated oidc/ config: client secret"
    unknown_policy = copy.deepcopy(spec)
    unknown_policy["oidc"]["groups"][TENANT_GROUP]["policies"] = ["team-read", CLIENT_SECRET]
    outputs = [
        rotated,
        run_auth(vault, tmp, spec, "--json", "--rotate-client-secret", "--dry-run"),
        run_auth(vault, tmp, unknown_policy, "--dry-run"),
        run_auth(vault, tmp, spec, VAULT_TOKEN="not-a-token"),
        run_auth(vault, tmp, spec, "--address", "http://127.0.0.1:9"),
        run_auth(vault, tmp, {**spec, "extra": CLIENT_SECRET}),
    ]
    assert [result.returncode for result in outputs] == [0, 0, 0, 1, 1, 2]
    assert REDACTED in outputs[2].stderr  # the warning names the (odd) policy without its value
    for result in outputs:
        for secret in (CLIENT_SECRET, vault.root_token):
            assert secret not in result.stdout and secret not in result.stderr


def test_missing_token_is_a_usage_error(vault: RunningHandler, applied) -> None:
    """Without VAULT_TOKEN or BAO_TOKEN the command says so and exits 2."""
    _, spec, tmp = applied
    result = run_auth(vault, tmp, spec, VAULT_TOKEN="")
    assert result.returncode == 2
    assert "VAULT_TOKEN is not set" in result.stderr


def test_example_file_is_valid() -> None:
    """config/auth.example.json passes the schema: Entra discovery URL, redirect URIs and GitHub defaults."""
    example = json.loads((REPO / "config" / "auth.example.json").read_text())
    spec = auth.parse(example, {"VAULT_OIDC_CLIENT_SECRET": CLIENT_SECRET}, None)
    assert spec.oidc is not None and spec.jwt is not None and spec.azure is not None
    assert spec.oidc.discovery_url == "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/v2.0"
    assert spec.oidc.roles[0].allowed_redirect_uris == (
        "https://myvault.azurewebsites.net/ui/vault/auth/oidc/oidc/callback",
        "http://localhost:8250/oidc/callback",
    )
    assert CLIENT_SECRET not in repr(spec)
    deploy = spec.jwt.roles[0].body()
    assert deploy["bound_claims"] == {"repository": "my-org/my-app", "environment": "production"}
    assert spec.jwt.config() == {"oidc_discovery_url": GITHUB, "jwks_url": "", "bound_issuer": GITHUB}


@pytest.mark.parametrize(
    ("api_addr", "outcome"),
    [
        ("https://vault.example.net", "https://vault.example.net/ui/vault/auth/oidc/oidc/callback"),
        ("http://vault.example.net", "oidc.host (from VAULT_API_ADDR): 'http://vault.example.net' is not an https URL"),
        (None, "oidc.host (from VAULT_API_ADDR): is missing"),
    ],
)
def test_ui_redirect_host_comes_from_vault_api_addr(api_addr: str | None, outcome: str) -> None:
    """Without `host` in the file the UI's redirect URI uses VAULT_API_ADDR, which must be https."""
    example = json.loads((REPO / "config" / "auth.example.json").read_text())
    del example["oidc"]["host"]
    environment = {"VAULT_OIDC_CLIENT_SECRET": CLIENT_SECRET}
    if outcome.startswith("https://"):
        assert auth.parse(example, environment, api_addr).oidc.roles[0].allowed_redirect_uris[0] == outcome
    else:
        with pytest.raises(auth.ConfigError, match=re.escape(outcome)):
            auth.parse(example, environment, api_addr)


def oidc_sign_in(vault: RunningHandler, idp: IdentityProvider) -> tuple[int, bytes]:
    """Vault's OIDC flow as the CLI runs it: the auth URL, then the callback with the IdP's code."""
    status, _, body = vault.request(
        "POST", "/v1/auth/oidc/oidc/auth_url", {"role": "people", "redirect_uri": "http://localhost:8250/oidc/callback"}
    )
    assert status == 200, body
    auth_url = json.loads(body)["data"]["auth_url"]
    assert auth_url.startswith(f"{idp.url}/authorize?") and "client_id=vault-ui" in auth_url
    query = parse_qs(urlsplit(auth_url).query)
    # The test IdP takes the nonce as the code and puts it into the ID token.
    status, _, body = vault.request(
        "GET", f"/v1/auth/oidc/oidc/callback?state={query['state'][0]}&code={query['nonce'][0]}"
    )
    return status, body


@pytest.mark.usefixtures("applied")
def test_a_person_signs_in_through_oidc_and_gets_the_group_policies(
    vault: RunningHandler, idp: IdentityProvider
) -> None:
    """The OIDC flow with the written client secret maps the Entra group to its policies; odd redirects fail."""
    status, _, body = vault.request(
        "POST", "/v1/auth/oidc/oidc/auth_url", {"role": "people", "redirect_uri": "http://evil.example.com/cb"}
    )
    assert status == 400 or not json.loads(body)["data"]["auth_url"], body
    status, body = oidc_sign_in(vault, idp)
    assert status == 200, body
    answer = json.loads(body)["auth"]
    assert answer["identity_policies"] == ["team-read"] and answer["token_policies"] == ["default"]
    vault.request("POST", "/v1/secret/data/signin-team/notes", {"data": {"v": "team"}}, token_header(vault))
    headers = {"X-Vault-Token": answer["client_token"]}
    status, _, body = vault.request("GET", "/v1/secret/data/signin-team/notes", headers=headers)
    assert status == 200 and json.loads(body)["data"]["data"] == {"v": "team"}
    assert vault.request("GET", "/v1/secret/data/signin-app/config", headers=headers)[0] == 403


def test_rotate_client_secret_writes_the_new_secret(vault: RunningHandler, applied, idp: IdentityProvider) -> None:
    """A new secret in the environment is written only with --rotate-client-secret; sign-in then uses it."""
    _, spec, tmp = applied
    new_secret = "rotated-client-secret-9c4e1d"
    idp.client_secret = new_secret
    try:
        plain = run_auth(vault, tmp, spec, TEST_OIDC_SECRET=new_secret)
        assert plain.stdout.splitlines()[-1] == "no changes"  # Vault never returns the secret to compare
        assert oidc_sign_in(vault, idp)[0] != 200  # still the old secret in Vault
        rotated = run_auth(vault, tmp, spec, "--rotate-client-secret", TEST_OIDC_SECRET=new_secret)
        assert rotated.returncode == 0, rotated.stderr
        assert rotated.stdout.splitlines()[0] == "updated oidc/ config: client secret"
        assert new_secret not in rotated.stdout + rotated.stderr
        assert oidc_sign_in(vault, idp)[0] == 200
    finally:
        idp.client_secret = CLIENT_SECRET
        assert run_auth(vault, tmp, spec, "--rotate-client-secret").returncode == 0
    assert oidc_sign_in(vault, idp)[0] == 200
