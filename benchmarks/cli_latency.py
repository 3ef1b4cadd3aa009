"""How long the command-line tools take to answer, against the cost of the one import
they cannot avoid: `edgefleetctl` against `python -c "import grpc"` (every operator
command talks gRPC), `edgefleet-agent` against `python -c "import sqlite3"` (its state
is a SQLite database).

Measured wall-clock per process from spawn to exit, rounds interleaved, median of each
side: `edgefleetctl --help`, `edgefleetctl devices list` against a running controller on
loopback (with one enrolled device), `edgefleet-agent --help` and `edgefleet-agent
status` on that device's data directory. Target (issue 21): each ≤ 1.5× its baseline.
Which modules each command loads is a test (tests/test_cli_structure.py).

The package's bytecode is compiled first, as pip does when it installs a wheel: with
``PYTHONDONTWRITEBYTECODE`` set (as on the CI machines) an editable install would
otherwise compile every module of ours from source at every start, 30-40 ms of the
figures that no installed gateway or workstation pays.
"""

from __future__ import annotations

import argparse
import compileall
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import edgefleet
from tests.harness import BIN, Fleet

TARGET = 1.5


def _elapsed(command: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    python = sys.executable
    package = Path(edgefleet.__file__).parent
    for folder in (package, package / "agent", package / "controller"):  # symbolic links
        compileall.compile_dir(folder, quiet=1)
    with tempfile.TemporaryDirectory(prefix="edgefleet-cli-") as tmp:
        fleet = Fleet(Path(tmp))
        try:
            fleet.init_controller()
            fleet.start_controller()
            fleet.enroll("gw", {"site": "bench"})
            ctl = [str(BIN / "edgefleetctl"), "--config", str(fleet.operator_config)]
            ctl += ["--controller", fleet.sync_address]
            agent = [str(BIN / "edgefleet-agent"), "--data-dir", str(fleet.agent_dir("gw"))]
            cases = {
                "import grpc": [python, "-c", "import grpc"],
                "edgefleetctl --help": [*ctl, "--help"],
                "edgefleetctl devices list": [*ctl, "devices", "list"],
                "import sqlite3": [python, "-c", "import sqlite3"],
                "edgefleet-agent --help": [*agent, "--help"],
                "edgefleet-agent status": [*agent, "status"],
            }
            for command in cases.values():  # warm the page cache and .pyc files
                _elapsed(command)
            times: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(args.rounds):
                for name, command in cases.items():
                    times[name].append(_elapsed(command))
        finally:
            fleet.stop_all()
    median = {name: statistics.median(values) for name, values in times.items()}
    baselines = {"edgefleetctl": "import grpc", "edgefleet-agent": "import sqlite3"}
    rows = []
    for name, value in median.items():
        tool = name.split()[0]
        if tool in baselines:
            base = median[baselines[tool]]
            rows.append((name, value, baselines[tool], base, value / base))
    if args.json:
        print(json.dumps({"rounds": args.rounds, "median_seconds": median}))
    print(f"medians of {args.rounds} rounds, interleaved; target ≤ {TARGET}× the baseline")
    print(f"{'command':<28}{'ms':>8}   {'baseline':<16}{'ms':>8}{'ratio':>8}")
    for name, value, base_name, base, ratio in rows:
        mark = "" if ratio <= TARGET else "  over target"
        print(
            f"{name:<28}{value * 1000:>8.0f}   {base_name:<16}{base * 1000:>8.0f}"
            f"{ratio:>7.2f}×{mark}"
        )


if __name__ == "__main__":
    main()
