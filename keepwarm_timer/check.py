"""One health check of Vault: GET its health URL and classify the answer.

The seed's availability checks asked Vault to answer 200 for any standby, 401
when sealed and 502 when uninitialized; Vault's defaults are 200 active, 429
standby, 472 DR secondary, 473 performance standby, 501 uninitialized and 503
sealed. The JSON body decides where it can, so both sets of codes classify
alike, and an answer without Vault's body (an HTML error page from a front end,
say) is `unhealthy` whatever its status.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from shared.settings import Settings

SEED_HEALTH_PATH = (
    "/v1/sys/health?standbycode=200&sealedcode=401&uninitcode=502&drsecondarycode=200&performancestandbycode=200"
)
HEALTHY_STATES = frozenset({"active", "standby", "performance_standby"})
COLD_START_HEADER = "X-Vaultfn-Cold-Start"
_UNHEALTHY_CODES = frozenset({474, 530})  # HA-unhealthy standby, node removed from the cluster


@dataclass
class HealthResult:
    state: str
    status: int | None
    latency_ms: float
    url: str
    checked_at: str
    version: str | None = None
    cluster_name: str | None = None
    clock_skew_ms: float | None = None
    cold_start: bool = False
    cold_start_ms: float | None = None
    attempts: int = 1
    message: str = ""

    @property
    def healthy(self) -> bool:
        return self.state in HEALTHY_STATES

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "healthy": self.healthy, **asdict(self)}

    def summary(self) -> str:
        parts = [f"{self.state} ({'healthy' if self.healthy else 'NOT healthy'})"]
        parts.append(f"HTTP {self.status}" if self.status is not None else "no answer")
        parts.append(f"{self.latency_ms:.0f} ms")
        if self.version:
            parts.append(f"version {self.version}")
        if self.cluster_name:
            parts.append(f"cluster {self.cluster_name}")
        if self.clock_skew_ms is not None and abs(self.clock_skew_ms) >= 2000:
            parts.append(f"clock skew {self.clock_skew_ms / 1000:+.0f} s")
        if self.cold_start:
            parts.append(f"cold start, Vault took {self.cold_start_ms:.0f} ms")
        if self.attempts > 1:
            parts.append(f"{self.attempts} attempts")
        summary = ", ".join(parts)
        return f"{summary}: {self.message}" if self.message else summary


def health_url(settings: Settings) -> str:
    """VAULT_HEALTH_URL, else the public address (VAULT_API_ADDR or the app's host name), else this handler."""
    if settings.vault_health_url:
        return settings.vault_health_url
    base = settings.vault_api_addr or settings.handler_url
    return base.rstrip("/") + SEED_HEALTH_PATH


def classify(status: int, body: bytes) -> tuple[str, dict[str, Any], str]:
    """(state, Vault's health fields, message) for one answer."""
    try:
        fields = json.loads(body)
    except ValueError:
        fields = None
    if not isinstance(fields, dict) or not {"initialized", "sealed"} <= fields.keys():
        return "unhealthy", {}, f"HTTP {status} without Vault's health body"
    if status in _UNHEALTHY_CODES:
        return "unhealthy", fields, f"Vault reports HTTP {status}"
    if not fields["initialized"]:
        return "uninitialized", fields, "Vault is not initialized"
    if fields["sealed"]:
        return "sealed", fields, "Vault is sealed"
    if str(fields.get("replication_dr_mode", "")).startswith("secondary") or status == 472:
        return "dr_secondary", fields, ""
    if fields.get("performance_standby") or status == 473:
        return "performance_standby", fields, ""
    if fields.get("standby") or status == 429:
        return "standby", fields, ""
    return "active", fields, ""


async def check(url: str, timeout: float) -> HealthResult:
    """GET `url` once, and once more on a connection error (a cold instance may refuse at first)."""
    checked_at = datetime.now(UTC).isoformat(timespec="seconds")
    client = httpx.AsyncClient(
        timeout=timeout, follow_redirects=False, trust_env=False, headers={"User-Agent": "vaultfn-keepwarm"}
    )
    started = time.monotonic()  # after the client's setup, which is not the server's latency
    async with client:
        for attempt in (1, 2):
            sent = time.time()
            try:
                response = await client.get(url)
            except httpx.TimeoutException:
                return _failed("timeout", url, checked_at, started, attempt, f"no answer within {timeout:g}s")
            except httpx.TransportError as error:
                if attempt == 1:
                    continue
                reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                return _failed("unreachable", url, checked_at, started, attempt, reason)
            break
    latency_ms = (time.monotonic() - started) * 1000
    state, fields, message = classify(response.status_code, response.content)
    cold = response.headers.get(COLD_START_HEADER)
    server_time = fields.get("server_time_utc")
    return HealthResult(
        state=state,
        status=response.status_code,
        latency_ms=round(latency_ms, 1),
        url=url,
        checked_at=checked_at,
        version=fields.get("version"),
        cluster_name=fields.get("cluster_name"),
        # Vault reports whole seconds: compare with the middle of the exchange.
        clock_skew_ms=round((server_time - (sent + time.time()) / 2) * 1000) if isinstance(server_time, int) else None,
        cold_start=cold is not None,
        cold_start_ms=float(cold) if cold and cold.isdigit() else None,
        attempts=attempt,
        message=message,
    )


def _failed(state: str, url: str, checked_at: str, started: float, attempts: int, message: str) -> HealthResult:
    latency_ms = round((time.monotonic() - started) * 1000, 1)
    return HealthResult(state, None, latency_ms, url, checked_at, attempts=attempts, message=message)
