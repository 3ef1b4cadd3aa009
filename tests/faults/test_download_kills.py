"""50 SIGKILLs of the agent at random moments of download, install and activation: after
each one the registry is consistent (every installed version's blob verifies, the active
version is installed, nothing unverified is in the store) and the download resumes."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from edgefleet.agent.app.state import LocalState
from tests.ggufkit import write_tiny_gguf
from tests.harness import Fleet, wait_for
from tests.integration.fleets import active_versions

pytestmark = pytest.mark.integration

KILLS = 50
ROWS = 1_500_000  # about 24 MB per version
VERSIONS = 16


def _check_consistent(fleet: Fleet) -> tuple[str | None, int]:
    """Open the dead agent's stores; assert consistency; return (active version, partial bytes)."""
    state = LocalState.open(fleet.agent_dir("gw"))
    try:
        manifests = state.registry.manifests()
        for manifest in manifests:
            result = state.registry.verify(manifest, "full")
            assert result.ok, f"installed {manifest.ref} does not verify: {result.reason}"
        active = state.registry.active_version("tiny")
        assert active is None or any(m.version == active for m in manifests)
        partials = list(state.blobs.partials.iterdir())
        for partial in partials:
            sha = partial.name.removesuffix(".partial")
            assert not state.blobs.path_of(sha).exists() or partial.stat().st_size == 0
        assert not list(state.blobs.quarantine.iterdir())
        return active, sum(p.stat().st_size for p in partials)
    finally:
        state.db.dispose()


def test_50_sigkills_during_download_install_and_activation(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.agent_env.update(
        {
            "EDGEFLEET_AGENT_SMOKE_TEST": "false",  # weights without a vocabulary
            "EDGEFLEET_AGENT_BANDWIDTH_LIMIT_BYTES_PER_SECOND": str(12 * 1024 * 1024),
            "EDGEFLEET_AGENT_SYNC_JITTER_SECONDS": "0",
            "EDGEFLEET_AGENT_WATCH_JITTER_SECONDS": "0",
        }
    )
    rng = random.Random(51)
    try:
        fleet.init_controller()
        fleet.start_controller()
        fleet.enroll("gw", {"site": "lab"})
        published = 0

        def roll_out_next() -> None:
            nonlocal published
            published += 1
            path = write_tiny_gguf(tmp_path / "m.gguf", seed=published, rows=ROWS)
            fleet.ctl("models", "publish", str(path), "--name", "tiny", "--version", str(published))
            fleet.ctl("rollout", "create", f"tiny@{published}", "--selector", "site=lab")

        roll_out_next()
        fleet.start_agent("gw", sync_interval=1)
        resumed_with_data = 0
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.3, 1.5))
            fleet.kill("agent-gw")
            active, partial_bytes = _check_consistent(fleet)
            resumed_with_data += partial_bytes > 0
            if active == str(published) and published < VERSIONS:
                roll_out_next()
            fleet.start_agent("gw", sync_interval=1)
        assert resumed_with_data >= KILLS // 3, "kills rarely landed mid-download"
        wait_for(
            f"tiny@{published} active",
            lambda: True if f"tiny@{published}" in active_versions(fleet, "gw") else None,
            120,
        )
        fleet.kill("agent-gw")
        assert _check_consistent(fleet) == (str(published), 0)
    finally:
        fleet.stop_all()
