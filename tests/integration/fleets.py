"""Handles on running fleets that integration tests share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from demo import Fleet, http_json


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
