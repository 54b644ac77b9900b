"""Telemetry to a real local ingestion endpoint: what reaches Application Insights, and what never does."""

from __future__ import annotations

import json

import pytest

from shared.scrub import Scrubber
from shared.telemetry import (
    AVAILABILITY_TEST,
    METRIC_BACKUP_BYTES,
    METRIC_BACKUP_CONVERGED,
    METRIC_BACKUP_COPIED,
    METRIC_HEALTHY,
    METRIC_VAULT_START_MS,
    route_of,
)

from .azurite import new_container
from .conftest import RunningHandler, free_port
from .ingestion import IngestionServer

# Distinctive values planted in every secret setting: none may appear in any envelope.
PLANTED = {
    "AZURE_STORAGE_KEY": "PlantedStorageKey0123456789abcdefXYZ==",
    "VAULTFN_INIT_TOKEN": "PlantedInitToken-5f4dcc3b5aa765d61d8327deb882cf99",
    "VAULTFN_BACKUP_TOKEN": "s.PlantedBackupToken1234567890",
    "BACKUP_CONNECTION_STRING": "DefaultEndpointsProtocol=https;AccountName=planted;AccountKey=PlantedAccountKey==",
}
TIMER = json.dumps({"Data": {"timer": {"ScheduleStatus": None, "IsPastDue": False}}, "Metadata": {}}).encode()


def telemetry_env(ingestion: IngestionServer, **extra: str) -> dict[str, str]:
    return {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": ingestion.connection_string,
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
        "VAULTFN_LIVE_METRICS": "true",  # asked for, yet off: the endpoint is loopback
        **PLANTED,
        **extra,
    }


def assert_no_secret_leaked(ingestion: IngestionServer, *more: str) -> None:
    everything = b"".join(ingestion.raw).decode("utf-8", "replace")
    for value in (*PLANTED.values(), *more):
        assert value not in everything


def test_requests_availability_logs_and_metrics_reach_the_endpoint(ingestion, make_handler) -> None:
    handler: RunningHandler = make_handler(VAULTFN_EAGER_START="true", **telemetry_env(ingestion))
    handler.wait_healthy()
    token = {"X-Vault-Token": handler.root_token}
    handler.request("GET", f"/v1/auth/token/lookup/{handler.root_token}", headers=token)  # any answer
    assert handler.request("GET", "/v1/sys/health")[0] == 200
    status, _, answer = handler.request("POST", "/keepwarm_timer", TIMER, timeout=60)  # flushes at the end
    assert status == 200, answer

    health = ingestion.wait_for("RequestData", lambda d: d["name"] == "GET /v1/sys/health")
    assert health["responseCode"] == "200" and health["success"] is True
    lookup = ingestion.wait_for("RequestData", lambda d: d["name"].startswith("GET /v1/auth/token"))
    assert lookup["name"] == "GET /v1/auth/token/*"  # the mount, never the token in the path
    ingestion.wait_for("RequestData", lambda d: d["name"] == "POST /keepwarm_timer")
    assert ingestion.of_type("ExceptionData") == [], ingestion.of_type("ExceptionData")
    availability = ingestion.wait_for("AvailabilityData", lambda d: d["name"] == AVAILABILITY_TEST)
    assert availability["success"] is True and availability["runLocation"] == "local"
    assert availability["message"].startswith("active (healthy)")
    ingestion.wait_for("MessageData", lambda d: "[core]" in d.get("message", ""))  # Vault's own log lines
    metric_names = {m["name"] for data in ingestion.of_type("MetricData") for m in data["metrics"]}
    handler.stop()  # shutdown flushes the rest
    metric_names |= {m["name"] for data in ingestion.of_type("MetricData") for m in data["metrics"]}
    assert {METRIC_VAULT_START_MS, METRIC_HEALTHY} <= metric_names
    ours = [
        e for e in ingestion.envelopes if e["data"]["baseType"] in ("RequestData", "AvailabilityData", "MessageData")
    ]
    assert {e["tags"]["ai.cloud.role"] for e in ours} == {"vault"}  # the exporter's own SDK stats aside
    assert_no_secret_leaked(ingestion, handler.root_token)


