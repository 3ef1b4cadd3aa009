"""Review hole L12: ordinary mistakes on the command line printed Python tracebacks (a bad
--ttl, an id out of range, an output path in a missing folder) and --ttl 0 silently meant
the default. Each mistake now ends in one line naming it and a non-zero exit."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.bundled import bundled_model_path
from tests.harness import BIN, Fleet

pytestmark = pytest.mark.integration

MISTAKES = [
    (("token", "create", "--ttl", "0"), "--ttl: 0 is not 1 or more"),
    (("token", "create", "--ttl", "-5"), "--ttl: -5 is not 1 or more"),
    (("token", "create", "--ttl", "soon"), "'soon' is not a whole number"),
    (("rollout", "status", "-1"), "rollout_id: -1 is not 1 or more"),
    (("rollout", "status", "9" * 25), "is too large"),
    (("audit", "export", "--out", "/nonexistent/dir/x.jsonl"), "does not exist"),
    (("audit", "export", "--out", "/tmp"), "/tmp is a folder"),
    (("bundle", "export", "x@1", "--out", "/nonexistent/b.tar"), "does not exist"),
    (("models", "publish", "/nonexistent.gguf", "--name", "a", "--version", "1"), "cannot read"),
    (("audit", "query", "--limit", "0"), "--limit must be between 1 and"),
    (("devices", "reject"), "devices reject needs a device id"),
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("cli"))
    try:
        fleet.init_controller()
        fleet.start_controller()
        yield fleet
    finally:
        fleet.stop_all()


@pytest.mark.parametrize("args, reason", MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_a_mistake_is_one_line_and_a_non_zero_exit(
    fleet: Fleet, args: tuple[str, ...], reason: str
) -> None:
    result = fleet.ctl(*args, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("edgefleetctl") and reason in last, result.stderr


def test_agent_mistakes_are_one_line_too(tmp_path: Path) -> None:
    """The agent's command line: bad numbers and output paths, a data dir never enrolled,
    a chat when no agent answers (at the address api.addr names: a port just closed)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = "{}:{}".format(*closed.getsockname())
    (tmp_path / "api.addr").write_text(nobody + "\n")
    for args, reason in (
        (("bench", "--threads", "0"), "--threads: 0 is not 1 or more"),
        (("audit", "export", "--out", "/nonexistent/x"), "does not exist"),
        (("status",), "not enrolled"),
        (("run",), "this device is not enrolled: run `edgefleet-agent enroll`"),
        (
            ("chat", "m", "hi"),
            f"not reachable at http://{nobody}/v1/chat/completions ([Errno 111] "
            "Connection refused): is `edgefleet-agent run` running on this data directory?",
        ),
    ):
        result = subprocess.run(
            [str(BIN / "edgefleet-agent"), "--data-dir", str(tmp_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert reason in result.stderr.strip().splitlines()[-1], result.stderr


def test_a_truncated_model_is_refused_at_publish(fleet: Fleet, tmp_path: Path) -> None:
    """A 5 MB prefix of the bundled model (a copy cut short) was published, signed and sent
    to devices, whose smoke test alone caught it. Its tensors end past the file's end."""
    prefix = tmp_path / "cut.gguf"
    with bundled_model_path().open("rb") as whole:
        prefix.write_bytes(whole.read(5 << 20))
    result = fleet.ctl(
        "models", "publish", str(prefix), "--name", "cut", "--version", "1", check=False
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert (
        "GGUF file is truncated: its tensors end at byte 98362432, the file at byte 5242880" in last
    )


def test_the_wrong_port_is_named_with_the_fix(fleet: Fleet) -> None:
    """An operator who points at the enrollment, health or metrics port, or at a port where
    nothing listens, is told which it is and where to go, in one line (and gRPC's own
    handshake log stays out of the way)."""
    sync, enroll, health, metrics = (fleet.controller_dir / "serve.addr").read_text().split()
    where = "operators connect to the sync address `serve` logs and writes first in serve.addr"
    not_tls = "does not answer TLS: it is not the controller's operator port"
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nothing = "{}:{}".format(*closed.getsockname())
    for address, reason in (
        (enroll, f"{enroll} is the controller's enrollment port, where devices join: {where}"),
        (health, f"{health} {not_tls}"),
        (metrics, f"{metrics} {not_tls}"),
        (nothing, f"nothing listens at {nothing} (connection refused): start the controller"),
    ):
        result = fleet.ctl("--controller", address, "devices", "list", check=False)
        assert result.returncode == 1, result.stderr
        assert result.stderr.count("\n") == 1 and reason in result.stderr, result.stderr
    assert fleet.ctl("--controller", sync, "devices", "list").returncode == 0


def test_serve_on_a_folder_init_did_not_make(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "edgefleetctl"), "serve", "--data-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"edgefleetctl: error: {tmp_path / 'none'} is not a controller data directory: "
        f"run `edgefleetctl init --data-dir {tmp_path / 'none'}` first"
    )
