"""The process harness: a controller and agents as real processes on loopback, driven
through their command lines and APIs. `make demo` (demo.py), the integration tests and
the benchmarks all use it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from edgefleet.controller.store.database import Database

BIN = Path(sys.executable).parent
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """Poll ``probe`` until it returns something other than None, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class Fleet:
    """A controller and agents as child processes under one directory."""

    def __init__(self, root: Path, echo: bool = False) -> None:
        self.root = root
        self.echo = echo
        self.controller_dir = root / "controller"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.fingerprint = ""
        self.sync_address = ""
        self.enroll_address = ""
        self.health_address = ""  # plaintext gRPC health checking
        self.metrics_address = ""  # Prometheus /metrics
        self.agent_env: dict[str, str] = {}  # settings every agent started here gets
        self.controller_env: dict[str, str] = {}  # and the controller

    # --- commands ---------------------------------------------------------------------
    def run(
        self,
        tool: str,
        *args: str,
        check: bool = True,
        quiet: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a CLI command to completion."""
        command = [str(BIN / tool), *args]
        if self.echo and not quiet:
            print(f"  $ {tool} {' '.join(args)}")
        env = {**os.environ, "EDGEFLEETCTL_CONFIG": str(self.operator_config), **(extra_env or {})}
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def ctl(
        self, *args: str, check: bool = True, quiet: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run an `edgefleetctl` operator command against the running controller."""
        return self.run(
            "edgefleetctl", "--controller", self.sync_address, *args, check=check, quiet=quiet
        )

    def ctl_as(self, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """An `edgefleetctl` command as the operator whose credential ``config`` names."""
        return self.run(
            "edgefleetctl", "--config", str(config), "--controller", self.sync_address, *args,
            check=False, extra_env={"EDGEFLEETCTL_CONFIG": str(config)},
        )  # fmt: skip

    def agent(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run an `edgefleet-agent` command on one agent's data directory, with the settings
        its service runs with (``agent_env``)."""
        return self.run(
            "edgefleet-agent",
            "--data-dir",
            str(self.agent_dir(name)),
            *args,
            check=check,
            extra_env=self.agent_env,
        )

    @property
    def operator_config(self) -> Path:
        return self.controller_dir / "operators" / "admin" / "edgefleetctl.toml"

    def agent_dir(self, name: str) -> Path:
        return self.root / f"agent-{name}"

    # --- lifecycle --------------------------------------------------------------------
    def init_controller(self) -> str:
        """`edgefleetctl init`; return the root fingerprint."""
        out = self.run("edgefleetctl", "init", "--data-dir", str(self.controller_dir)).stdout
        self.fingerprint = next(
            line.split(":", 1)[1].strip()
            for line in out.splitlines()
            if line.startswith("root fingerprint")
        )
        return self.fingerprint

    def _spawn(
        self, name: str, command: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        environment = {**os.environ, **(env or {})}
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
        self.processes[name] = process
        return process

    def start_controller(self) -> None:
        """`edgefleetctl serve` on loopback (the same sync and enrollment ports on a
        restart: agents dial them); wait until it listens.

        The first start lets the kernel pick the ports (port 0; the controller writes the
        ones it got): a port picked beforehand could be taken by someone else before the
        controller binds it. Health and metrics take new ones at every start. On a restart,
        a loopback port can be held for a moment by another process's outgoing connection
        (the kernel hands it out as a source port): the start is tried again, three times.
        """
        for attempt in range(3):
            try:
                self._start_controller_once()
                return
            except RuntimeError as e:
                if "Address already in use" not in str(e) or attempt == 2:
                    raise
                time.sleep(1)

    def _start_controller_once(self) -> None:
        addr_file = self.controller_dir / "serve.addr"
        addr_file.unlink(missing_ok=True)
        any_port = "127.0.0.1:0"
        process = self._spawn(
            "controller",
            [
                str(BIN / "edgefleetctl"),
                "serve",
                "--data-dir",
                str(self.controller_dir),
                "--listen",
                self.sync_address or any_port,
                "--enroll-listen",
                self.enroll_address or any_port,
                "--health-listen",
                any_port,
                "--metrics-listen",
                any_port,
            ],
            self.controller_env,
        )

        def listening() -> list[str] | None:
            if process.poll() is not None:
                raise RuntimeError(f"controller exited: {self.log('controller')[-2000:]}")
            lines = addr_file.read_text().split() if addr_file.exists() else []
            return lines if len(lines) == 4 else None

        addresses = wait_for("the controller", listening, 30)
        self.sync_address, self.enroll_address, self.health_address, self.metrics_address = (
            addresses
        )

    def start_agent(
        self, name: str, sync_interval: int = 2, env: dict[str, str] | None = None
    ) -> str:
        """`edgefleet-agent run` with its API on a free loopback port; return that address."""
        addr_file = self.agent_dir(name) / "api.addr"
        addr_file.unlink(missing_ok=True)
        process = self._spawn(
            f"agent-{name}",
            [
                str(BIN / "edgefleet-agent"),
                "--data-dir",
                str(self.agent_dir(name)),
                "run",
                "--api-listen",
                "127.0.0.1:0",
                "--sync-interval",
                str(sync_interval),
            ],
            {**self.agent_env, **(env or {})},
        )

        def listening() -> str | None:
            if process.poll() is not None:
                raise RuntimeError(f"agent exited: {self.log(f'agent-{name}')[-2000:]}")
            return addr_file.read_text().strip() or None if addr_file.exists() else None

        return wait_for(f"agent {name}", listening, 30)

    def stop(self, name: str) -> int:
        """SIGTERM one process and wait for it."""
        process = self.processes.pop(name)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def kill(self, name: str) -> None:
        """SIGKILL one process (no chance to clean up), as a power cut would."""
        process = self.processes.pop(name)
        if process.poll() is None:
            process.kill()
            process.wait()

    def stop_all(self) -> None:
        """Stop every process this fleet started."""
        for name in list(self.processes):
            self.stop(name)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def controller_database(self) -> Database:
        """The controller's own SQLite database, opened beside the running controller
        (close it with ``dispose()``); for tests that look at or tamper with its rows."""
        from edgefleet.controller.store.database import Database

        return Database(f"sqlite:///{self.controller_dir / 'controller.db'}")

    # --- conveniences -----------------------------------------------------------------
    def enroll(self, name: str, labels: dict[str, str]) -> str:
        """Create a token with ``labels`` and enroll agent ``name``; return its device id."""
        label_args = [a for k, v in labels.items() for a in ("--label", f"{k}={v}")]
        token = self.ctl("token", "create", *label_args).stdout.strip()
        out = self.agent(
            name,
            "enroll",
            "--controller",
            self.enroll_address,
            "--token",
            token,
            "--root-fingerprint",
            self.fingerprint,
        ).stdout
        return out.split()[2].rstrip(";")

    def app_token(self, name: str, subject: str, *models: str) -> str:
        """`edgefleet-agent tokens create`: a bearer token for an application on agent ``name``."""
        args = [a for m in models for a in ("--model", m)]
        return self.agent(name, "tokens", "create", subject, *args).stdout.strip()

    def devices(self) -> list[dict[str, Any]]:
        """`edgefleetctl devices list --json`."""
        return list(json.loads(self.ctl("devices", "list", "--json", quiet=True).stdout))


def process_rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` alone, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` and of every process under it (an agent and its model
    runner), in MiB."""
    total = process_rss_mib(pid)
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            with contextlib.suppress(FileNotFoundError):  # it ended meanwhile
                total += tree_rss_mib(int(child))
    return total


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(
    url: str, body: dict[str, Any] | None = None, timeout: float = 120, token: str = ""
) -> Any:
    """GET (or POST ``body``) with an optional bearer token, and decode JSON."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return json.loads(response.read())


def active_models(api: str, token: str) -> list[dict[str, Any]] | None:
    """The agent's /v1/models list, or None while it has no active model."""
    try:
        data = http_json(f"http://{api}/v1/models", timeout=5, token=token)["data"]
    except OSError:
        return None
    return list(data) or None


def run_script(
    script: str, cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run a bash script (a README's or the runbook's blocks) in its own process group:
    whatever ends it, a timeout too, takes the processes it started in the background
    with it, so no controller or agent is left holding the default ports."""
    bash = subprocess.Popen(
        ["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = bash.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(bash.pid, signal.SIGKILL)
        bash.wait()
    return subprocess.CompletedProcess(bash.args, bash.returncode, stdout, stderr)
