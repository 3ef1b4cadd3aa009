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
