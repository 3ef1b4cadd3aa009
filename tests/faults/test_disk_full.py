"""A device whose disk fills up: its data directory on a small tmpfs, filled during a model
download, during audit appends and during an activation. Each ends in a clear error, the
device keeps its state (the version serving, its audit chain, its blobs), and everything
resumes when space returns. Needs root (to mount the tmpfs); skips visibly otherwise."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.bundled import bundled_model_path
from tests.ggufkit import write_tiny_gguf
from tests.harness import Fleet, active_models, http_json, wait_for
from tests.integration.fleets import active_versions, models, status

pytestmark = [pytest.mark.integration, pytest.mark.model]

DISK = "420m"  # the bundled model (98 MB) and a 48 MB one, each with the 256 MiB reserve kept free
QUESTION = [{"role": "user", "content": "Say hi"}]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK mounted where the fleet keeps agent gw's data directory."""
    where = tmp_path / "agent-gw"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the agent's data directory needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path) -> Path:
    """Write a file until the disk is full; return it (remove it to free the space)."""
    filler = disk / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * (1 << 20))
            out.flush()
    return filler


def _full_disk_error(fleet: Fleet) -> str | None:
    """The device's last error as the controller has it, once it names the full disk."""
    error = fleet.devices()[0]["last_error"]
    return error if "No space left" in error or "disk is full" in error else None


def _where_it_waits(fleet: Fleet, name: str) -> str:
    """Ask a stuck agent for its stacks (SIGUSR1): the asyncio tasks' awaits first (where a
    pass waits), then the log before the dump."""
    before = len(fleet.log(name))
    fleet.processes[name].send_signal(signal.SIGUSR1)
    time.sleep(2)
    log = fleet.log(name)
    dump = log[before:]
    tasks = dump[dump.find("--- ") :] if "--- " in dump else dump[-6000:]
    return f"{tasks}\n--- log before the dump ---\n{log[:before][-8000:]}"


def _ask(api: str, token: str) -> int:
    """One chat request: its HTTP status."""
    body = {"model": "smollm2", "messages": QUESTION, "max_tokens": 2}
    try:
        http_json(f"http://{api}/v1/chat/completions", body, token=token, timeout=60)
    except urllib.error.HTTPError as e:
        return e.code
    return 200


def test_a_full_disk_is_survived_and_recovered_from(tmp_path: Path, small_disk: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.agent_env["EDGEFLEET_AGENT_SMOKE_TEST"] = "false"  # the 48 MB model has no vocabulary
    try:
        fleet.init_controller()
        fleet.start_controller()
        fleet.ctl(
            "models", "publish", str(bundled_model_path()), "--name", "smollm2", "--version", "1.0"
        )
        fleet.enroll("gw", {"site": "lab"})
        token = fleet.app_token("gw", "app:tests", "smollm2*")
        fleet.ctl("rollout", "create", "smollm2@1.0", "--selector", "site=lab")
        slow = {"EDGEFLEET_AGENT_BANDWIDTH_LIMIT_BYTES_PER_SECOND": str(4 << 20)}
        api = fleet.start_agent("gw", sync_interval=1, env=slow)
        wait_for("smollm2 serving", lambda: active_models(api, token), 120)
        assert _ask(api, token) == 200

        # 1. The disk fills up while a model downloads: the download stops with a clear
        #    error; nothing half-written is installed; the version serving is kept.
        bulk = write_tiny_gguf(tmp_path / "bulk.gguf", rows=3_000_000)
        fleet.ctl("models", "publish", str(bulk), "--name", "bulk", "--version", "1")
        # A pin, not a rollout: a rollout rightly fails a device that refuses a download
        # for want of disk (and halts), which would race step 3 (space returning).
        fleet.ctl("rollout", "pin", "bulk@1", "--selector", "site=lab")
        partial = small_disk / "blobs" / "partial"
        wait_for("the download to start", lambda: any(partial.glob("*")) or None, 60)
        filler = _fill(small_disk)
        full = wait_for("the device to report the full disk", lambda: _full_disk_error(fleet), 60)
        assert "disk:          0 MiB free" in status(fleet, "gw")
        assert "bulk@1" not in models(fleet, "gw") and "smollm2@1.0" in active_versions(fleet, "gw")

        # 2. Audit appends fail: no inference goes unaudited (503 audit_unavailable).
        statuses = [_ask(api, token) for _ in range(6)]
        assert 503 in statuses, (statuses, full)

        # 3. Space returns: the download resumes from its verified chunks, inference and
        #    its audit records resume, the chain is intact and lost nothing.
        filler.unlink()
        try:
            wait_for(
                "bulk@1 active",
                lambda: True if "bulk@1" in active_versions(fleet, "gw") else None,
                120,
            )
        except TimeoutError:  # where does it wait? its tasks' awaits, then its log
            raise AssertionError(_where_it_waits(fleet, "agent-gw")) from None
        wait_for("inference again", lambda: True if _ask(api, token) == 200 else None, 60)

        # 4. Full again during an activation (a bundle import on the stopped device): it
        #    fails with one line, the serving version stays; with space it goes through.
        fleet.stop("agent-gw")
        fleet.ctl(
            "models", "publish", str(bundled_model_path()), "--name", "smollm2", "--version", "1.1"
        )
        bundle = tmp_path / "smollm2-1.1.bundle"
        fleet.ctl("bundle", "export", "smollm2@1.1", "--out", str(bundle))
        filler = _fill(small_disk)
        refused = fleet.agent("gw", "models", "import", str(bundle), check=False)
        assert refused.returncode == 1, refused.stderr
        assert "disk is full" in refused.stderr or "no space left" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        filler.unlink()  # (with no room at all SQLite cannot even open the database to read)
        assert "smollm2@1.0" in active_versions(fleet, "gw")  # the failed import changed nothing
        fleet.agent("gw", "models", "import", str(bundle))
        assert "smollm2@1.1" in active_versions(fleet, "gw")

        verified = fleet.agent("gw", "models", "verify", check=False)
        assert verified.returncode == 0, verified.stdout
        export = tmp_path / "device-audit.jsonl"
        fleet.agent("gw", "audit", "export", "--out", str(export))
        checked = fleet.run(
            "edgefleetctl",
            "audit",
            "verify",
            str(export),
            "--root-fingerprint",
            fleet.fingerprint,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout
        # Every request, served or refused, is in the chain: none was lost to the full disk.
        records = export.read_text().count('"action":"inference.chat"')
        assert records >= 1 + len(statuses) + 1, records
    finally:
        fleet.stop_all()
