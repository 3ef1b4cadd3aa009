"""The output contract of both command-line tools (docs/cli.md), through the real CLIs
against a real controller: every JSON and YAML document loads back with its documented
keys, tables are aligned under their headers, `-o name` prints the id alone."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.harness import Fleet
from tests.integration.fleets import publish_tiny

pytestmark = pytest.mark.integration

DEVICE_KEYS = {
    "device_id", "hostname", "labels", "last_seen", "agent_version", "models",
    "audit_stored_seq", "last_error", "bench", "state", "key_fingerprint", "audit_alert",
    "downloads", "data_used_today", "daily_data_budget", "resources", "health", "stale",
    "audit_head_seq", "assignments", "enrolled_from",
}  # fmt: skip
ROLLOUT_KEYS = {
    "id", "name", "version", "selector", "state", "reason", "current_wave", "waves",
    "strategy", "created_by", "created_at", "targets",
}  # fmt: skip
STRATEGY_KEYS = {
    "canary", "waves", "soak_seconds", "max_failures", "max_error_rate", "min_requests",
    "min_speed_ratio",
}  # fmt: skip
LOCAL_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d \S+ \(\d+[smhd] ago\)$")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, str]]:
    fleet = Fleet(tmp_path_factory.mktemp("output"))
    try:
        fleet.init_controller()
        fleet.start_controller()
        device_id = fleet.enroll("gw", {"site": "lab", "floor": "2"})
        yield fleet, device_id
    finally:
        fleet.stop_all()


def _both(fleet: Fleet, *args: str) -> Any:
    """The JSON document, after checking that YAML says the same."""
    as_json = json.loads(fleet.ctl(*args, "-o", "json").stdout)
    assert yaml.safe_load(fleet.ctl(*args, "-o", "yaml").stdout) == as_json
    return as_json


def _columns(table: str) -> list[int]:
    """Where each header starts; every row's cells start there too (checked by caller)."""
    header = table.splitlines()[0]
    return [m.start() for m in re.finditer(r"(?:^|(?<=  ))\S", header)]


def test_devices(fleet: tuple[Fleet, str]) -> None:
    fleet_, device_id = fleet
    [device] = _both(fleet_, "devices", "list")
    assert set(device) == DEVICE_KEYS and device["device_id"] == device_id
    assert device["labels"] == {"site": "lab", "floor": "2"}
    assert _both(fleet_, "devices", "show", device_id) == device
    assert (
        fleet_.ctl("devices", "list", "--json").stdout
        == fleet_.ctl("devices", "list", "-o", "json").stdout
    )

    table = fleet_.ctl("devices", "list").stdout
    header, row = table.splitlines()
    assert header.split() == ["DEVICE", "STATE", "LABELS", "LAST", "SEEN", "MODELS", "NOTES"]
    starts = _columns(table)
    assert row[starts[0] :].startswith(device_id)
    assert row[starts[2] :].startswith("floor=2,site=lab")
    wide = fleet_.ctl("devices", "list", "-o", "wide").stdout.splitlines()[0]
    assert "HOSTNAME" in wide and "DISK FREE" in wide
    assert fleet_.ctl("devices", "list", "--selector", "site=elsewhere").stdout == ""


def test_rollouts(fleet: tuple[Fleet, str]) -> None:
    fleet_, device_id = fleet
    publish_tiny(fleet_, "1", seed=1)
    created = fleet_.ctl("rollout", "create", "tiny@1", "--selector", "site=lab", "-o", "name")
    rollout_id = int(created.stdout)  # the id alone
    [listed] = _both(fleet_, "rollout", "list")
    assert set(listed) == ROLLOUT_KEYS and listed["id"] == rollout_id
    assert set(listed["strategy"]) == STRATEGY_KEYS
    status = _both(fleet_, "rollout", "status", str(rollout_id))
    assert isinstance(status, dict) and status["targets"][0]["device_id"] == device_id
    table = fleet_.ctl("rollout", "list").stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "MODEL", "STATE", "WAVE"]
    created_at = table[1][_columns("\n".join(table))[5] :].split("  ")[0]
    assert LOCAL_TIME.match(created_at), created_at


def test_audit_records(fleet: tuple[Fleet, str]) -> None:
    fleet_, _ = fleet
    records = _both(fleet_, "audit", "query", "--limit", "5")
    assert isinstance(records, list) and records
    assert {"time", "device", "seq", "actor", "action", "target", "outcome"} <= set(records[0])
    verbatim = fleet_.ctl("audit", "query", "--limit", "5", "--json").stdout.splitlines()
    assert [json.loads(line) for line in verbatim] == records


