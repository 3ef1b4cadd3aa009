"""Offline first, on the real model: with the controller down the device serves without a
single failure, and when it returns, state and audit records sync without anyone acting."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from edgefleet.agent.app.state import LocalState
from tests.harness import wait_for
from tests.integration.fleets import ModelFleet

pytestmark = [pytest.mark.integration, pytest.mark.model]

REQUESTS = 1000


def test_1000_requests_with_the_controller_down_then_everything_syncs(
    model_fleet: ModelFleet,
) -> None:
    fleet = model_fleet.fleet
    fleet.stop("controller")
    try:
        body = {"model": "smollm2", "prompt": "Hi", "max_tokens": 1, "temperature": 0}

        def ask(_: int) -> bool:
            answer = model_fleet.post("/v1/completions", body)
            return bool(answer["usage"]["completion_tokens"] == 1)

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(ask, range(REQUESTS)))
        assert results.count(True) == REQUESTS
    finally:
        fleet.start_controller()
    state = LocalState.open(fleet.agent_dir("gw1"))
    try:
        head = state.audit.head_seq()
    finally:
        state.db.dispose()
    wait_for(
        "every audit record at the controller",
        lambda: True if fleet.devices()[0]["audit_stored_seq"] >= head else None,
        120,
    )
    # The first report after the outage says what the device saw; the next one is clean.
    wait_for("a clean report", lambda: fleet.devices()[0]["last_error"] == "" or None, 30)
