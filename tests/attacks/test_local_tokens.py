"""Review hole L11: 16 concurrent `edgefleet-agent tokens create` on one device lost tokens
they had printed (each read the policy, added its token and wrote it back) and crashed on a
shared `policy.json.tmp`. Raced again with real processes: every printed token works."""

from __future__ import annotations

import subprocess

import pytest

from edgefleet.agent.rbac.policy import LocalPolicy
from tests.harness import BIN, Fleet

pytestmark = pytest.mark.integration


def test_16_concurrent_token_creations_keep_every_token(small_fleet: tuple[Fleet, str]) -> None:
    """On an enrolled, running device: 16 processes at once, 16 tokens that authenticate."""
    fleet, _device = small_fleet
    data_dir = fleet.agent_dir("gw")
    command = [str(BIN / "edgefleet-agent"), "--data-dir", str(data_dir), "tokens", "create"]
    racers = [
        subprocess.Popen(
            [*command, f"app:racer-{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for i in range(16)
    ]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in racers]
    assert all(code == 0 for code, _, _ in results), [err for _, _, err in results]
    policy = LocalPolicy(data_dir).current()
    for i, (_, token, _) in enumerate(results):
        assert policy.subject_of_token(token.strip()) == f"app:racer-{i}"
    assert len(policy.tokens) == 16
    assert not list(data_dir.glob("*.tmp")) and not list(data_dir.glob(".*.tmp"))
