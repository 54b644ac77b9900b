"""The one scrubber between the code and the telemetry exporter.

Removes storage account keys, SAS signatures, connection strings, Vault tokens,
unseal/recovery keys and the init token from text, wherever they appear: the
patterns catch their shapes, and the exact secret values configured in the
environment are removed whatever their shape.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

REDACTED = "[REDACTED]"

_PATTERNS = [
    # Connection strings and their parts.
    (re.compile(r"(?i)\b(AccountKey|SharedAccessSignature|SharedAccessKey)=[^;\s\"']+"), rf"\1={REDACTED}"),
    # SAS signatures in URLs.
    (re.compile(r"(?i)([?&]sig=)[^&\s\"']+"), rf"\1{REDACTED}"),
    # Vault/OpenBao tokens: hvs./hvb./hvr. (Vault), s./b./r. (OpenBao and older Vault).
    (re.compile(r"\b(?:hv[sbr]|[sbr])\.[A-Za-z0-9_-]{20,}"), REDACTED),
    # Header-style token fields.
    (
        re.compile(r"(?i)(x-vault-token|x-vaultfn-init-token|authorization)([\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
        rf"\1\2{REDACTED}",
    ),
    # JSON fields that hold unseal/recovery keys or tokens.
    (
        re.compile(
            r'(?i)("(?:keys|keys_base64|recovery_keys|recovery_keys_base64|root_token|client_token)"\s*:\s*)'
            r'(\[[^\]]*\]|"[^"]*")'
        ),
        rf'\1"{REDACTED}"',
    ),
]

# Settings whose values are secrets: their exact values are scrubbed too. The app's own, then the
# platform's and the Azure SDK's that an app of this kind may have: the Functions host's storage,
# a service principal (e.g. for Vault's Key Vault seal), the managed identity endpoint's header.
SECRET_SETTINGS = (
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "BACKUP_CONNECTION_STRING",
    "VAULTFN_INIT_TOKEN",
    "VAULTFN_BACKUP_TOKEN",
    "VAULT_STATIC_SEAL_KEY",  # OpenBao's static seal key (Vault reads it: env://)
    "VAULT_TOKEN",
    "BAO_TOKEN",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "AzureWebJobsStorage",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "IDENTITY_HEADER",
    "MSI_SECRET",
)
_MIN_SECRET_LENGTH = 8


class Scrubber:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = sorted({s for s in secrets if s and len(s) >= _MIN_SECRET_LENGTH}, key=len, reverse=True)
        self._exact = re.compile("|".join(re.escape(v) for v in values)) if values else None

    @classmethod
    def from_environment(cls, environment: Mapping[str, str]) -> Scrubber:
        return cls(environment.get(name, "") for name in SECRET_SETTINGS)

    def text(self, value: str) -> str:
        if self._exact is not None:
            value = self._exact.sub(REDACTED, value)
        for pattern, replacement in _PATTERNS:
            value = pattern.sub(replacement, value)
        return value

    def value(self, value: object) -> object:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, (list, tuple)):
            return type(value)(self.value(item) for item in value)
        return value

    def attributes(self, attributes: Mapping[str, object] | None) -> dict[str, object]:
        return {key: self.value(value) for key, value in (attributes or {}).items()}


class ScrubbingFormatter(logging.Formatter):
    """Console log lines, tracebacks included, pass the scrubber too: the host ships them to Application Insights."""

    def __init__(self, scrubber: Scrubber, fmt: str, datefmt: str) -> None:
        super().__init__(fmt, datefmt)
        self.scrubber = scrubber

    def format(self, record: logging.LogRecord) -> str:
        return self.scrubber.text(super().format(record))
