"""`python -m vault_handler.auth apply --file auth.json`: sign-in for people and machines.

Declares Vault's auth methods in one JSON file and applies it idempotently: reads
what Vault has, writes only what differs, and prints each change (a second run
prints no change). Sections (all optional, unknown fields refused):

- `policies`: name -> HCL text (sys/policies/acl).
- `oidc`: people through Entra ID (tenant_id -> https://login.microsoftonline.com/<tenant>/v2.0),
  the client secret read from the environment variable named by `client_secret_env`,
  roles, and `groups`: Entra group object id -> external identity group + policies.
- `jwt`: machines through GitHub Actions OIDC tokens: roles bound to a repository and a
  ref or environment, short TTLs.
- `azure`: Azure workloads (managed identities). OpenBao ships no azure auth method: then
  the command stops with exit 1 before it writes anything.

The client secret is never printed, and Vault never returns it: it is written with the
OIDC config, which Vault replaces whole, i.e. when the config is created, when another
config field changes, or with `--rotate-client-secret`.

Not imported on the handler's start path: `python -m vault_handler` never loads it.

Exit codes: 0 applied (or nothing to do), 1 Vault refused or is unreachable,
2 usage or configuration error (the file is refused before anything is written).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from shared.scrub import SECRET_SETTINGS, Scrubber
from shared.settings import settings_for_command

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
ENTRA_DISCOVERY = "https://login.microsoftonline.com/{tenant}/v2.0"
CLI_REDIRECT = "http://localhost:8250/oidc/callback"  # `vault login -method=oidc`'s local listener
AZURE_RESOURCE = "https://management.azure.com/"
# Token lifetimes: people sign in for a working day at most, machines for one job.
PEOPLE_TTL_CAP = 12 * 3600
MACHINE_TTL_CAP = 3600
# Claims of a GitHub Actions token that tie it to one repository (or one owner's repositories).
_GITHUB_REPOSITORY_CLAIMS = ("repository", "repository_id", "repository_owner", "repository_owner_id")
_TTL = re.compile(r"^(\d+)(s|m|h)?$")
_TTL_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_MOUNT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
NO_AZURE = (
    "the server has no azure auth method (OpenBao: install the plugin; HashiCorp Vault has it built in); "
    "nothing was changed"
)
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_PAST = {"enable": "enabled", "create": "created", "update": "updated", "write": "wrote"}


# The fields of each object of the file (anything else is refused).
_TOP_FIELDS = ("policies", "oidc", "jwt", "azure")
_TOKEN_FIELDS = ("token_policies", "token_ttl", "token_max_ttl")
_OIDC_FIELDS = ("mount", "tenant_id", "discovery_url", "client_id", "client_secret_env", "host", "default_role")
_OIDC_FIELDS += ("roles", "groups")
_OIDC_ROLE_FIELDS = ("bound_claims", "bound_subject", "bound_audiences", "user_claim", "groups_claim")
_OIDC_ROLE_FIELDS += ("oidc_scopes", "allowed_redirect_uris", *_TOKEN_FIELDS)
_GROUP_FIELDS = ("name", "policies")
_JWT_FIELDS = ("mount", "oidc_discovery_url", "jwks_url", "bound_issuer", "roles")
_JWT_ROLE_FIELDS = ("repository", "ref", "environment", "bound_claims", "bound_subject", "bound_audiences")
_JWT_ROLE_FIELDS += ("user_claim", *_TOKEN_FIELDS)
_AZURE_BINDINGS = (
    "bound_service_principal_ids",
    "bound_group_ids",
    "bound_subscription_ids",
    "bound_resource_groups",
    "bound_locations",
    "bound_scale_sets",
)
_AZURE_FIELDS = ("mount", "tenant_id", "resource", "roles")
_AZURE_ROLE_FIELDS = (*_AZURE_BINDINGS, *_TOKEN_FIELDS)


class ConfigError(ValueError):
    """The file is refused: `path` in the file, what is wrong, how to fix it (exit 2)."""

    def __init__(self, path: str, problem: str, fix: str) -> None:
        super().__init__(f"{path}: {problem}; {fix}")


class VaultError(RuntimeError):
    """Vault refused a request or cannot be reached (exit 1)."""


# ---------------------------------------------------------------------------------------------
# The schema: typed, strict (unknown fields refused), every error names its path in the file.
# ---------------------------------------------------------------------------------------------


class _Object:
    """One JSON object of the file with its declared fields: any other field is refused first."""

    def __init__(self, raw: Any, path: str, fields: tuple[str, ...]) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(path, f"is {type(raw).__name__}, not an object", "write it as a JSON object {...}")
        self.raw: dict[str, Any] = raw
        self.path = path
        for key in raw:
            if key not in fields:
                raise ConfigError(self.at(key), "is not a known field", f"remove it (known: {', '.join(fields)})")

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def value(self, key: str) -> Any:
        return self.raw.get(key)

    def text(self, key: str, default: str | None = None, required: bool = False) -> str | None:
        value = self.value(key)
        if value is None:
            if required:
                raise ConfigError(self.at(key), "is missing", "add it")
            return default
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(self.at(key), f"{value!r} is not a non-empty string", "give a string")
        return value

    def texts(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.value(key)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
            raise ConfigError(self.at(key), f"{value!r} is not a list of strings", 'give e.g. ["a", "b"]')
        return tuple(value)

    def ttl(self, key: str, default: int, cap: int) -> int:
        value = self.value(key)
        if value is None:
            return default
        match = _TTL.match(str(value)) if isinstance(value, int | str) and not isinstance(value, bool) else None
        if not match or int(match.group(1)) == 0:
            raise ConfigError(self.at(key), f"{value!r} is not a duration", "use seconds or e.g. 90s, 10m, 1h")
        seconds = int(match.group(1)) * _TTL_UNITS[match.group(2)]
        if seconds > cap:
            raise ConfigError(self.at(key), f"{value} is above the cap of {_human(cap)}", f"use {_human(cap)} or less")
        return seconds

    def claims(self, key: str) -> dict[str, str | list[str]]:
        value = self.value(key)
        if value is None:
            return {}
        ok = isinstance(value, dict) and all(
            isinstance(item, str) or (isinstance(item, list) and item and all(isinstance(v, str) for v in item))
            for item in value.values()
        )
        if not ok:
            raise ConfigError(self.at(key), "is not an object of strings", 'give e.g. {"repository": "org/app"}')
        return {name: list(item) if isinstance(item, list) else item for name, item in value.items()}

    def objects(self, key: str, fields: tuple[str, ...]) -> dict[str, _Object]:
        value = self.value(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(self.at(key), "is not an object", "write it as {name: {...}}")
        return {name: _Object(item, f"{self.at(key)}.{name}", fields) for name, item in value.items()}


def _ttls(role: _Object, default: tuple[int, int], cap: int) -> tuple[int, int]:
    """token_ttl and token_max_ttl, each at most `cap`, the first not above the second."""
    ttl = role.ttl("token_ttl", default[0], cap)
    max_ttl = role.ttl("token_max_ttl", default[1], cap)
    if ttl > max_ttl:
        raise ConfigError(role.at("token_ttl"), "is above token_max_ttl", "make token_ttl <= token_max_ttl")
    return ttl, max_ttl


def _human(seconds: int) -> str:
    return f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def _mount(section: _Object, default: str) -> str:
    mount = (section.text("mount", default) or default).strip("/")
    if not _MOUNT.match(mount):
        raise ConfigError(section.at("mount"), f"{mount!r} is not a mount path", f"use a plain name such as {default}")
    return mount


def _name(name: str, path: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(path, f"{name!r} is not a name Vault accepts here", "use letters, digits, '.', '_' or '-'")
    return name


def _https(url: str, path: str, loopback_http: bool = False) -> str:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url.rstrip("/")
    if loopback_http and parts.scheme == "http" and parts.hostname in _LOOPBACK:
        return url.rstrip("/")
    raise ConfigError(path, f"{url!r} is not an https URL", "use https://... (http only on loopback, for tests)")


def _audiences(role: _Object, required: bool) -> tuple[str, ...]:
    audiences = role.texts("bound_audiences")
    if "*" in audiences or any("*" in audience for audience in audiences):
        raise ConfigError(
            role.at("bound_audiences"), "contains a wildcard", "name the exact audience the token is issued for"
        )
    if required and not audiences:
        raise ConfigError(
            role.at("bound_audiences"),
            "is missing or empty, so a token minted for any other service would be accepted",
            "name the audience your workflow requests, e.g. https://github.com/ORG or vault",
        )
    return audiences


def _role(
    role: _Object, name: str, claims: dict[str, Any], user_claim: str, ttls: tuple[int, int], machine: bool
) -> dict[str, Any]:
    """The fields jwt and oidc roles share, checked: a role must bind a claim or the subject."""
    subject = role.text("bound_subject")
    if not claims and not subject:
        raise ConfigError(
            role.path,
            "binds no claim, so any token of the issuer would log in",
            "set bound_claims (or repository with ref/environment for jwt) or bound_subject",
        )
    ttl, max_ttl = _ttls(role, ttls, MACHINE_TTL_CAP if machine else PEOPLE_TTL_CAP)
    return {
        "name": _name(name, role.path),
        "bound_claims": claims,
        "bound_subject": subject,
        "bound_audiences": _audiences(role, required=machine),  # people's: the client id by default
        "user_claim": role.text("user_claim", user_claim) or user_claim,
        "token_policies": role.texts("token_policies"),
        "token_ttl": ttl,
        "token_max_ttl": max_ttl,
    }


@dataclass(frozen=True)
class JwtRole:
    """A role for machines: a token that carries these claims and audience logs in."""

    name: str
    bound_claims: dict[str, str | list[str]]
    bound_subject: str | None
    bound_audiences: tuple[str, ...]
    user_claim: str
    token_policies: tuple[str, ...]
    token_ttl: int
    token_max_ttl: int

    def body(self) -> dict[str, Any]:
        return {
            "role_type": "jwt",
            "bound_claims": self.bound_claims,
            "bound_claims_type": "string",
            "bound_subject": self.bound_subject or "",
            "bound_audiences": list(self.bound_audiences),
            "user_claim": self.user_claim,
            "token_policies": list(self.token_policies),
            "token_ttl": self.token_ttl,
            "token_max_ttl": self.token_max_ttl,
        }


@dataclass(frozen=True)
class OidcRole(JwtRole):
    """A role for people: the JWT role's bindings plus the browser flow's settings."""

    groups_claim: str
    oidc_scopes: tuple[str, ...]
    allowed_redirect_uris: tuple[str, ...]

    def body(self) -> dict[str, Any]:
        return {
            **super().body(),
            "role_type": "oidc",
            "groups_claim": self.groups_claim,
            "oidc_scopes": list(self.oidc_scopes),
            "allowed_redirect_uris": list(self.allowed_redirect_uris),
        }


@dataclass(frozen=True)
class ExternalGroup:
    object_id: str  # the Entra group's object id, as it appears in the token's groups claim
    name: str
    policies: tuple[str, ...]


@dataclass(frozen=True)
class OidcSection:
    mount: str
    discovery_url: str
    client_id: str
    client_secret_env: str
    client_secret: str = field(repr=False)
    default_role: str
    roles: tuple[OidcRole, ...]
    groups: tuple[ExternalGroup, ...]

    def config(self) -> dict[str, Any]:
        """The config without the secret: what is compared with Vault's."""
        return {
            "oidc_discovery_url": self.discovery_url,
            "oidc_client_id": self.client_id,
            "default_role": self.default_role,
        }


