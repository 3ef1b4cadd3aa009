"""The agent installs alone: its distribution's dependencies are exactly what the agent
and the shared kernel import, and nothing of the controller is loaded by any agent
module. The controller's own needs are the `controller` extra."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# distribution name -> the top-level module it provides, where they differ
MODULE_OF = {
    "grpcio": "grpc",
    "protobuf": "google",
    "llama-cpp-python": "llama_cpp",
    "prometheus-client": "prometheus_client",
    "grpcio-health-checking": "grpc_health",
    "grpcio-reflection": "grpc_reflection",
    "pyyaml": "yaml",
}
STDLIB = set(sys.stdlib_module_names)


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def _imports(*packages: str) -> set[str]:
    """Top-level modules imported anywhere in ``packages`` (lazily or not)."""
    found = set()
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.add(node.module.split(".")[0])
    return found - STDLIB - {"agent", "edgefleet", "controller", "__future__"}


def test_the_agents_dependencies_are_what_it_imports() -> None:
    declared = {
        MODULE_OF.get(_name(r), _name(r).replace("-", "_"))
        for r in PYPROJECT["project"]["dependencies"]
    }
    imported = _imports("agent", "edgefleet") - {"numpy"}  # numpy comes with llama-cpp-python
    assert imported == declared, (
        f"imported but not declared: {sorted(imported - declared)}; "
        f"declared but not imported by the agent: {sorted(declared - imported)}"
    )


def test_the_controller_extra_holds_what_only_the_controller_imports() -> None:
    extra = {
        MODULE_OF.get(_name(r), _name(r))
        for r in PYPROJECT["project"]["optional-dependencies"]["controller"]
    }
    assert extra <= _imports("controller")
    assert not extra & _imports("agent", "edgefleet")


def test_no_agent_module_loads_controller_code() -> None:
    """Import every module of the agent in a fresh interpreter: no controller module,
    Alembic, matplotlib or psycopg gets loaded. (grpc itself imports grpc_health and
    grpc_reflection when they happen to be installed; the test above shows the agent's
    own code never does; SQLAlchemy is the controller's alone.)"""
    script = (
        "import importlib, json, pkgutil, sys\n"
        "import edgefleet\n"
        "for top in pkgutil.iter_modules(edgefleet.__path__, 'edgefleet.'):\n"
        "    if top.name in ('edgefleet.controller', 'edgefleet.entry', 'edgefleet.v1'):\n"
        "        continue\n"
        "    package = importlib.import_module(top.name)\n"
        "    if top.ispkg:\n"
        "        for info in pkgutil.walk_packages(package.__path__, top.name + '.'):\n"
        "            importlib.import_module(info.name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout
    )
    assert "edgefleet.agent.app.service" in loaded  # the walk reached the agent
    tops = {m.split(".")[0] for m in loaded}
    assert not tops & {"controller", "sqlalchemy", "alembic", "matplotlib", "psycopg"}
    assert not [m for m in loaded if m.startswith("edgefleet.controller")]


@pytest.mark.parametrize("absent", ["sqlalchemy", "alembic", "grpc_health"])
def test_edgefleetctl_without_the_controller_extra_says_what_to_install(absent: str) -> None:
    """On a gateway (agent only), `edgefleetctl` is one line, not a traceback, whichever
    module of the extra is absent."""
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] == {absent!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from edgefleet.entry import edgefleetctl\n"
        "sys.argv = ['edgefleetctl', 'serve']\n"
        "sys.exit(edgefleetctl())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith(
        "edgefleetctl: error: this installation holds the agent only"
    )
    assert (
        "pip install 'edgefleet[controller]'" in result.stderr and "Traceback" not in result.stderr
    )
