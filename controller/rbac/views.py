"""What operator-management calls answer, as the operator client receives them (no server
code: the client imports this)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OperatorView:
    """One operator as `edgefleetctl operator list` shows it."""

    name: str
    role: str
    certificate_serial: str
    created_by: str
    created_at: str