@dataclass(frozen=True)
class JwtSection:
    mount: str
    oidc_discovery_url: str | None
    jwks_url: str | None
    bound_issuer: str
    roles: tuple[JwtRole, ...]

    def config(self) -> dict[str, Any]:
        return {
            "oidc_discovery_url": self.oidc_discovery_url or "",
            "jwks_url": self.jwks_url or "",
            "bound_issuer": self.bound_issuer,
        }


@dataclass(frozen=True)
class AzureRole:
    name: str
    bindings: dict[str, tuple[str, ...]]
    token_policies: tuple[str, ...]
    token_ttl: int
    token_max_ttl: int

    def body(self) -> dict[str, Any]:
        return {
            **{key: list(self.bindings.get(key, ())) for key in _AZURE_BINDINGS},
            "token_policies": list(self.token_policies),
            "token_ttl": self.token_ttl,
            "token_max_ttl": self.token_max_ttl,
        }


@dataclass(frozen=True)
class AzureSection:
    mount: str
    tenant_id: str
    resource: str
    roles: tuple[AzureRole, ...]

    def config(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant_id, "resource": self.resource}


@dataclass(frozen=True)
class AuthFile:
    policies: dict[str, str]
    oidc: OidcSection | None
    jwt: JwtSection | None
    azure: AzureSection | None

    def referenced_policies(self) -> list[tuple[str, str]]:
        """(policy, where in the file) for every policy a role or group grants."""
        found = []
        for key, section in (("oidc", self.oidc), ("jwt", self.jwt), ("azure", self.azure)):
            for role in section.roles if section else ():
                found += [(name, f"{key}.roles.{role.name}.token_policies") for name in role.token_policies]
        for group in self.oidc.groups if self.oidc else ():
            found += [(name, f"oidc.groups.{group.object_id}.policies") for name in group.policies]
        return found


