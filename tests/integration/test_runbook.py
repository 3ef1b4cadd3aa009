"""docs/operations.md, run as written on one machine: every ```sh block in order in one bash
session (except those marked as needing systemd, PostgreSQL or a big model), with its
paths moved under a temporary directory and its addresses to loopback. The runbook
cannot drift from the code."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

from tests.harness import run_script

pytestmark = [pytest.mark.integration, pytest.mark.model]

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs/operations.md"
NOT_RUN = "<!-- not run by the runbook test:"
DEFAULT_PORTS = (7443, 7444, 7445, 9464, 8080)
MOVED = ("/srv", "/var/lib", "/media/offline", "/backup")


def runbook_blocks() -> tuple[list[str], list[str]]:
    """(blocks to run, blocks marked as not runnable here)."""
    text = RUNBOOK.read_text()
    run: list[str] = []
    skipped: list[str] = []
    for match in re.finditer(r"```sh\n(.*?)```", text, re.DOTALL):
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1]
        (skipped if before.startswith(NOT_RUN) else run).append(match.group(1))
    return run, skipped


def on_this_machine(block: str, tmp: Path) -> str:
    for path in MOVED:
        block = re.sub(rf"(?<![\w/.]){re.escape(path)}(?=[/\s'\"]|$)", f"{tmp}{path}", block)
    return block.replace("0.0.0.0", "127.0.0.1").replace("ctl.example", "127.0.0.1")


def _busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_runbook_runs_as_written(tmp_path: Path) -> None:
    busy = [p for p in DEFAULT_PORTS if _busy(p)]
    if busy:
        pytest.skip(f"the runbook uses the default ports; in use here: {busy}")
    run, skipped = runbook_blocks()
    assert len(run) >= 10 and len(skipped) <= 6
    script = (
        "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n"
        f"mkdir -p {tmp_path}/srv {tmp_path}/var/lib\n"  # exist on a real machine
        + "\n".join(on_this_machine(block, tmp_path) for block in run)
    )
    env = {**os.environ, "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}"}
    env.pop("EDGEFLEETCTL_CONFIG", None)
    result = run_script(script, tmp_path, env, timeout=300)
    out = result.stdout
    (tmp_path / "runbook.out").write_text(out + result.stderr)  # for a reader of a failure
    assert result.returncode == 0, out[-4000:] + result.stderr[-4000:]
    assert "127.0.0.1:7445: SERVING" in out
    assert "published smollm2@1.1" in out
    assert "published root version 2" in out and "published root version 3" in out
    assert out.count("): verified") == 2  # the controller's export and the device's
    assert re.search(r"^dev-\S+\s+revoked\s", out, re.MULTILINE)  # devices list, after
    assert (tmp_path / "backup/controller.db").stat().st_size > 0
