"""The controller's systemd unit passes `systemd-analyze verify` and is hardened like the
agent's; it serves the data directory `init` makes."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy/systemd/edgefleet-controller.service"
INSTALLED = "/opt/edgefleet/venv/bin/edgefleetctl"
DATA_DIR = "/var/lib/edgefleet-controller"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is absent")
def test_the_unit_verifies_cleanly(tmp_path: Path) -> None:
    unit = tmp_path / UNIT.name
    edgefleetctl = Path(sys.executable).parent / "edgefleetctl"
    unit.write_text(UNIT.read_text().replace(INSTALLED, str(edgefleetctl)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert str(unit) not in result.stderr, result.stderr


def test_the_unit_is_hardened_and_serves_an_initialized_directory() -> None:
    unit = _unit()
    service = unit["Service"]
    assert service["User"] == "edgefleet" and service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict" and service["ReadWritePaths"] == DATA_DIR
    assert service["StateDirectory"] == Path(DATA_DIR).name
    assert service["CapabilityBoundingSet"] == "" and service["UMask"] == "0077"
    assert service["ExecStart"].split() == [INSTALLED, "serve", "--data-dir", DATA_DIR]
    assert unit["Unit"]["ConditionPathExists"] == f"{DATA_DIR}/metadata/root"
