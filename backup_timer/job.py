"""The host's `POST /backup_timer`: backup, prune, then a sampled verify; a summary as the result.

The blocking Azure SDK work runs in a worker thread so the handler keeps
serving Vault meanwhile. A failed step fails the invocation, with the reason
in its Logs; nothing half-done is ever committed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from shared import telemetry
from shared.telemetry import (
    METRIC_BACKUP_AGE_H,
    METRIC_BACKUP_BYTES,
    METRIC_BACKUP_CONVERGED,
    METRIC_BACKUP_COPIED,
    METRIC_BACKUP_DURATION_S,
    METRIC_BACKUP_REUSED,
    METRIC_VERIFY_FAILURES,
)
from vault_handler.invocations import Invocation, JobResult

from .commands import backup, open_repository
from .prune import policy_of, prune
from .verify import verify


def _backup_prune_verify(invocation: Invocation) -> dict[str, Any]:
    settings = invocation.settings.backup
    started = time.monotonic()
    repository = open_repository(settings)
    result = backup(settings, repository)
    pruned = prune(repository, policy_of(settings))
    checked = verify(repository, [result.manifest], settings.verify_sample, settings.parallelism)
    return {
        **result.as_dict(),
        "pruned": pruned.forgotten,
        "objects_deleted": pruned.objects_deleted,
        "verified": checked.objects,
        "verify_ok": checked.ok,
        "verify_problems": [f"{p.object}: {p.reason}" for p in checked.problems],
        "repository": repository.description,
        "past_due": invocation.past_due,
        "total_s": round(time.monotonic() - started, 3),
    }


def _report(summary: dict[str, Any]) -> None:
    sink = telemetry.current()
    if not sink.enabled:
        return
    for name, value in (
        (METRIC_BACKUP_DURATION_S, summary["duration_s"]),
        (METRIC_BACKUP_BYTES, summary["bytes"]),
        (METRIC_BACKUP_COPIED, summary["copied"]),
        (METRIC_BACKUP_REUSED, summary["reused"]),
        (METRIC_BACKUP_CONVERGED, 1 if summary["converged"] else 0),
        (METRIC_VERIFY_FAILURES, len(summary["verify_problems"])),
        (METRIC_BACKUP_AGE_H, 0.0),
    ):
        sink.metric(name, value, {"source": summary["source"]})


async def run(invocation: Invocation) -> JobResult:
    summary = await asyncio.to_thread(_backup_prune_verify, invocation)
    _report(summary)
    logs = [
        f"backup {summary['id']}: {summary['entries']} entries, {summary['copied']} copied, "
        f"{summary['reused']} reused, {summary['bytes']} bytes, "
        f"{'converged' if summary['converged'] else 'NOT converged'}, "
        f"{summary['duration_s']} s; pruned {len(summary['pruned'])}; verified {summary['verified']} objects "
        f"{'OK' if summary['verify_ok'] else 'WITH PROBLEMS: ' + '; '.join(summary['verify_problems'])}"
    ]
    if not summary["verify_ok"]:
        raise RuntimeError(logs[0])  # a backup that does not read back is a failed backup
    return JobResult(return_value=summary, logs=logs)
