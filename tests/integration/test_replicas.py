"""Two controller replicas on one PostgreSQL behind a balancer, agents spread over both: a
change made on one replica reaches watch streams on the other at once (LISTEN/NOTIFY);
one replica is killed in the middle of a staged rollout, the other finishes it, and no
device applies a step twice."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import BIN, Fleet, free_port, wait_for
from tests.integration.balancer import Balancer
from tests.integration.fleets import agent_actions, publish_tiny, serving

pytestmark = pytest.mark.integration

AGENTS = ("gw1", "gw2", "gw3", "gw4")


def _serving(address: str) -> bool | None:
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
    except grpc.RpcError:
        return None
    return True if reply.status == health_pb2.HealthCheckResponse.SERVING else None


def _start_replica(fleet: Fleet, name: str) -> tuple[subprocess.Popen[bytes], str, str]:
    """A second `serve` on the same data directory (shared keys and blobs) and database."""
    sync, health = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    process = fleet._spawn(
        name,
        [
            str(BIN / "edgefleetctl"),
            "serve",
            "--data-dir",
            str(fleet.controller_dir),
            "--listen",
            sync,
            "--enroll-listen",
            f"127.0.0.1:{free_port()}",
            "--health-listen",
            health,
            "--metrics-listen",
            "",
        ],  # fmt: skip
        fleet.controller_env,
    )
    wait_for(f"{name} to serve", lambda: _serving(health), 30)
    return process, sync, health


def _rollout_actions(fleet: Fleet, rollout_id: int) -> list[str]:
    out = fleet.ctl(
        "audit", "query", "--device", "controller", "--json", "--limit", "10000", "--oldest-first"
    )
    records = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    return [
        r["action"]
        for r in records
        if r["details"].get("rollout_id") == rollout_id and r["action"].startswith("rollout.")
    ]


def test_a_replica_dies_mid_rollout_and_the_other_finishes_it(
    tmp_path: Path, postgres: str
) -> None:
    fleet = Fleet(tmp_path)
    fleet.controller_env.update(
        {
            "EDGEFLEET_CONTROLLER_DATABASE_URL": postgres,
            "EDGEFLEET_CONTROLLER_ROLLOUT_TICK_SECONDS": "1",
        }
    )
    fleet.agent_env["EDGEFLEET_AGENT_SMOKE_TEST"] = "false"  # tiny models cannot generate
    fleet.agent_env["EDGEFLEET_AGENT_WATCH_JITTER_SECONDS"] = "1"
    try:
        fleet.init_controller()
        fleet.start_controller()
        replica_a = fleet.sync_address
        _, replica_b, _ = _start_replica(fleet, "controller-b")
        with Balancer([replica_a, replica_b]) as balancer:
            fleet.agent_env["EDGEFLEET_AGENT_CONTROLLER_SYNC_ADDRESS"] = balancer.address
            for name in AGENTS:
                fleet.enroll(name, {"site": "lab"})
            # Polling every 10 minutes: only the watch streams can bring a change quickly.
            for name in AGENTS:
                fleet.start_agent(name, sync_interval=600)
            wait_for(
                "agents on both replicas",
                lambda: True if min(balancer.connections) >= 2 else None,
                30,
            )
            publish_tiny(fleet, "1", seed=1)
            fleet.ctl("rollout", "create", "tiny@1", "--selector", "site=lab")  # on replica A
            for name in AGENTS:  # those watching replica B heard of it through NOTIFY
                wait_for(
                    f"{name} to serve tiny@1",
                    serving(fleet, name, "tiny@1"),
                    30,
                )

            for name in AGENTS:  # now poll often: health reports drive the waves
                fleet.stop(f"agent-{name}")
                fleet.start_agent(name, sync_interval=2)
            publish_tiny(fleet, "2", seed=2)
            created = fleet.ctl(
                "rollout", "create", "tiny@2", "--selector", "site=lab",
                "--canary", "1", "--waves", "50%", "--soak", "2",
            ).stdout  # fmt: skip
            rollout_id = int(created.split()[1].rstrip(":"))

            def status() -> dict[str, Any]:
                out = fleet.ctl("rollout", "status", str(rollout_id), "--json", quiet=True)
                return dict(json.loads(out.stdout))

            wait_for("the second wave", lambda: True if status().get("current_wave") else None, 90)
            fleet.processes["controller"].send_signal(signal.SIGKILL)  # replica A dies
            fleet.processes.pop("controller").wait(10)
            fleet.sync_address = replica_b  # operators now reach replica B

            final = wait_for(
                "the rollout to complete on replica B",
                lambda: s if (s := status())["state"] == "completed" else None,
                120,
            )
            assert {t["state"] for t in final["targets"]} == {"healthy"}
            for name in AGENTS:
                wait_for(
                    f"{name} to serve tiny@2",
                    serving(fleet, name, "tiny@2"),
                    30,
                )
                steps = [a for a in agent_actions(fleet, name) if a[1] == "tiny@2"]
                assert steps.count(("model.activate", "tiny@2", "success")) == 1, steps
                assert steps.count(("model.install", "tiny@2", "success")) == 1, steps
            assert _rollout_actions(fleet, rollout_id) == [
                "rollout.create",
                "rollout.wave",
                "rollout.wave",
                "rollout.complete",
            ]
    finally:
        fleet.stop_all()
