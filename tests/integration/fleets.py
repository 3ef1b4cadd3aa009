"""Handles on running fleets that integration tests share."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.ggufkit import write_tiny_gguf
from tests.harness import Fleet, http_json, wait_for


@dataclass(frozen=True)
class ModelFleet:
    """A running controller and agent gw1 serving the bundled model, with an app token."""

    fleet: Fleet
    device_id: str
    api: str
    token: str

    def post(self, path: str, body: dict[str, Any], token: str | None = None) -> Any:
        """POST JSON to the agent's API with the app token (or the given one)."""
        return http_json(
            f"http://{self.api}{path}", body, token=self.token if token is None else token
        )


def status(fleet: Fleet, name: str) -> str:
    """`edgefleet-agent status` output."""
    return fleet.agent(name, "status").stdout


def models(fleet: Fleet, name: str) -> str:
    """`edgefleet-agent models list` output."""
    return fleet.agent(name, "models", "list").stdout


def active_versions(fleet: Fleet, name: str) -> set[str]:
    """NAME@VERSION of the active versions of agent ``name`` (`models list -o json`)."""
    installed = json.loads(fleet.agent(name, "models", "list", "-o", "json").stdout)
    return {f"{m['name']}@{m['version']}" for m in installed if m["active"]}


def serving(fleet: Fleet, name: str, ref: str) -> Callable[[], bool | None]:
    """A probe for `wait_for`: True once agent ``name`` has ``ref`` active."""
    return lambda: True if ref in active_versions(fleet, name) else None


def agent_actions(fleet: Fleet, name: str) -> list[tuple[str, str, str]]:
    """(action, target, outcome) of every record in the agent's audit log."""
    from edgefleet.agent.app.state import LocalState

    state = LocalState.open(fleet.agent_dir(name))
    try:
        records = [json.loads(r) for r in state.audit.all_records()]
    finally:
        state.db.dispose()
    return [(r["action"], r["target"], r["outcome"]) for r in records]


def publish_tiny(fleet: Fleet, version: str, seed: int, rows: int = 8) -> Path:
    """Publish a tiny GGUF file as tiny@VERSION."""
    path = write_tiny_gguf(fleet.root / f"tiny-{version}.gguf", seed=seed, rows=rows)
    fleet.ctl("models", "publish", str(path), "--name", "tiny", "--version", version)
    return path


def roll_out_and_wait_active(fleet: Fleet, version: str) -> None:
    """Assign tiny@VERSION to site=lab and wait until agent gw serves it."""
    fleet.ctl("rollout", "create", f"tiny@{version}", "--selector", "site=lab")
    wait_for(
        f"tiny@{version} active",
        lambda: True if f"tiny@{version}" in active_versions(fleet, "gw") else None,
        30,
    )


@contextmanager
def one_agent_fleet(root: Path, **controller_env: str) -> Iterator[tuple[Fleet, str]]:
    """A fresh controller (with these environment settings) and one running agent gw
    (site=lab, syncing every second) with nothing rolled out; the device id with it."""
    fleet = Fleet(root)
    # Tiny test models have weights but no vocabulary: llama.cpp cannot load them.
    fleet.agent_env["EDGEFLEET_AGENT_SMOKE_TEST"] = "false"
    fleet.controller_env.update(controller_env)
    try:
        fleet.init_controller()
        fleet.start_controller()
        device_id = fleet.enroll("gw", {"site": "lab"})
        fleet.start_agent("gw", sync_interval=1)
        yield fleet, device_id
    finally:
        fleet.stop_all()
