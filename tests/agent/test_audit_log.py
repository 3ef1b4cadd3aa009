"""The device's audit log: group commit keeps one gapless chain under concurrency."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edgefleet.agent.app.database import AgentDatabase
from edgefleet.agent.audit.log import AuditLog
from edgefleet.audit import AuditEvent, verify_chain
from edgefleet.errors import MalformedInputError


def test_concurrent_appends_form_one_intact_chain(tmp_path: Path) -> None:
    """Sixteen threads appending 200 events each give 3,200 records, numbered 1..3200, chained."""
    log = AuditLog(AgentDatabase(tmp_path / "a.db"), "dev-1")

    def work(worker: int) -> list[int]:
        return [log.append(AuditEvent(f"t{worker}", "x", "y", "ok", {"i": i})) for i in range(200)]

    with ThreadPoolExecutor(16) as pool:
        numbers = sorted(n for batch in pool.map(work, range(16)) for n in batch)
    assert numbers == list(range(1, 3201))
    assert verify_chain("dev-1", log.all_records()) == 3200


def test_chain_continues_across_restarts(tmp_path: Path) -> None:
    """A new writer (after a restart) continues the stored chain."""
    AuditLog(AgentDatabase(tmp_path / "a.db"), "dev-1").append(AuditEvent("a", "b", "c", "ok"))
    log = AuditLog(AgentDatabase(tmp_path / "a.db"), "dev-1")
    assert log.append(AuditEvent("a", "b", "c", "ok")) == 2
    assert verify_chain("dev-1", log.all_records()) == 2


def test_an_unencodable_event_fails_alone(tmp_path: Path) -> None:
    """An event that cannot be encoded is refused; the events around it are stored."""
    log = AuditLog(AgentDatabase(tmp_path / "a.db"), "dev-1")
    good = log.submit(AuditEvent("a", "b", "c", "ok"))
    bad = log.submit(AuditEvent("a", "b", "c", "ok", {"x": object()}))
    after = log.submit(AuditEvent("a", "b", "c", "ok"))
    assert good.result() == 1 and after.result() == 2
    with pytest.raises(MalformedInputError):
        bad.result()
    assert verify_chain("dev-1", log.all_records()) == 2


def test_only_acknowledged_records_are_pruned(tmp_path: Path) -> None:
    """Pruning keeps every unacknowledged record, the newest acknowledged ones and the head."""
    log = AuditLog(AgentDatabase(tmp_path / "a.db"), "dev-1")
    for i in range(50):
        log.append(AuditEvent("a", "b", "c", "ok", {"i": i}))
    assert log.prune_acknowledged(keep=10) == 0  # nothing acknowledged yet
    log.set_acked(30)
    assert log.prune_acknowledged(keep=10) == 20
    remaining = log.all_records()
    assert len(remaining) == 30 and log.unacknowledged() == 20
    assert log.append(AuditEvent("a", "b", "c", "ok")) == 51  # the chain goes on from its head
    log.set_acked(51)
    log.prune_acknowledged(keep=0)
    assert len(log.all_records()) == 1  # the head stays, so the chain can continue


def test_pending_records_fit_one_message(tmp_path: Path) -> None:
    """A push holds at most the byte budget of records (one oversized record still goes alone)."""
    log = AuditLog(AgentDatabase(tmp_path / "a.db"), "dev-1")
    for i in range(10):
        log.append(AuditEvent("a", "b", "c", "ok", {"pad": "x" * 1000, "i": i}))
    size = len(log.all_records()[0])  # every record here is this size, give or take a digit
    batch = log.pending(limit=500, max_bytes=3 * size + 5)
    assert [seq for seq, _ in batch] == [1, 2, 3]
    assert [seq for seq, _ in log.pending(limit=500, max_bytes=10)] == [1]
    assert len(log.pending(limit=4, max_bytes=10**6)) == 4


def test_a_storage_failure_drops_no_record_and_is_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full: the writer keeps every event and retries; `failure` says why meanwhile;
    once storage works again the records are written in order, one intact chain."""
    import threading

    from edgefleet.errors import StorageError

    log = AuditLog(AgentDatabase(tmp_path / "a.db"), "dev-1")
    log.append(AuditEvent("agent", "first", "t", "success", {}))
    real_store, broken = log._store, threading.Event()
    broken.set()

    def store(batch):  # type: ignore[no-untyped-def]
        if broken.is_set():
            raise StorageError("local database error: OperationalError (database or disk is full)")
        return real_store(batch)

    monkeypatch.setattr(log, "_store", store)
    futures = [
        log.submit(AuditEvent("app:x", "inference.chat", "m", "success", {"i": i}))
        for i in range(5)
    ]
    for _ in range(100):
        if log.failure:
            break
        threading.Event().wait(0.02)
    assert "disk is full" in log.failure and not any(f.done() for f in futures)
    broken.clear()
    assert [f.result(timeout=10) for f in futures] == [2, 3, 4, 5, 6]
    assert log.failure == ""
    assert verify_chain("dev-1", log.all_records()) == 6


def test_an_acknowledgement_no_record_can_have_matches_nothing(tmp_path: Path) -> None:
    """The controller's acknowledgement is a uint64; past SQLite's int64 (or ≤ 0) it names
    no record — not an OverflowError out of the sync pass — and moves nothing."""
    log = AuditLog(AgentDatabase(tmp_path / "a.db"), "dev-1")
    log.append(AuditEvent("a", "b", "c", "ok"))
    for seq in (2**64 - 1, 2**63, 0, -1):
        assert log.record_hash_at(seq) is None
    log.set_acked(2**64 - 1)  # clamped to the head
    assert log.acked_seq() == 1
    assert log.record_hash_at(1) is not None
