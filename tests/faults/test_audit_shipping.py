"""Audit shipping survives SIGKILLs of agent and controller: every record stored once, in order."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

import pytest

from edgefleet.agent.app.state import LocalState
from edgefleet.audit import AuditEvent
from tests.harness import Fleet, wait_for

pytestmark = pytest.mark.integration

OFFLINE_RECORDS = 10_000
KILLS = 50


def _stored_seq(fleet: Fleet, device_id: str) -> int:
    """The controller's verified audit head for one device, read from its database directly:
    polling through `edgefleetctl` costs seconds a probe, and this loop probes 50+ times."""
    uri = f"file:{fleet.controller_dir / 'controller.db'}?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=30) as db:
        query = "SELECT last_seq FROM audit_heads WHERE chain = ?"
        row = db.execute(query, (device_id,)).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.timeout(600)  # ~180 s on an idle 2-core machine; 50 restarts slow down under load
def test_offline_backlog_arrives_exactly_once_through_50_sigkills(tmp_path: Path) -> None:
    """10,000 records written offline reach the controller intact despite 50 SIGKILLs mid-push."""
    fleet = Fleet(tmp_path)
    try:
        fleet.init_controller()
        fleet.start_controller()
        device_id = fleet.enroll("gw", {"site": "lab"})
        fleet.stop("controller")  # the site goes offline; the device keeps auditing
        state = LocalState.open(fleet.agent_dir("gw"))
        futures = [
            state.audit.submit(AuditEvent("app:x", "inference.chat", "m@1", "success", {"i": i}))
            for i in range(OFFLINE_RECORDS)
        ]
        head = max(f.result() for f in futures)
        state.db.dispose()
        # One record per push keeps shipping busy long enough for every kill to land mid-push.
        env = {"EDGEFLEET_AGENT_AUDIT_BATCH": "1", "EDGEFLEET_AGENT_SYNC_JITTER_SECONDS": "0"}
        fleet.start_agent("gw", sync_interval=1, env=env)
        time.sleep(2)  # it tries, and fails, while the controller is away
        fleet.start_controller()
        rng = random.Random(50)
        kills, deadline = 0, time.monotonic() + 300
        while kills < KILLS and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.05, 0.3))
            if _stored_seq(fleet, device_id) >= head:
                break  # shipping finished: further kills would not be mid-push
            victim = rng.choice(["agent-gw", "controller"])
            fleet.kill(victim)
            kills += 1
            if victim == "controller":
                fleet.start_controller()
            else:
                fleet.start_agent("gw", sync_interval=1, env=env)
        assert kills == KILLS, f"only {kills} kills landed before the backlog was shipped"
        left = head - _stored_seq(fleet, device_id)
        print(f"after {kills} kills, {left} of {head} records left to ship")
        # The rest ships at the normal batch size: one record per push (~55 a second here)
        # was only there to make every kill land mid-push, and made this wait a race.
        fleet.stop("agent-gw")
        fleet.start_agent("gw", sync_interval=1, env={"EDGEFLEET_AGENT_SYNC_JITTER_SECONDS": "0"})
        wait_for(
            "every record at the controller",
            lambda: True if _stored_seq(fleet, device_id) >= head else None,
            180,
        )
        out = tmp_path / "export.jsonl"
        fleet.ctl("audit", "export", "--device", device_id, "--out", str(out))
        verified = fleet.run(
            "edgefleetctl", "audit", "verify", str(out), "--root-fingerprint", fleet.fingerprint
        )
        assert verified.stdout.strip().endswith(": verified"), verified.stdout
        assert (
            len(out.read_bytes().splitlines()) - 1 >= head
        )  # each record once (verify refuses duplicates)
        assert fleet.devices()[0]["audit_alert"] == ""
    finally:
        fleet.stop_all()


@pytest.mark.parametrize("controller_limit", [0, 1_200_000], ids=["same-limit", "lower-limit"])
def test_large_records_ship_in_pushes_that_fit_the_message_limit(
    tmp_path: Path, controller_limit: int
) -> None:
    """A backlog of near-maximal records (120 x 60 KB, far over one 4 MiB message) all arrive,
    also at a controller whose message limit is lower than the agent's (its refusals of
    too-large pushes make the agent push less at a time)."""
    fleet = Fleet(tmp_path)
    if controller_limit:
        fleet.controller_env = {
            "EDGEFLEET_CONTROLLER_MAX_MESSAGE_BYTES": str(controller_limit),
            "EDGEFLEET_CONTROLLER_BLOB_CHUNK_BYTES": str(512 * 1024),
        }
    try:
        fleet.init_controller()
        fleet.start_controller()
        device_id = fleet.enroll("gw", {"site": "lab"})
        fleet.stop("controller")
        state = LocalState.open(fleet.agent_dir("gw"))
        rng = random.Random(60)
        futures = [
            state.audit.submit(
                AuditEvent(
                    "app:x", "tool.output", "m@1", "success", {"out": rng.randbytes(30_000).hex()}
                )
            )
            for _ in range(120)
        ]
        head = max(f.result() for f in futures)
        state.db.dispose()
        fleet.start_controller()
        fleet.start_agent("gw", sync_interval=1, env={"EDGEFLEET_AGENT_SYNC_JITTER_SECONDS": "0"})
        wait_for(
            "every large record at the controller",
            lambda: True if _stored_seq(fleet, device_id) >= head else None,
            60,
        )
        if controller_limit:
            assert "audit.push_too_large" in fleet.log("agent-gw")
    finally:
        fleet.stop_all()
