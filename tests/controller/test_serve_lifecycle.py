"""`serve` is all or nothing: a listener that cannot open (here the metrics port is taken)
fails the start in one line and releases everything already started — the health
listener, the database — so the same process can start again on the same ports."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from edgefleet.controller.app.config import load_controller_config
from edgefleet.controller.app.service import serve
from edgefleet.errors import ConfigError
from tests.harness import Fleet, free_port


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_a_failed_start_releases_its_listeners(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.init_controller()
    health = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = "{}:{}".format(*taken.getsockname())
        config = load_controller_config(
            fleet.controller_dir,
            listen="127.0.0.1:0",
            enroll_listen="127.0.0.1:0",
            health_listen=f"127.0.0.1:{health}",
            metrics_listen=busy,
        )
        with pytest.raises(ConfigError) as failed:
            asyncio.run(serve(config))
    assert str(failed.value) == f"cannot listen on {busy}: Address already in use"
    assert _bindable(health)  # the health listener it had opened is closed again
    assert not (fleet.controller_dir / "serve.addr").exists()
