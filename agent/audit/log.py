"""Append-only local audit chain: each record hashed once, stored verbatim, shipped later."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select

from agent.database import AgentDatabase, AuditRow
from edgefleet.audit import GENESIS_HASH, AuditEvent, encode_record, record_hash
from edgefleet.trust.metadata import format_time

ACKED_KEY = "audit_acked_seq"


class AuditLog:
    """The device's chain; durable (WAL, synchronous=FULL) before append returns."""

    def __init__(self, db: AgentDatabase, device_id: str) -> None:
        self.db = db
        self.device_id = device_id

    def append(self, event: AuditEvent) -> int:
        """Number, chain and store one event; return its sequence number."""
        with self.db.session() as session:
            last = session.execute(
                select(AuditRow).order_by(AuditRow.seq.desc()).limit(1)
            ).scalar_one_or_none()
            seq = last.seq + 1 if last else 1
            prev = last.record_sha256 if last else GENESIS_HASH
            canonical = encode_record(
                self.device_id, seq, format_time(datetime.now(UTC)), event, prev
            )
            session.add(
                AuditRow(seq=seq, canonical=canonical, record_sha256=record_hash(canonical))
            )
            return seq

    def head_seq(self) -> int:
        """The highest sequence number written."""
        with self.db.session() as session:
            return int(
                session.execute(select(func.coalesce(func.max(AuditRow.seq), 0))).scalar_one()
            )

    def acked_seq(self) -> int:
        """The highest sequence number the controller has acknowledged."""
        return int(self.db.get_state(ACKED_KEY, "0"))

    def set_acked(self, seq: int) -> None:
        """Remember the controller's acknowledgement (never backwards, never past our head)."""
        seq = min(seq, self.head_seq())
        if seq > self.acked_seq():
            self.db.set_state(ACKED_KEY, str(seq))

    def pending(self, limit: int) -> list[tuple[int, bytes]]:
        """Records after the acknowledged one, oldest first."""
        after = self.acked_seq()
        with self.db.session() as session:
            rows = session.execute(
                select(AuditRow).where(AuditRow.seq > after).order_by(AuditRow.seq).limit(limit)
            ).scalars()
            return [(row.seq, row.canonical) for row in rows]

    def all_records(self) -> list[bytes]:
        """Every record, verbatim, oldest first."""
        with self.db.session() as session:
            rows = session.execute(select(AuditRow).order_by(AuditRow.seq)).scalars()
            return [row.canonical for row in rows]
