"""Telemetry to Application Insights through the Azure Monitor OpenTelemetry Distro.

Configured only when APPLICATIONINSIGHTS_CONNECTION_STRING is set; otherwise
every call here is a cheap no-op and nothing is imported. The distro's import
and set-up run in a background thread after the handler listens, never on its
start path. Proxied requests are only appended to a bounded buffer on the hot
path; a background thread turns them into request telemetry with their real
start and end times. Every log record and span attribute passes the scrubber
(shared/scrub.py) before the exporter sees it.

(The seed used OpenCensus, which Microsoft retired on 2024-09-30 and which
cannot send availability results; the distro replaces it.)
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from shared.scrub import Scrubber

log = logging.getLogger("vaultfn.telemetry")

# Every name the dashboard's KQL may use comes from here (tests check the workbook against it).
AVAILABILITY_TEST = "vault-health"
METRIC_VAULT_START_MS = "vaultfn_vault_start_ms"
METRIC_VAULT_RESTARTS = "vaultfn_vault_restarts"
METRIC_HEALTHY = "vaultfn_healthy"
METRIC_BACKUP_DURATION_S = "vaultfn_backup_duration_s"
METRIC_BACKUP_BYTES = "vaultfn_backup_bytes"
METRIC_BACKUP_COPIED = "vaultfn_backup_copied"
METRIC_BACKUP_REUSED = "vaultfn_backup_reused"
METRIC_BACKUP_CONVERGED = "vaultfn_backup_converged"
METRIC_BACKUP_AGE_H = "vaultfn_backup_age_hours"
METRIC_VERIFY_FAILURES = "vaultfn_backup_verify_failures"
METRICS = (
    METRIC_VAULT_START_MS,
    METRIC_VAULT_RESTARTS,
    METRIC_HEALTHY,
    METRIC_BACKUP_DURATION_S,
    METRIC_BACKUP_BYTES,
    METRIC_BACKUP_COPIED,
    METRIC_BACKUP_REUSED,
    METRIC_BACKUP_CONVERGED,
    METRIC_BACKUP_AGE_H,
    METRIC_VERIFY_FAILURES,
)
ROUTE_LIMIT = 200  # distinct request names: beyond this, new routes report as "/v1/(other)"
REQUEST_BUFFER = 20_000
FLUSH_EVERY = 2.0
CONTROL_PLANE_SETTING = "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED"
SPANS_PER_SECOND = 50  # request telemetry items sent per second at most (the rest sampled, with their count)

_SYS_ENDPOINTS = frozenset(
    [
        "health",
        "seal-status",
        "init",
        "leader",
        "mounts",
        "auth",
        "policies",
        "policy",
        "leases",
        "storage",
        "metrics",
        "unseal",
        "seal",
        "capabilities-self",
        "capabilities",
        "wrapping",
        "tools",
        "internal",
        "audit",
        "plugins",
        "raw",
        "rotate",
        "key-status",
        "host-info",
        "monitor",
        "pprof",
        "quotas",
        "version-history",
        "namespaces",
        "config",
        "generate-root",
        "rekey",
        "step-down",
        "remount",
    ]
)


def route_of(path: str) -> str:
    """A request name with bounded cardinality: the mount, never ids, tokens or query strings."""
    parts = path.split("?", 1)[0].split("/")
    if len(parts) == 2 and parts[1] not in ("v1", "ui"):
        return path  # a host invocation, POST /<functionName> (unknown names are capped by ROUTE_LIMIT)
    if len(parts) < 2 or parts[1] != "v1":
        return "/ui/*" if len(parts) > 1 and parts[1] == "ui" else "/"
    if len(parts) < 3 or not parts[2]:
        return "/v1"
    first = parts[2]
    if first == "sys":
        second = parts[3] if len(parts) > 3 else ""
        return f"/v1/sys/{second}" if second in _SYS_ENDPOINTS else "/v1/sys/*"
    if first in ("auth", "identity") and len(parts) > 3:
        return f"/v1/{first}/{parts[3]}/*"
    return f"/v1/{first}/*"


def _timespan(milliseconds: float) -> str:
    seconds = milliseconds / 1000
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{int(hours):02d}:{int(minutes):02d}:{seconds:010.7f}"


class Telemetry:
    """The no-op telemetry; `AzureTelemetry` sends for real."""

    enabled = False

    def request(self, method: str, path: str, status: int, start_ns: int, duration_ns: int) -> None:
        pass

    def availability(self, success: bool, duration_ms: float, message: str, properties: Mapping[str, Any]) -> None:
        pass

    def metric(self, name: str, value: float, attributes: Mapping[str, Any] | None = None) -> None:
        pass

    def flush(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class AzureTelemetry(Telemetry):
    enabled = True

    def __init__(self, environment: Mapping[str, str]) -> None:
        self.environment = environment
        self.scrubber = Scrubber.from_environment(environment)
        self._requests: collections.deque[tuple[str, str, int, int, int]] = collections.deque(maxlen=REQUEST_BUFFER)
        self._routes: set[str] = set()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._gauges: dict[str, Any] = {}
        self._pending: list[tuple[str, float, dict[str, Any]]] = []
        threading.Thread(target=self._start, name="telemetry", daemon=True).start()

    # -- set-up, off the start path ------------------------------------------

    def _start(self) -> None:
        try:
            self._configure()
        except Exception:
            log.exception("telemetry could not be configured; continuing without it")
            return
        with self._lock:
            self._ready.set()
            pending, self._pending = self._pending, []
        for name, value, attributes in pending:  # recorded while the distro was loading
            self.metric(name, value, attributes)
        while not self._stop.wait(FLUSH_EVERY):
            self._export_requests()

    def _configure(self) -> None:
        from azure.monitor.opentelemetry import configure_azure_monitor  # noqa: PLC0415 - slow, off the start path
        from opentelemetry import metrics, trace  # noqa: PLC0415
        from opentelemetry._logs import get_logger_provider  # noqa: PLC0415
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415

        env = self.environment
        connection = env["APPLICATIONINSIGHTS_CONNECTION_STRING"]
        resource = Resource.create(
            {
                "service.name": env.get("VAULTFN_ROLE_NAME") or "vault",
                "service.instance.id": env.get("WEBSITE_INSTANCE_ID") or socket.gethostname(),
            }
        )
        span_scrubber, log_scrubber = _scrubbing_processors(self.scrubber)
        # The exporter polls Microsoft's "OneSettings" service (settings.sdk.monitor.azure.com) for
        # SDK feature flags: an outbound call this app does not need, traced as a failing dependency
        # wherever egress is closed. Off unless the operator sets it (the SDK reads only os.environ).
        os.environ.setdefault(CONTROL_PLANE_SETTING, env.get(CONTROL_PLANE_SETTING) or "true")
        configure_azure_monitor(
            connection_string=connection,
            resource=resource,
            logger_name="vaultfn",
            # The distro's default samples 5 traces per second and overwrites each span's sample rate:
            # requests beyond that were dropped. They are sampled here, at SPANS_PER_SECOND, instead.
            sampling_ratio=1.0,
            enable_live_metrics=_live_metrics(env, connection),
            span_processors=[span_scrubber],
            log_record_processors=[log_scrubber],
        )
        self._tracer = trace.get_tracer("vaultfn")
        self._meter = metrics.get_meter("vaultfn")
        self._logger = logging.getLogger("vaultfn.availability")
        self._providers = (trace.get_tracer_provider(), metrics.get_meter_provider(), get_logger_provider())
        log.info("sending telemetry to Application Insights")

    # -- signals -----------------------------------------------------------

    def request(self, method: str, path: str, status: int, start_ns: int, duration_ns: int) -> None:
        self._requests.append((method, path, status, start_ns, duration_ns))

    def _export_requests(self) -> None:
        """Send what the hot path recorded, sampled down to SPANS_PER_SECOND.

        Each sent item carries the sample rate, so Application Insights counts it as
        `itemCount` requests and rates stay right; exporting every request at
        thousands per second would take the proxy's CPU (one interpreter lock).
        """
        from opentelemetry.trace import SpanKind, Status, StatusCode  # noqa: PLC0415

        # Swap rather than drain: the hot path appends to whichever deque is current.
        batch, self._requests = self._requests, collections.deque(maxlen=REQUEST_BUFFER)
        if not batch:
            return
        step = max(1, math.ceil(len(batch) / (SPANS_PER_SECOND * FLUSH_EVERY)))
        for method, path, status, start_ns, duration_ns in itertools.islice(batch, 0, None, step):
            route = route_of(path)
            if route not in self._routes:
                if len(self._routes) >= ROUTE_LIMIT:
                    route = "/v1/(other)"
                else:
                    self._routes.add(route)
            attributes: dict[str, Any] = {
                "http.request.method": method,
                "http.route": route,
                "http.response.status_code": status,
            }
            span = self._tracer.start_span(
                f"{method} {route}", kind=SpanKind.SERVER, start_time=start_ns, attributes=attributes
            )
            if step > 1:  # after the start: the distro's sampler sets its own rate (100) on every new span
                span.set_attribute("_MS.sampleRate", 100.0 / step)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end(end_time=start_ns + duration_ns)

    def availability(self, success: bool, duration_ms: float, message: str, properties: Mapping[str, Any]) -> None:
        if not self._ready.wait(30):
            return
        import uuid  # noqa: PLC0415 - off the handler's start path

        attributes = {
            "microsoft.availability.id": str(uuid.uuid4()),
            "microsoft.availability.name": AVAILABILITY_TEST,
            "microsoft.availability.duration": _timespan(duration_ms),
            "microsoft.availability.success": success,
            "microsoft.availability.runLocation": self.environment.get("REGION_NAME") or "local",
            "microsoft.availability.message": message,
            **{k: v for k, v in properties.items() if v is not None},
        }
        self._logger.info(message, extra=attributes)

    def metric(self, name: str, value: float, attributes: Mapping[str, Any] | None = None) -> None:
        if not self._ready.is_set():
            with self._lock:
                if not self._ready.is_set():
                    self._pending.append((name, value, dict(attributes or {})))
                    return
        with self._lock:
            gauge = self._gauges.get(name) or self._gauges.setdefault(name, self._meter.create_gauge(name))
        gauge.set(value, attributes=dict(attributes or {}))

    def flush(self) -> None:
        if not self._ready.wait(30):
            return
        self._export_requests()
        for provider in self._providers:
            flush = getattr(provider, "force_flush", None)
            if flush is not None:
                flush()

    def shutdown(self) -> None:
        self._stop.set()
        self.flush()


def _live_metrics(environment: Mapping[str, str], connection: str) -> bool:
    """Live metrics only when asked for, and never toward a loopback ingestion endpoint (tests, local)."""
    if environment.get("VAULTFN_LIVE_METRICS", "").lower() not in ("1", "true", "yes", "on"):
        return False
    fields = dict(part.split("=", 1) for part in connection.split(";") if "=" in part)
    host = urlparse(fields.get("IngestionEndpoint", "")).hostname or ""
    return not (host == "localhost" or host.startswith("127.") or host == "::1")


def _scrubbing_processors(scrubber: Scrubber) -> tuple[Any, Any]:
    """A span and a log record processor that pass everything through the scrubber before export."""
    from opentelemetry.sdk._logs import LogRecordProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace import SpanProcessor  # noqa: PLC0415

    class ScrubbingSpanProcessor(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            if span.attributes:
                span.set_attributes(scrubber.attributes(span.attributes))
            span.update_name(scrubber.text(span.name))

    class ScrubbingLogProcessor(LogRecordProcessor):
        def on_emit(self, log_data: Any) -> None:
            record = getattr(log_data, "log_record", log_data)
            if isinstance(record.body, str):
                record.body = scrubber.text(record.body)
            if record.attributes:
                record.attributes = scrubber.attributes(record.attributes)

        emit = on_emit

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    return ScrubbingSpanProcessor(), ScrubbingLogProcessor()


_current: Telemetry = Telemetry()


def start(environment: Mapping[str, str]) -> Telemetry:
    """Configure telemetry once per process (when a connection string is set) and return it."""
    global _current
    if not _current.enabled and environment.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
        _current = AzureTelemetry(environment)
    return _current


def current() -> Telemetry:
    return _current