def _parse_oidc(section: _Object, environment: Mapping[str, str], api_addr: str | None) -> OidcSection:
    mount = _mount(section, "oidc")
    tenant = section.text("tenant_id")
    discovery = section.text("discovery_url")
    if bool(tenant) == bool(discovery):
        raise ConfigError(
            section.at("tenant_id"), "give exactly one of tenant_id and discovery_url", "set tenant_id for Entra ID"
        )
    if tenant and not _GUID.match(tenant):
        raise ConfigError(section.at("tenant_id"), f"{tenant!r} is not a tenant id", "give the directory's GUID")
    if discovery:
        discovery = _https(discovery, section.at("discovery_url"), loopback_http=True)
    client_id = section.text("client_id", required=True) or ""
    secret_env = section.text("client_secret_env", required=True) or ""
    secret = environment.get(secret_env) or ""
    if not secret:
        raise ConfigError(
            section.at("client_secret_env"),
            f"the environment variable {secret_env} is not set or empty",
            f"export {secret_env} with the app registration's client secret",
        )
    host = section.text("host")
    where = section.at("host")
    if host is None:
        host, where = api_addr, f"{where} (from VAULT_API_ADDR)"
    if host is None:
        raise ConfigError(where, "is missing: the UI's redirect URI needs Vault's public address", "set host")
    host = _https(host, where)
    default_redirects = (f"{host}/ui/vault/auth/{mount}/oidc/callback", CLI_REDIRECT)
    roles = []
    for name, role in section.objects("roles", _OIDC_ROLE_FIELDS).items():
        common = _role(role, name, role.claims("bound_claims"), "oid", (3600, 8 * 3600), machine=False)
        redirects = role.texts("allowed_redirect_uris", default_redirects)
        for index, uri in enumerate(redirects):
            if uri != CLI_REDIRECT:
                _https(uri, role.at(f"allowed_redirect_uris[{index}]"))
        roles.append(
            OidcRole(
                **common,
                groups_claim=role.text("groups_claim", "groups") or "groups",
                oidc_scopes=role.texts("oidc_scopes", ("profile", "email")),
                allowed_redirect_uris=redirects,
            )
        )
    default_role = section.text("default_role", required=True) or ""
    if default_role not in {role.name for role in roles}:
        raise ConfigError(section.at("default_role"), f"{default_role!r} is not among roles", "declare it in roles")
    groups = []
    for object_id, group in section.objects("groups", _GROUP_FIELDS).items():
        if not _GUID.match(object_id):
            raise ConfigError(
                group.path, "is not a group object id", "key groups by the Entra group's object id (GUID)"
            )
        groups.append(
            ExternalGroup(
                object_id, _name(group.text("name", required=True) or "", group.at("name")), group.texts("policies")
            )
        )
    return OidcSection(
        mount=mount,
        discovery_url=discovery or ENTRA_DISCOVERY.format(tenant=tenant),
        client_id=client_id,
        client_secret_env=secret_env,
        client_secret=secret,
        default_role=default_role,
        roles=tuple(roles),
        groups=tuple(groups),
    )


