"""The guard tells the change feed after every successful call of a method that wakes
devices, and only then: servicers never call it themselves (one way to do it)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from edgefleet.controller.app.metrics import ControllerMetrics
from edgefleet.controller.rpc.guard import GuardInterceptor
from edgefleet.errors import NotFoundError

OPERATOR = "/edgefleet.v1.OperatorService/"


class _Aborted(Exception):
    pass


class _Context:
    """What the guard reads of a call: an admin operator's verified certificate."""

    def __init__(self) -> None:
        self.status: grpc.StatusCode | None = None

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_common_name": [b"operator:admin"]}

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def code(self) -> grpc.StatusCode | None:
        return self.status

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.status = code
        raise _Aborted(message)


class _Access:
    def admitted(self, *args: object) -> bool:
        return True


def _call(method: str, behavior: Any) -> int:
    """Run one unary call of ``method`` through the guard; return how often it woke devices."""
    woken = []
    guard = GuardInterceptor(
        _Access(),  # type: ignore[arg-type]
        ControllerMetrics(),
        changed=lambda: woken.append(method),
    )
    handler = grpc.unary_unary_rpc_method_handler(behavior)

    async def continuation(details: Any) -> Any:
        return handler

    details = SimpleNamespace(method=OPERATOR + method)

    async def run() -> None:
        guarded = await guard.intercept_service(continuation, details)
        with contextlib.suppress(_Aborted):  # a failure ends in abort, as in grpc
            await guarded.unary_unary(object(), _Context())

    asyncio.run(run())
    return len(woken)


async def _succeed(request: object, context: object) -> str:
    return "done"


async def _fail(request: object, context: object) -> str:
    raise NotFoundError("no such rollout")


@pytest.mark.parametrize("method", ["CreateRollout", "SetDeviceState", "ApplyPolicy"])
def test_a_successful_change_wakes_devices_once(method: str) -> None:
    assert _call(method, _succeed) == 1


def test_a_failed_change_wakes_nobody() -> None:
    assert _call("CreateRollout", _fail) == 0


@pytest.mark.parametrize("method", ["ListDevices", "PlanRollout", "AddOperator"])
def test_a_call_that_changes_nothing_devices_see_wakes_nobody(method: str) -> None:
    assert _call(method, _succeed) == 0


def test_no_servicer_notifies_by_hand() -> None:
    servicers = Path(__file__).parents[2] / "controller" / "rpc" / "servicers.py"
    assert "changes.notify" not in servicers.read_text()
