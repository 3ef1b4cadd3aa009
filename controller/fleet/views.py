"""What the fleet's operator calls answer, as the operator client receives them (no
server code: the client imports this)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenView:
    """One enrollment token as `edgefleetctl token list` shows it."""

    token_id: str
    labels: dict[str, str]
    created_at: str
    expires_at: str
    state: str  # unused | used | expired | revoked
    device_id: str = ""


@dataclass(frozen=True)
class FleetSummary:
    """Counts over the devices a selector matches, as a console's fleet page heads them."""

    states: dict[str, int]
    classes: dict[str, int]  # active devices by device class
    stale: int
    tamper_alerts: int
    downloading: int
    audit_backlog: int  # records reported written and not yet stored, summed

    @property
    def total(self) -> int:
        """Every matched device, whatever its state."""
        return sum(self.states.values())