def _parse_jwt(section: _Object) -> JwtSection:
    mount = _mount(section, "jwt")
    discovery = section.text("oidc_discovery_url")
    jwks = section.text("jwks_url")
    issuer = section.text("bound_issuer")
    if discovery and jwks:
        raise ConfigError(section.at("jwks_url"), "is given with oidc_discovery_url", "give only one of them")
    if jwks and not issuer:
        raise ConfigError(section.at("bound_issuer"), "is missing with jwks_url", "set the issuer the tokens carry")
    if not jwks:
        discovery = _https(discovery or GITHUB_ISSUER, section.at("oidc_discovery_url"), loopback_http=True)
    else:
        jwks = _https(jwks, section.at("jwks_url"), loopback_http=True)
    issuer = issuer or discovery or GITHUB_ISSUER
    github = issuer == GITHUB_ISSUER
    roles = []
    for name, role in section.objects("roles", _JWT_ROLE_FIELDS).items():
        claims = role.claims("bound_claims")
        for key in ("repository", "ref", "environment"):
            value = role.text(key)
            if value is not None:
                if key in claims and claims[key] != value:
                    raise ConfigError(role.at(key), f"conflicts with bound_claims.{key}", "give it once")
                claims[key] = value
        common = _role(role, name, claims, "repository", (600, 900), machine=True)
        if github and not common["bound_subject"] and not any(key in claims for key in _GITHUB_REPOSITORY_CLAIMS):
            raise ConfigError(
                role.path,
                "binds no repository, so a workflow of any repository on GitHub could log in",
                "set repository",
            )
        roles.append(JwtRole(**common))
    return JwtSection(mount, discovery if not jwks else None, jwks, issuer, tuple(roles))


