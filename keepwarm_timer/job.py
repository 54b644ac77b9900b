"""The host's `POST /keepwarm_timer`: one health check, returned as the invocation's result.

A sealed or unreachable Vault is a successful check with a bad result: the
invocation fails only when the checker itself is broken.
"""

from __future__ import annotations

from vault_handler.invocations import Invocation, JobResult

from .check import check, health_url


async def run(invocation: Invocation) -> JobResult:
    settings = invocation.settings
    result = await check(health_url(settings), settings.keepwarm_timeout)
    summary = result.summary()
    if invocation.past_due:
        summary += " (this run was past due)"
    return JobResult(return_value={**result.as_dict(), "past_due": invocation.past_due}, logs=[summary])
