"""The workbook and alert rules query only names the code emits."""

from __future__ import annotations

import json
import re

from shared import telemetry

from .conftest import REPO

DASHBOARDS = REPO / "dashboards"


def queries() -> list[str]:
    workbook = json.loads((DASHBOARDS / "vault-workbook.json").read_text())
    alerts = json.loads((DASHBOARDS / "alerts.json").read_text())
    found = [item["content"]["query"] for item in workbook["items"] if "query" in item.get("content", {})]
    return found + [rule["query"] for rule in alerts["rules"]]


def test_every_metric_the_kql_uses_is_one_the_code_emits() -> None:
    used = {name for kql in queries() for name in re.findall(r'"(vaultfn_[a-z_]+)"', kql)}
    assert used and used <= set(telemetry.METRICS), used - set(telemetry.METRICS)


def test_availability_panels_use_the_emitted_test_name() -> None:
    names = {name for kql in queries() for name in re.findall(r'availabilityResults[^|]*\|[^"]*"([^"]+)"', kql)}
    assert names == {telemetry.AVAILABILITY_TEST}


def test_the_dashboard_covers_what_operators_look_at() -> None:
    joined = "\n".join(queries())
    for table in ("availabilityResults", "requests", "customMetrics"):
        assert table in joined
    for metric in (telemetry.METRIC_VAULT_START_MS, telemetry.METRIC_VAULT_RESTARTS, telemetry.METRIC_BACKUP_AGE_H):
        assert f'"{metric}"' in joined
