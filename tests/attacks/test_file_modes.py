"""Review hole L10: outside systemd (a shell's umask 022), databases and data directories
were created readable by every local user. Both commands now create them private."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.harness import Fleet
from tests.integration.fleets import publish_tiny, roll_out_and_wait_active

pytestmark = pytest.mark.integration


def _exposed(root: Path) -> list[str]:
    """Everything under ``root`` that another local user could read, write or enter
    (blobs are read-only, 0444, inside folders no one else may enter)."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        blob = path.is_file() and "sha256" in path.parts and mode == 0o444
        if mode & 0o077 and not blob:
            found.append(f"{path.relative_to(root.parent)} {oct(mode)}")
    return found


def test_data_directories_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """A controller and an agent started from a shell with umask 022 leave nothing that
    another user can read: databases (and their WAL files), keys, audit logs, folders."""
    previous = os.umask(0o022)
    fleet = Fleet(tmp_path)
    fleet.agent_env["EDGEFLEET_AGENT_SMOKE_TEST"] = "false"
    try:
        fleet.init_controller()
        fleet.start_controller()
        fleet.enroll("gw", {"site": "lab"})
        fleet.start_agent("gw", sync_interval=1)
        publish_tiny(fleet, "1", seed=1)
        roll_out_and_wait_active(fleet, "1")
        assert _exposed(fleet.controller_dir) == []
        assert _exposed(fleet.agent_dir("gw")) == []
    finally:
        fleet.stop_all()
        os.umask(previous)