def test_agent_documents(fleet: tuple[Fleet, str]) -> None:
    fleet_, device_id = fleet
    status = json.loads(fleet_.agent("gw", "status", "-o", "json").stdout)
    assert status["device_id"] == device_id
    assert set(status) == {
        "device_id", "controller", "last_sync", "last_error", "disk", "trust", "audit",
        "downloads", "data_used_today", "models",
    }  # fmt: skip
    assert set(status["trust"]) == {
        "root_version", "timestamp_version", "targets_version", "fresh_at",
    }  # fmt: skip
    as_yaml = yaml.safe_load(fleet_.agent("gw", "status", "-o", "yaml").stdout)
    assert {**as_yaml, "disk": None} == {**status, "disk": None}  # free space moves
    assert json.loads(fleet_.agent("gw", "models", "list", "-o", "json").stdout) == []

    token = fleet_.agent("gw", "tokens", "create", "app:probe", "-o", "name").stdout
    assert re.fullmatch(r"\S+\n", token)  # the secret alone
    [listed] = json.loads(fleet_.agent("gw", "tokens", "list", "-o", "json").stdout)
    assert listed["subject"] == "app:probe"
    assert listed["roles"] == [{"role": "inference", "models": ["*"]}]
    table = fleet_.agent("gw", "tokens", "list").stdout.splitlines()
    assert table[0].split() == ["TOKEN", "ID", "SUBJECT", "ROLES"]


@pytest.mark.parametrize("tool", ["edgefleetctl", "edgefleet-agent"])
def test_version(fleet: tuple[Fleet, str], tool: str) -> None:
    fleet_, _ = fleet
    assert re.fullmatch(rf"{tool} \d+\.\d+\.\d+\n", fleet_.run(tool, "--version").stdout)


def test_models_wait_times_out_in_one_line(fleet: tuple[Fleet, str]) -> None:
    """`edgefleet-agent models wait` (what scripts use instead of grepping `models list`):
    exit 1 and one line when the version is not active in time."""
    fleet_, _ = fleet
    result = fleet_.agent("gw", "models", "wait", "tiny@9", "--timeout", "1", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "edgefleet-agent: error: timed out after 1 s waiting for tiny@9 to be active "
        "(not assigned to this device yet?)"
    )


