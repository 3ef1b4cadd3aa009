"""The layering rules of docs/architecture.md hold for every module, including new ones.

`make lint` checks the import contracts of pyproject.toml (`lint-imports`); this test
checks what the contracts cannot: that the kernel contract names every kernel module,
and that no test, benchmark or script imports the agent or the controller under a
top-level name (a second copy of every module, with its own globals)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SIDES = {"agent", "controller"}


def _contract(name: str) -> dict[str, Any]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["name"] == name)


def test_the_kernel_contract_names_every_kernel_module() -> None:
    kernel = {
        f"edgefleet.{p.stem if p.is_file() else p.name}"
        for p in (ROOT / "edgefleet").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__")
        or (p.is_dir() and (p / "__init__.py").exists() and p.name not in SIDES)
    }
    listed = set(_contract("The kernel imports neither side")["source_modules"])
    assert kernel - listed == set(), "add them to the contract in pyproject.toml"
    assert listed - kernel == set()


def test_the_sides_are_the_top_level_folders() -> None:
    for side in SIDES:
        link = ROOT / "edgefleet" / side
        assert link.is_symlink() and link.resolve() == ROOT / side


def test_nothing_imports_a_side_under_a_top_level_name() -> None:
    pattern = re.compile(r"^\s*(from|import)\s+(agent|controller)\b", re.MULTILINE)
    sources = [ROOT / "demo.py", *(ROOT / "tests").rglob("*.py")]
    sources += [*(ROOT / "benchmarks").rglob("*.py"), *(ROOT / "deploy").rglob("*.py")]
    offenders = [str(p.relative_to(ROOT)) for p in sources if pattern.search(p.read_text())]
    assert offenders == []