def _parse_azure(section: _Object) -> AzureSection:
    mount = _mount(section, "azure")
    tenant = section.text("tenant_id", required=True) or ""
    if not _GUID.match(tenant):
        raise ConfigError(section.at("tenant_id"), f"{tenant!r} is not a tenant id", "give the directory's GUID")
    resource = _https(section.text("resource", AZURE_RESOURCE) or AZURE_RESOURCE, section.at("resource")) + "/"
    roles = []
    for name, role in section.objects("roles", _AZURE_ROLE_FIELDS).items():
        bindings = {key: role.texts(key) for key in _AZURE_BINDINGS}
        bindings = {key: value for key, value in bindings.items() if value}
        if not bindings:
            raise ConfigError(
                role.path,
                "binds nothing, so any identity of the tenant would log in",
                "set bound_service_principal_ids (or bound_resource_groups with bound_subscription_ids)",
            )
        ttl, max_ttl = _ttls(role, (900, 3600), MACHINE_TTL_CAP)
        roles.append(AzureRole(_name(name, role.path), bindings, role.texts("token_policies"), ttl, max_ttl))
    return AzureSection(mount, tenant, resource, tuple(roles))


def parse(raw: Any, environment: Mapping[str, str], api_addr: str | None) -> AuthFile:
    """The typed file; `ConfigError` on the first problem."""
    top = _Object(raw, "", _TOP_FIELDS)
    policies = {}
    raw_policies = top.value("policies")
    raw_policies = {} if raw_policies is None else raw_policies
    if not isinstance(raw_policies, dict):
        raise ConfigError("policies", "is not an object", "write it as {name: HCL text}")
    for name, text in raw_policies.items():
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"policies.{name}", "is not HCL text", "give the policy as a string")
        if name in ("root", "default"):
            raise ConfigError(f"policies.{name}", "is a built-in policy", "choose another name")
        policies[_name(name, f"policies.{name}")] = text
    raw_oidc, raw_jwt, raw_azure = (top.value(key) for key in ("oidc", "jwt", "azure"))
    oidc = None if raw_oidc is None else _parse_oidc(_Object(raw_oidc, "oidc", _OIDC_FIELDS), environment, api_addr)
    jwt = None if raw_jwt is None else _parse_jwt(_Object(raw_jwt, "jwt", _JWT_FIELDS))
    azure = None if raw_azure is None else _parse_azure(_Object(raw_azure, "azure", _AZURE_FIELDS))
    mounts = [section.mount for section in (oidc, jwt, azure) if section]
    if len(set(mounts)) != len(mounts):
        raise ConfigError("mount", f"two sections share a mount path ({', '.join(mounts)})", "give each its own mount")
    return AuthFile(policies, oidc, jwt, azure)


# ---------------------------------------------------------------------------------------------
# Vault: read, compare, write what differs.
# ---------------------------------------------------------------------------------------------


