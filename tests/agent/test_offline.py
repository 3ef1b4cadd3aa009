"""Maximum offline age: serve-and-warn by default, refuse in strict mode, audited once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edgefleet.agent.app.database import AgentDatabase
from edgefleet.agent.audit.log import AuditLog
from edgefleet.agent.registry.offline import OfflineGuard, mark_fresh
from edgefleet.errors import StaleTrustError

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _guard(tmp_path: Path, mode: str) -> tuple[OfflineGuard, AuditLog, AgentDatabase]:
    db = AgentDatabase(tmp_path / "agent.db")
    audit = AuditLog(db, "dev-x")
    return OfflineGuard(db, audit, max_days=30, mode=mode), audit, db


def _stale_records(audit: AuditLog) -> list[dict[str, object]]:
    audit.flush()
    return [r for r in map(json.loads, audit.all_records()) if r["action"] == "trust.stale"]


def test_within_the_offline_age_nothing_happens(tmp_path: Path) -> None:
    """Fresh 29 days ago with a 30-day limit: no warning, no refusal."""
    guard, audit, db = _guard(tmp_path, "strict")
    mark_fresh(db, NOW - timedelta(days=29))
    guard.check(NOW)
    assert _stale_records(audit) == []
    db.dispose()


def test_serve_mode_keeps_serving_and_audits_once(tmp_path: Path) -> None:
    """Past the limit the default mode serves on and audits one `warned` record."""
    guard, audit, db = _guard(tmp_path, "serve")
    mark_fresh(db, NOW - timedelta(days=31))
    guard.check(NOW)
    guard.check(NOW + timedelta(hours=1))
    records = _stale_records(audit)
    assert [r["outcome"] for r in records] == ["warned"]
    db.dispose()


def test_strict_mode_refuses_until_fresh_metadata(tmp_path: Path) -> None:
    """Strict mode raises StaleTrustError with the date; fresh metadata lifts it."""
    guard, audit, db = _guard(tmp_path, "strict")
    mark_fresh(db, NOW - timedelta(days=31))
    with pytest.raises(StaleTrustError, match="no fresh trust metadata since 2026-05-01"):
        guard.check(NOW)
    assert [r["outcome"] for r in _stale_records(audit)] == ["refused"]
    mark_fresh(db, NOW)
    fresh_guard = OfflineGuard(db, audit, max_days=30, mode="strict")
    fresh_guard.check(NOW)
    db.dispose()
