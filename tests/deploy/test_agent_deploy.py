"""The agent's deploy files: the systemd unit passes `systemd-analyze verify` and is
hardened, and the install script and example configuration match the agent's defaults."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edgefleet.agent.app import DEFAULT_DATA_DIR
from edgefleet.agent.app.config import CONFIG_FILE, AgentConfig, load_agent_config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy/systemd/edgefleet-agent.service"
EXAMPLE = ROOT / "deploy/agent/agent.toml.example"
INSTALL = ROOT / "deploy/agent/install.sh"
SETUP_SERVICE = ROOT / "deploy/agent/setup-service.sh"
INSTALLED_AGENT = "/opt/edgefleet/venv/bin/edgefleet-agent"


def service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser["Service"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is absent")
def test_the_unit_verifies_cleanly(tmp_path: Path) -> None:
    """`systemd-analyze verify` with the executable pointed at this checkout's agent: no
    error and no warning (an unknown or misspelt key is a warning)."""
    unit = tmp_path / UNIT.name
    agent = Path(sys.executable).parent / "edgefleet-agent"
    unit.write_text(UNIT.read_text().replace(INSTALLED_AGENT, str(agent)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert str(unit) not in result.stderr, result.stderr


def test_the_unit_is_hardened() -> None:
    unit = service()
    assert unit["User"] == "edgefleet" and unit["Group"] == "edgefleet"
    assert unit["NoNewPrivileges"] == "yes"
    assert unit["ProtectSystem"] == "strict"
    assert unit["ReadWritePaths"] == str(DEFAULT_DATA_DIR)
    assert unit["StateDirectory"] == DEFAULT_DATA_DIR.name
    assert unit["Restart"] == "on-failure"
    assert unit["MemoryMax"].endswith("G")
    assert unit["CapabilityBoundingSet"] == ""
    assert unit["ExecStart"].split() == [
        INSTALLED_AGENT,
        "--data-dir",
        str(DEFAULT_DATA_DIR),
        "run",
    ]


def test_the_example_configuration_loads_and_names_only_known_keys(tmp_path: Path) -> None:
    keys = set(tomllib.loads(EXAMPLE.read_text()))
    assert keys <= set(AgentConfig.__dataclass_fields__), keys - set(
        AgentConfig.__dataclass_fields__
    )
    (tmp_path / CONFIG_FILE).write_text(EXAMPLE.read_text())
    config = load_agent_config(tmp_path)
    defaults = AgentConfig(data_dir=tmp_path)
    assert config.api_listen == defaults.api_listen and config.api_auth
    memory_max = int(service()["MemoryMax"].removesuffix("G")) * 1024**3
    # Models get the budget; Python, the API and the audit writer need the rest.
    assert 0 < config.memory_budget_bytes <= memory_max - 512 * 1024**2


def test_the_install_script_matches_the_unit() -> None:
    script = INSTALL.read_text()
    service_setup = SETUP_SERVICE.read_text()
    for path in (INSTALL, SETUP_SERVICE):
        subprocess.run(["sh", "-n", str(path)], check=True)
    assert f"DATA_DIR={DEFAULT_DATA_DIR}" in service_setup
    assert f"ReadWritePaths={DEFAULT_DATA_DIR}" in UNIT.read_text()
    assert INSTALLED_AGENT.startswith(script.split("PREFIX=${PREFIX:-")[1].split("}")[0])
    assert "deploy/systemd/edgefleet-agent.service" in script
    assert "deploy/agent/agent.toml.example" in script
    assert "setup-service.sh" in script
