"""How long the device has gone without fresh trust metadata, and what that means.

Every sync that verifies an unexpired timestamp (or a bundle import that does) records
the moment. Past ``max_offline_days`` the agent either keeps serving from its last
verified state and warns ("serve", the default: a gateway must not stop because its
uplink did) or refuses inference until fresh metadata arrives ("strict"). The first
request past the limit is audited either way, once per stale period.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import structlog

from edgefleet.agent.app.database import AgentDatabase
from edgefleet.agent.audit.log import AuditLog
from edgefleet.audit import AuditEvent
from edgefleet.errors import MalformedInputError, StaleTrustError
from edgefleet.trust.metadata import format_time, parse_time

TRUST_FRESH_KEY = "trust_fresh_at"
REREAD_SECONDS = 5.0

log = structlog.get_logger("edgefleet.agent.registry.offline")


def mark_fresh(db: AgentDatabase, moment: datetime) -> None:
    """Record that trust metadata verified as fresh at ``moment``."""
    db.set_state(TRUST_FRESH_KEY, format_time(moment))


def fresh_at(db: AgentDatabase) -> datetime | None:
    """When trust metadata was last verified fresh (None if never recorded)."""
    value = db.get_state(TRUST_FRESH_KEY)
    if not value:
        return None
    try:
        return parse_time(value, TRUST_FRESH_KEY)
    except MalformedInputError:
        return None


class OfflineGuard:
    """Checked on every inference request; reads the database at most every few seconds."""

    def __init__(self, db: AgentDatabase, audit: AuditLog, max_days: int, mode: str) -> None:
        self.db = db
        self.audit = audit
        self.max_age = timedelta(days=max_days)
        self.strict = mode == "strict"
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._fresh: datetime | None = None
        self._reported: datetime | None = None

    def _fresh_at(self) -> datetime | None:
        with self._lock:
            if time.monotonic() - self._read_at > REREAD_SECONDS:
                self._fresh = fresh_at(self.db)
                self._read_at = time.monotonic()
            return self._fresh

    def fresh_at(self) -> datetime | None:
        """When trust metadata last verified as fresh (read at most every few seconds)."""
        return self._fresh_at()

    def check(self, now: datetime | None = None) -> None:
        """Warn (serve mode) or raise StaleTrustError (strict mode) past the limit."""
        fresh = self._fresh_at()
        now = now or datetime.now(UTC)
        if fresh is None or now - fresh <= self.max_age:
            return
        reason = (
            f"no fresh trust metadata since {format_time(fresh)} "
            f"(max_offline_days is {self.max_age.days})"
        )
        if self._reported != fresh:
            self._reported = fresh
            outcome = "refused" if self.strict else "warned"
            log.warning("trust.stale", reason=reason, mode="strict" if self.strict else "serve")
            self.audit.submit(
                AuditEvent("agent", "trust.stale", "metadata", outcome, {"reason": reason})
            )
        if self.strict:
            raise StaleTrustError(reason + "; offline_mode is strict: sync or import a bundle")
