"""Re-emit Vault's log lines through Python logging at their own level."""

from __future__ import annotations

import json
import logging

log = logging.getLogger("vaultfn.vault")

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def relay(line: bytes, plain_level: int = logging.INFO) -> None:
    """Log one line of Vault's output.

    `log_format = "json"` lines carry `@level`, `@message`, `@module` and
    key/value fields; the banner and anything else is logged as plain text.
    """
    text = line.decode("utf-8", errors="replace").rstrip()
    if not text:
        return
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if isinstance(record, dict) and "@message" in record:
            level = _LEVELS.get(str(record.get("@level", "")).lower(), logging.INFO)
            fields = {k: v for k, v in record.items() if not k.startswith("@")}
            message = str(record["@message"])
            if fields:
                message += " " + " ".join(f"{k}={v}" for k, v in fields.items())
            module = record.get("@module")
            log.log(level, "%s%s", f"[{module}] " if module else "", message, extra={"vault_fields": fields})
            return
    log.log(plain_level, "%s", text)
