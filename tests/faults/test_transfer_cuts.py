"""A 200 MB model over a link that a fault-injecting proxy cuts at 20 random points: the
download always resumes from its verified chunks and ends verified; what crossed the
link is no more than the file plus one chunk per cut."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.faults.proxy import CuttingProxy
from tests.ggufkit import write_tiny_gguf
from tests.harness import Fleet, wait_for
from tests.integration.fleets import active_versions

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
SIZE_ROWS = 200 * 1000 * 1000 // 16  # about 200 MB of f32 weights
CUTS = 20


def test_a_200_mb_download_survives_20_cuts(tmp_path: Path) -> None:
    """Every cut costs at most one chunk; the file ends verified and active."""
    fleet = Fleet(tmp_path)
    fleet.agent_env["EDGEFLEET_AGENT_SMOKE_TEST"] = "false"  # weights without a vocabulary
    try:
        fleet.init_controller()
        fleet.start_controller()
        model = write_tiny_gguf(tmp_path / "big.gguf", seed=7, rows=SIZE_ROWS)
        size = model.stat().st_size
        fleet.ctl("models", "publish", str(model), "--name", "big", "--version", "1")
        fleet.enroll("gw", {"site": "lab"})
        rng = random.Random(20)
        cut_points = sorted(rng.randrange(2 * MIB, size - 2 * MIB) for _ in range(CUTS))
        # A fast site link (64 MB/s): slower than the agent verifies and writes, as real
        # links are. (On bare loopback the controller outruns the agent, and what a cut
        # loses is the flow-control window buffered in the agent, up to 2 MiB.)
        with CuttingProxy(fleet.sync_address, cut_points, 64 * 1000 * 1000) as proxy:
            env = {
                "EDGEFLEET_AGENT_CONTROLLER_SYNC_ADDRESS": proxy.address,
                "EDGEFLEET_AGENT_SYNC_JITTER_SECONDS": "0",
                "EDGEFLEET_AGENT_WATCH_JITTER_SECONDS": "0",
            }
            fleet.start_agent("gw", sync_interval=1, env=env)
            fleet.ctl("rollout", "create", "big@1", "--selector", "site=lab")
            wait_for(
                "big@1 active",
                lambda: True if "big@1" in active_versions(fleet, "gw") else None,
                300,
            )
            received = proxy.downstream_bytes
            assert proxy.cuts == CUTS
        verified = fleet.agent("gw", "models", "verify", "big").stdout
        assert "ok       big@1" in verified
        # Everything that crossed the link towards the device: the file, at most one chunk
        # lost per cut, and the small change (TLS, gRPC framing, metadata, audit acks).
        overhead = received - size
        print(f"received {received} bytes for a {size}-byte file over {CUTS} cuts: +{overhead}")
        assert size <= received <= size + CUTS * MIB
        assert not list((fleet.agent_dir("gw") / "blobs" / "partial").iterdir())
    finally:
        fleet.stop_all()