def test_models_list_and_show(fleet: tuple[Fleet, str]) -> None:
    """The catalog: each published version, its size and quantization, how many devices
    are assigned it (the device here never runs, so none runs it); `show` names them."""
    fleet_, device_id = fleet
    publish_tiny(fleet_, "3", seed=3)
    entries = {f"{e['name']}@{e['version']}": e for e in _both(fleet_, "models", "list")}
    assert set(entries["tiny@3"]) == {
        "name", "version", "sha256", "length", "quantization", "published_at", "running",
        "assigned",
    }  # fmt: skip
    assert entries["tiny@3"]["running"] == 0 and entries["tiny@3"]["assigned"] == 0
    assert entries["tiny@1"]["assigned"] == 1  # test_rollouts rolled it out to the device
    shown = _both(fleet_, "models", "show", "tiny@1")
    assert shown["assigned_to"] == [device_id] and shown["running_on"] == []
    table = fleet_.ctl("models", "list", "tiny").stdout.splitlines()
    assert table[0].split() == ["MODEL", "SIZE", "QUANT", "PUBLISHED", "RUNNING", "ASSIGNED"]
    assert [line.split()[0] for line in table[1:]] == ["tiny@3", "tiny@1"]  # newest first
    missing = fleet_.ctl("models", "show", "tiny@9", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "edgefleetctl: error: tiny@9 is not published"


def test_publish_shows_progress_as_asked(fleet: tuple[Fleet, str]) -> None:
    """`models publish`: a bar on a terminal, JSON progress lines with -o json (stdout:
    the published version alone), nothing when stderr is a file."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios

    from tests.ggufkit import write_tiny_gguf
    from tests.harness import BIN

    fleet_, _ = fleet
    model = write_tiny_gguf(fleet_.root / "progress.gguf", seed=5, rows=40_000)
    size = model.stat().st_size
    published = fleet_.ctl(
        "models", "publish", str(model), "--name", "bar", "--version", "1", "-o", "json"
    )
    assert json.loads(published.stdout)["length"] == size
    lines = [json.loads(line) for line in published.stderr.splitlines()]
    assert lines[-1] == {"progress": "bar@1", "done": size, "total": size, "unit": "B"}
    quiet = fleet_.ctl("models", "publish", str(model), "--name", "bar", "--version", "2")
    assert quiet.stderr == "" and quiet.stdout.startswith("published bar@2 ")

    main, terminal = pty.openpty()  # stderr on an 80-column terminal: the bar is drawn there
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    command = [str(BIN / "edgefleetctl"), "--config", str(fleet_.operator_config)]
    command += ["--controller", fleet_.sync_address, "models", "publish", str(model)]
    result = subprocess.run(
        [*command, "--name", "bar", "--version", "3"],
        stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=120,
    )  # fmt: skip
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    os.close(main)
    assert result.returncode == 0 and result.stdout.startswith("published bar@3 ")
    assert b"bar@3" in drawn and b"100%" in drawn, drawn[-500:]
    assert b"\r" in drawn and b"\\x0d" not in drawn  # drawn in place, not escaped


def test_status_watch_follows_a_download(fleet: tuple[Fleet, str]) -> None:
    """`edgefleet-agent status --watch` prints a download's percent, then the rate the
    download measured and the time left as it moves, until interrupted (exit 130, one
    line)."""
    import signal
    import subprocess
    import time

    from edgefleet.agent.app.database import AgentDatabase
    from edgefleet.agent.app.paths import AgentPaths
    from edgefleet.agent.sync.progress import STATE_KEY
    from tests.harness import BIN

    fleet_, _ = fleet
    db = AgentDatabase(AgentPaths(fleet_.agent_dir("gw")).database)

    def board(received: int, rate: int) -> None:
        entry = {"name": "tiny", "version": "9", "received": received, "total": 100 << 20}
        entry |= {"state": "downloading", "reason": "", "bytes_per_second": rate}
        db.set_state(STATE_KEY, json.dumps([entry]))

    board(10 << 20, 0)
    # Ctrl-C on a terminal: SIGINT as a foreground command receives it. Under a suite run
    # as a background job (`make test &`) SIGINT is inherited ignored, and an interpreter
    # started that way never turns it into KeyboardInterrupt.
    watch = subprocess.Popen(
        [str(BIN / "edgefleet-agent"), "--data-dir", str(fleet_.agent_dir("gw")), "status",
         "--watch"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        time.sleep(2.5)
        board(60 << 20, 4 << 20)  # 40 MiB left at 4 MiB/s
        time.sleep(2.5)
    finally:
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=30)
        db.set_state(STATE_KEY, "[]")
        db.dispose()
    assert "tiny@9 downloading 10 %" in out
    assert "tiny@9 downloading 60 %, 4.0 MiB/s, ETA 10s" in out, out
    assert watch.returncode == 130 and err.strip().endswith("edgefleet-agent: interrupted")


def test_bundle_export_reports_progress_with_o_json(fleet: tuple[Fleet, str]) -> None:
    fleet_, _ = fleet
    out = fleet_.root / "tiny-1.bundle"
    exported = fleet_.ctl("bundle", "export", "tiny@1", "--out", str(out), "-o", "json")
    document = json.loads(exported.stdout)
    assert document["file"] == str(out) and document["model"] == "tiny@1"
    last = json.loads(exported.stderr.splitlines()[-1])
    assert last == {
        "progress": "tiny@1", "done": document["length"], "total": document["length"], "unit": "B"
    }  # fmt: skip
    quiet = fleet_.ctl("bundle", "export", "tiny@1", "--out", str(out))
    assert quiet.stderr == "" and quiet.stdout.startswith(f"wrote {out}: tiny@1")


def test_bundle_import_reports_progress_with_o_json(fleet: tuple[Fleet, str]) -> None:
    """The device's side of an air-gapped install: `models import` reports the copy as
    progress lines with -o json and prints what it did."""
    fleet_, _ = fleet
    bundle = fleet_.root / "tiny-3.bundle"
    fleet_.ctl("bundle", "export", "tiny@3", "--out", str(bundle))
    imported = fleet_.agent("gw", "models", "import", str(bundle), "--no-activate", "-o", "json")
    document = json.loads(imported.stdout)
    assert document["model"] == "tiny@3" and document["already_installed"] is False
    assert document["activated"] is False
    last = json.loads(imported.stderr.splitlines()[-1])
    assert last["progress"] == "tiny@3" and last["done"] == last["total"] > 0