def test_a_failed_health_check_is_a_failed_availability_result(ingestion, make_handler) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1/sys/health"
    handler: RunningHandler = make_handler(VAULT_HEALTH_URL=dead, REGION_NAME="westeurope", **telemetry_env(ingestion))
    assert handler.request("POST", "/keepwarm_timer", TIMER, timeout=60)[0] == 200
    availability = ingestion.wait_for("AvailabilityData")
    assert availability["success"] is False and availability["runLocation"] == "westeurope"
    assert availability["message"].startswith("unreachable (NOT healthy)")
    assert_no_secret_leaked(ingestion)


def test_without_a_connection_string_nothing_is_sent_or_imported(make_handler) -> None:
    handler: RunningHandler = make_handler()
    assert handler.request("POST", "/keepwarm_timer", TIMER, timeout=60)[0] == 200
    assert "sending telemetry" not in handler.log


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v1/sys/health?standbycode=200", "/v1/sys/health"),
        ("/v1/sys/leases/lookup/abc123", "/v1/sys/leases"),
        ("/v1/sys/made-up-endpoint", "/v1/sys/*"),
        ("/v1/secret/data/app/db", "/v1/secret/*"),
        ("/v1/auth/token/lookup/s.abcdefghijklmnopqrstuvwx", "/v1/auth/token/*"),
        ("/v1/identity/entity/id/1234", "/v1/identity/entity/*"),
        ("/ui/vault/secrets", "/ui/*"),
        ("/", "/"),
        ("/keepwarm_timer", "/keepwarm_timer"),
    ],
)
def test_route_names_have_bounded_cardinality(path: str, route: str) -> None:
    assert route_of(path) == route


@pytest.mark.parametrize(
    "secret",
    [
        "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0a2V5MTIzNDU2Nzg5MA==;EndpointSuffix=x",
        "https://a.blob.core.windows.net/c/b?sv=2022-11-02&sig=AbCdEf%2B123%3D&se=2030",
        "hvs.CAESIAbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
        "s.S01qIMHgHx3qPZ5ZBTq7UZOX",
        '{"recovery_keys": ["e590141dd2de993b84d9e7cfd7f0b23b"], "root_token": "s.abc"}',
        "X-Vault-Token: whatever-it-is",
    ],
)
def test_the_scrubber_removes_secret_shapes(secret: str) -> None:
    scrubbed = Scrubber().text(f"before {secret} after")
    assert "[REDACTED]" in scrubbed and scrubbed.startswith("before ") and scrubbed.endswith(" after")
    for fragment in ("c2VjcmV0a2V5", "AbCdEf%2B123", "CAESIAbCdEf", "S01qIMHgHx3q", "e590141dd2de", "whatever-it-is"):
        assert fragment not in scrubbed


def test_the_scrubber_removes_configured_values_of_any_shape() -> None:
    scrubber = Scrubber.from_environment({"AZURE_STORAGE_KEY": "plain-looking-value-42", "UNRELATED": "keep-me-1234"})
    assert scrubber.text("k=plain-looking-value-42 u=keep-me-1234") == "k=[REDACTED] u=keep-me-1234"


def test_backup_metrics_reach_the_endpoint(ingestion, azurite, vault_container, make_handler) -> None:
    source, contents = vault_container
    handler: RunningHandler = make_handler(
        AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string,
        AZURE_BLOB_CONTAINER=source.container_name,
        BACKUP_CONTAINER=new_container(azurite, "telemetry").container_name,
        **{**telemetry_env(ingestion), "BACKUP_CONNECTION_STRING": azurite.connection_string},
    )
    assert handler.request("POST", "/backup_timer", TIMER, timeout=120)[0] == 200
    values = {}
    for data in ingestion.of_type("MetricData"):
        for metric in data["metrics"]:
            values[metric["name"]] = metric["value"]
    assert values[METRIC_BACKUP_COPIED] == 1000 and values[METRIC_BACKUP_CONVERGED] == 1
    assert values[METRIC_BACKUP_BYTES] == sum(len(v) for v in contents.values())
    assert_no_secret_leaked(ingestion, azurite.connection_string)
