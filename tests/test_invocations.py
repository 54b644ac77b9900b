"""Unit tests of vault_handler.invocations: the host invocation dispatcher."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import re
from typing import Any

import pytest

from vault_handler.invocations import FUNCTION_JOBS, Dispatcher, Invocation, JobResult

seen_invocations: list[Invocation] = []


async def echo_job(invocation: Invocation) -> JobResult:
    """Registered by its "module:attribute" string in the lazy-resolution tests."""
    seen_invocations.append(invocation)
    return JobResult(
        return_value={"function": invocation.function, "data": invocation.data},
        logs=["echoed"],
        outputs={"out": invocation.metadata.get("sys", {})},
    )


async def failing_job(invocation: Invocation) -> JobResult:
    raise RuntimeError("storage unreachable")


async def empty_job(invocation: Invocation) -> JobResult:
    return JobResult()


def dispatch(dispatcher: Dispatcher, name: str, body: bytes) -> tuple[int, dict[str, Any]]:
    return asyncio.run(dispatcher.dispatch(name, body))


@pytest.fixture(autouse=True)
def _clear_seen() -> None:
    seen_invocations.clear()


def test_successful_invocation_gets_the_host_envelope():
    body = json.dumps({"Data": {"timer": {"IsPastDue": False}}, "Metadata": {"sys": {"MethodName": "t"}}}).encode()
    status, payload = dispatch(Dispatcher({"keepwarm_timer": echo_job}), "keepwarm_timer", body)
    assert status == 200
    assert payload == {
        "Outputs": {"out": {"MethodName": "t"}},
        "Logs": ["echoed"],
        "ReturnValue": {"function": "keepwarm_timer", "data": {"timer": {"IsPastDue": False}}},
    }
    assert seen_invocations == [
        Invocation("keepwarm_timer", {"timer": {"IsPastDue": False}}, {"sys": {"MethodName": "t"}})
    ]
    json.dumps(payload)  # the envelope is JSON-serializable


def test_default_job_result_envelope():
    assert dispatch(Dispatcher({"t": empty_job}), "t", b"{}") == (200, {"Outputs": {}, "Logs": [], "ReturnValue": None})


@pytest.mark.parametrize("body", [b"", b"{}", b"  {}  "])
def test_empty_payload_gives_empty_data_and_metadata(body: bytes):
    status, _ = dispatch(Dispatcher({"t": echo_job}), "t", body)
    assert status == 200
    assert seen_invocations == [Invocation("t", {}, {})]


def test_unknown_function_is_404_listing_known_names():
    status, payload = dispatch(Dispatcher({"backup_timer": empty_job, "keepwarm_timer": empty_job}), "nope", b"{}")
    assert status == 404
    assert payload["error"] == "no function named 'nope' (known: backup_timer, keepwarm_timer)"
    assert payload["Logs"] == [payload["error"]]
    assert set(payload) == {"error", "Logs"}


def test_unknown_function_with_no_jobs():
    status, payload = dispatch(Dispatcher({}), "keepwarm_timer", b"{}")
    assert status == 404
    assert payload["error"].endswith("(known: none)")


@pytest.mark.parametrize("body", [b"{", b"not json", b'{"Data": }', b"\xff\xfe", b"{'Data': {}}"])
def test_malformed_json_is_400(body: bytes):
    status, payload = dispatch(Dispatcher({"t": echo_job}), "t", body)
    assert status == 400
    assert payload["error"].startswith("invocation payload is not JSON: ")
    assert seen_invocations == []


@pytest.mark.parametrize("body", [b"[]", b"[1, 2]", b'"text"', b"3", b"null", b"true"])
def test_non_object_payload_is_400(body: bytes):
    status, payload = dispatch(Dispatcher({"t": echo_job}), "t", body)
    assert status == 400
    assert payload["error"] == "invocation payload must be a JSON object with Data and Metadata"
    assert seen_invocations == []


@pytest.mark.parametrize(
    "payload",
    [{"Data": [1]}, {"Data": None}, {"Data": "x"}, {"Metadata": 5}, {"Data": {}, "Metadata": []}],
)
def test_data_or_metadata_not_an_object_is_400(payload: dict):
    status, answer = dispatch(Dispatcher({"t": echo_job}), "t", json.dumps(payload).encode())
    assert status == 400
    assert answer["error"] == "invocation payload's Data and Metadata must be JSON objects"
    assert seen_invocations == []


def test_failing_job_is_500_with_the_error_in_logs(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.ERROR, logger="vaultfn.invocations")
    status, payload = dispatch(Dispatcher({"backup_timer": failing_job}), "backup_timer", b"{}")
    assert status == 500
    assert payload == {"Outputs": {}, "Logs": ["backup_timer failed: storage unreachable"], "ReturnValue": None}
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "function backup_timer failed"
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


def test_lazy_module_attribute_resolution():
    dispatcher = Dispatcher({"lazy": f"{__name__}:echo_job"})
    status, payload = dispatch(dispatcher, "lazy", b'{"Data": {"a": 1}}')
    assert status == 200
    assert payload["ReturnValue"] == {"function": "lazy", "data": {"a": 1}}
    # Resolved once, then reused.
    assert dispatch(dispatcher, "lazy", b"{}")[0] == 200
    assert len(seen_invocations) == 2


def test_lazy_jobs_are_not_imported_until_used():
    dispatcher = Dispatcher({"broken": "vaultfn_no_such_module:job", "ok": empty_job})
    assert dispatch(dispatcher, "ok", b"{}")[0] == 200
    status, payload = dispatch(dispatcher, "missing", b"{}")
    assert status == 404
    assert "(known: broken, ok)" in payload["error"]


def test_job_that_cannot_be_imported_is_a_500():
    status, payload = dispatch(Dispatcher({"broken": "vaultfn_no_such_module:job"}), "broken", b"{}")
    assert status == 500
    assert any("broken" in line for line in payload["Logs"])


def test_registered_function_jobs_resolve():
    for name, target in FUNCTION_JOBS.items():
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name), name
        module, colon, attribute = target.partition(":")
        assert colon and module and attribute, f"{name}: {target!r} is not module:attribute"
        assert callable(getattr(importlib.import_module(module), attribute)), target