class Vault:
    """Vault's HTTP API with a token; errors become `VaultError` with Vault's own message."""

    def __init__(self, address: str, token: str, timeout: float = 30.0) -> None:
        self._http = httpx.Client(
            base_url=address.rstrip("/") + "/v1/", headers={"X-Vault-Token": token}, timeout=timeout
        )

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        try:
            return self._http.request(method, path, json=body)
        except httpx.HTTPError as error:
            raise VaultError(f"cannot reach Vault at {self._http.base_url}: {error}") from None

    def read(self, path: str) -> dict[str, Any] | None:
        """The `data` of a read, or None when there is nothing at `path`."""
        response = self._send("GET", path)
        if response.status_code == 404:
            return None
        self._check(response, "read", path)
        return response.json().get("data") or {}

    def keys(self, path: str) -> list[str]:
        response = self._send("GET", f"{path}?list=true")
        if response.status_code == 404:
            return []
        self._check(response, "list", path)
        return list(response.json().get("data", {}).get("keys") or [])

    def write(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._send("POST", path, body)
        self._check(response, "write", path)
        return (response.json().get("data") or {}) if response.content else {}

    @staticmethod
    def _check(response: httpx.Response, verb: str, path: str) -> None:
        if response.is_success:
            return
        try:
            errors = "; ".join(str(error).strip() for error in response.json().get("errors") or [])
        except ValueError:
            errors = response.text[:200]
        hint = " (the token lacks a capability on this path)" if response.status_code == 403 else ""
        raise VaultError(f"{verb} {path}: HTTP {response.status_code}: {errors or 'no message'}{hint}")


def _normal(value: Any) -> Any:
    """Vault answers null for an empty list or map, and lists where order does not matter."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return sorted(_normal(item) for item in value) or None
    if isinstance(value, dict):
        return {key: _normal(item) for key, item in value.items()} or None
    return value if value != "" else None


def differing(desired: Mapping[str, Any], current: Mapping[str, Any] | None) -> list[str]:
    """The fields of `desired` whose value Vault does not have."""
    current = current or {}
    return [key for key, value in desired.items() if _normal(value) != _normal(current.get(key))]


@dataclass
class Report:
    dry_run: bool
    changes: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def change(self, verb: str, what: str) -> None:
        self.changes.append(f"would {verb} {what}" if self.dry_run else f"{_PAST[verb]} {what}")

    def same(self, what: str) -> None:
        self.unchanged.append(what)

    def lists(self) -> tuple[list[str], list[str], list[str]]:
        return self.changes, self.unchanged, self.warnings


class Applier:
    """Brings Vault to the file, in an order where nothing refers to what does not exist yet."""

    def __init__(self, vault: Vault, spec: AuthFile, dry_run: bool, rotate_secret: bool) -> None:
        self.vault = vault
        self.spec = spec
        self.report = Report(dry_run)
        self.dry_run = dry_run
        self.rotate_secret = rotate_secret
        self.mounts: dict[str, dict[str, Any]] = {}

    def run(self) -> Report:
        self.preflight()
        if self.spec.azure:  # first: if the server has no azure method after all, nothing else was touched
            self.mount(self.spec.azure.mount, "azure")
        for name, text in self.spec.policies.items():
            self.policy(name, text)
        if self.spec.oidc:
            self.mount(self.spec.oidc.mount, "oidc")
            self.oidc(self.spec.oidc)
        if self.spec.jwt:
            self.mount(self.spec.jwt.mount, "jwt")
            self.config(self.spec.jwt.mount, self.spec.jwt.config())
            self.roles(self.spec.jwt.mount, [(role.name, role.body()) for role in self.spec.jwt.roles])
        if self.spec.azure:
            self.config(self.spec.azure.mount, self.spec.azure.config())
            self.roles(self.spec.azure.mount, [(role.name, role.body()) for role in self.spec.azure.roles])
        return self.report

    def preflight(self) -> None:
        """Read-only checks that stop the run before any write."""
        self.mounts = {path.rstrip("/"): info for path, info in (self.vault.read("sys/auth") or {}).items()}
        for section, kind in ((self.spec.oidc, "oidc"), (self.spec.jwt, "jwt"), (self.spec.azure, "azure")):
            existing = self.mounts.get(section.mount) if section else None
            if existing and existing.get("type") != kind:
                raise VaultError(
                    f"auth/{section.mount}/ is a {existing.get('type')} method, not {kind}: "
                    f"give the {kind} section another mount, or disable auth/{section.mount}/ first"
                )
        azure = self.spec.azure
        if azure and azure.mount not in self.mounts and self._azure_missing():
            raise VaultError(NO_AZURE)
        try:
            known = {"default", *self.spec.policies, *self.vault.keys("sys/policies/acl")}
        except VaultError as error:
            self.report.warnings.append(f"cannot check that the roles' policies exist: {error}")
            return
        for name, where in self.spec.referenced_policies():
            if name not in known:
                self.report.warnings.append(f"policy {name} ({where}) exists neither in Vault nor in the file")

    def _azure_missing(self) -> bool:
        """True when the plugin catalog has no azure auth method; unknown (a token without sudo) is False."""
        try:
            return self.vault.read("sys/plugins/catalog/auth/azure") is None
        except VaultError:
            return False

    def mount(self, path: str, kind: str) -> None:
        if path in self.mounts:
            self.report.same(f"auth method {path}/ ({kind})")
            return
        self.report.change("enable", f"auth method {path}/ ({kind})")
        if not self.dry_run:
            try:
                self.vault.write(f"sys/auth/{path}", {"type": kind})
            except VaultError as error:
                if kind == "azure" and "plugin not found" in str(error):
                    raise VaultError(NO_AZURE) from None
                raise
            self.mounts[path] = (self.vault.read("sys/auth") or {}).get(f"{path}/", {})

    def policy(self, name: str, text: str) -> None:
        current = self.vault.read(f"sys/policies/acl/{quote(name)}")
        if current is not None and (current.get("policy") or "").strip() == text.strip():
            self.report.same(f"policy {name}")
            return
        self.report.change("create" if current is None else "update", f"policy {name}")
        if not self.dry_run:
            self.vault.write(f"sys/policies/acl/{quote(name)}", {"policy": text})

    def config(self, mount: str, desired: dict[str, Any], secret: dict[str, Any] | None = None) -> None:
        current = self.vault.read(f"auth/{mount}/config") if mount in self.mounts else None
        fields = differing(desired, current)
        rotate = bool(secret) and self.rotate_secret
        if not fields and not rotate:
            self.report.same(f"{mount}/ config")
            return
        if current is None or not any(current.get(key) for key in desired):
            self.report.change("write", f"{mount}/ config")
        else:
            self.report.change(
                "update", f"{mount}/ config: {', '.join(fields + (['client secret'] if rotate else []))}"
            )
        if not self.dry_run:
            # Vault replaces the config whole: the client secret goes with every write.
            self.vault.write(f"auth/{mount}/config", {**desired, **(secret or {})})

    def roles(self, mount: str, roles: list[tuple[str, dict[str, Any]]]) -> None:
        for name, body in roles:
            current = self.vault.read(f"auth/{mount}/role/{quote(name)}") if mount in self.mounts else None
            fields = differing(body, current)
            if current is not None and not fields:
                self.report.same(f"role {mount}/{name}")
                continue
            if current is None:
                self.report.change("create", f"role {mount}/{name}")
            else:
                self.report.change("update", f"role {mount}/{name}: {', '.join(fields)}")
            if not self.dry_run:
                self.vault.write(f"auth/{mount}/role/{quote(name)}", body)
        declared = {name for name, _ in roles}
        for name in self.vault.keys(f"auth/{mount}/role") if mount in self.mounts else ():
            if name not in declared:
                self.report.warnings.append(f"role {mount}/{name} is not in the file (left alone)")

    def oidc(self, spec: OidcSection) -> None:
        # Roles first: the config names the default role.
        self.roles(spec.mount, [(role.name, role.body()) for role in spec.roles])
        self.config(spec.mount, spec.config(), {"oidc_client_secret": spec.client_secret})
        accessor = self.mounts.get(spec.mount, {}).get("accessor")
        for group in spec.groups:
            self.group(group, spec.mount, accessor)

    def group(self, group: ExternalGroup, mount: str, accessor: str | None) -> None:
        what = f"external group {group.name}"
        current = self.vault.read(f"identity/group/name/{quote(group.name)}")
        if current is not None and current.get("type") != "external":
            raise VaultError(
                f"identity group {group.name} exists as an {current.get('type')} group: rename oidc.groups."
                f"{group.object_id}.name or delete that group"
            )
        body = {"name": group.name, "type": "external", "policies": list(group.policies)}
        if current is None:
            self.report.change("create", f"{what} (policies: {', '.join(group.policies) or 'none'})")
            group_id = None if self.dry_run else self.vault.write("identity/group", body).get("id")
        else:
            group_id = current.get("id")
            if differing({"policies": group.policies}, current):
                self.report.change("update", f"{what}: policies")
                if not self.dry_run:
                    self.vault.write(f"identity/group/name/{quote(group.name)}", body)
            else:
                self.report.same(what)
        alias = (current or {}).get("alias") or {}
        alias_what = f"group alias {group.object_id} on {mount}/ -> {group.name}"
        if alias.get("name") == group.object_id and alias.get("mount_accessor") == accessor and accessor:
            self.report.same(alias_what)
            return
        self.report.change("update" if alias.get("id") else "create", alias_what)
        if self.dry_run:
            return
        alias_body = {"name": group.object_id, "mount_accessor": accessor, "canonical_id": group_id}
        path = f"identity/group-alias/id/{alias['id']}" if alias.get("id") else "identity/group-alias"
        self.vault.write(path, alias_body)


# ---------------------------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m vault_handler.auth",
        description="Declare Vault's sign-in (OIDC for people, GitHub Actions JWT and Azure for machines) in a "
        "JSON file and apply it idempotently. Exit 0 applied, 1 Vault error, 2 usage or configuration error.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    apply = commands.add_parser("apply", help="bring Vault to the file: write only what differs")
    apply.add_argument("--file", required=True, help="the auth file (see config/auth.example.json)")
    apply.add_argument("--address", help="Vault's address (default: VAULT_ADDR, else this handler's URL)")
    apply.add_argument("--dry-run", action="store_true", help="print what would change and write nothing")
    apply.add_argument(
        "--rotate-client-secret",
        action="store_true",
        help="write the OIDC client secret even when nothing else changed (Vault never returns it to compare)",
    )
    apply.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser.parse_args(argv)


def _load(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(path, f"cannot be read ({error.strerror})", "give the path of the auth file") from None
    except json.JSONDecodeError as error:
        raise ConfigError(path, f"is not JSON (line {error.lineno}: {error.msg})", "fix the syntax") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_for_command("auth")
    if settings is None:
        return 2
    token = settings.backup.operator_token  # VAULT_TOKEN, else BAO_TOKEN
    # The token and the client secret never reach the output, Vault's own error messages included.
    secrets = [settings.environment.get(name, "") for name in SECRET_SETTINGS]
    redact = Scrubber(secrets).text
    try:
        spec = parse(_load(args.file), settings.environment, settings.vault_api_addr)
    except ConfigError as error:
        print(f"auth: refused {args.file}: {redact(str(error))}", file=sys.stderr)
        return 2
    if spec.oidc:
        redact = Scrubber([*secrets, spec.oidc.client_secret]).text
    if not token:
        print("auth: VAULT_TOKEN is not set; export VAULT_TOKEN (or BAO_TOKEN) with an admin token", file=sys.stderr)
        return 2
    address = args.address or settings.environment.get("VAULT_ADDR") or settings.handler_url
    vault = Vault(address, token)
    applier = Applier(vault, spec, args.dry_run, args.rotate_client_secret)
    error = None
    try:
        applier.run()
    except VaultError as failure:
        error = redact(str(failure))
    finally:
        vault.close()
    report = applier.report
    changes, unchanged, warnings = ([redact(line) for line in lines] for lines in report.lists())
    if args.json:
        result = {"dry_run": args.dry_run, "changed": bool(changes), "changes": changes}
        result.update(unchanged=unchanged, warnings=warnings, error=error)
        print(json.dumps(result, indent=2))
    else:
        for line in [*changes, *(f"unchanged: {line}" for line in unchanged)]:
            print(line)
        for line in warnings:
            print(f"warning: {line}", file=sys.stderr)
        if error is None:
            count = len(changes)
            summary = f"{count} change{'s' if count != 1 else ''}" if count else "no changes"
            print(f"{summary}{' (dry run: nothing written)' if args.dry_run and count else ''}")
    if error is not None:
        print(f"auth: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
