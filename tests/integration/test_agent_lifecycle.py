"""The agent's start is all or nothing: a failure half-way (here the LAN peer port is taken,
after the local API already listens) releases everything already started, says why in one
line, leaves no api.addr for the command line to read, and the next start works. A second
agent on the same data directory is refused while the first runs."""

from __future__ import annotations

import os
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.harness import BIN, Fleet

pytestmark = pytest.mark.integration


def test_a_failed_start_releases_what_it_started(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    try:
        fleet.init_controller()
        fleet.start_controller()
        fleet.enroll("gw", {"site": "lab"})
        api_addr = fleet.agent_dir("gw") / "api.addr"
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = "{}:{}".format(*taken.getsockname())
            command = [str(BIN / "edgefleet-agent"), "--data-dir", str(fleet.agent_dir("gw"))]
            env = {**os.environ, **fleet.agent_env, "EDGEFLEET_AGENT_PEER_LISTEN": busy}
            failed = subprocess.run(
                [*command, "run", "--api-listen", "127.0.0.1:0"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
        assert failed.returncode == 1, failed.stderr
        assert failed.stderr.splitlines()[-1] == (
            f"edgefleet-agent: error: cannot listen on {busy}: Address already in use"
        )
        assert "Traceback" not in failed.stderr
        assert not api_addr.exists()  # the API it had started is gone, and so is its address

        api = fleet.start_agent("gw")  # nothing left behind stands in the way
        assert api_addr.read_text().strip() == api

        # A second `run` on the same data directory is refused at once, and touches
        # nothing of the running agent's (its address stays, its API keeps answering).
        second = subprocess.run(
            [*command, "run", "--api-listen", "127.0.0.1:0"],
            env={**os.environ, **fleet.agent_env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        pid = fleet.processes["agent-gw"].pid
        assert second.returncode == 1 and "Traceback" not in second.stderr
        assert second.stderr.splitlines()[-1] == (
            f"edgefleet-agent: error: the agent is already running (pid {pid}) "
            f"on {fleet.agent_dir('gw')}"
        )
        assert api_addr.read_text().strip() == api
        with urllib.request.urlopen(f"http://{api}/healthz", timeout=10) as health:
            assert health.status == 200
    finally:
        fleet.stop_all()
