"""Audit on the controller: its own hash chain, device chain ingest, and export."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, tuple_, update
from sqlalchemy.orm import Session

from controller.store.database import Database
from controller.store.schema import AuditCheckpointRow, AuditHead, AuditRecordRow, Device
from edgefleet.audit import (
    GENESIS_HASH,
    AuditEvent,
    ChainVerifier,
    encode_record,
    record_hash,
    verify_checkpoint,
)
from edgefleet.errors import UntrustedInputError
from edgefleet.trust.envelope import Envelope
from edgefleet.trust.metadata import format_time

CONTROLLER_CHAIN = "controller"
MAX_CHECKPOINTS = 100
# audit_records columns in the order ingest builds its rows, with their PostgreSQL types
# for binary COPY.
RECORD_COLUMNS = (
    ("chain", "varchar"),
    ("seq", "int4"),
    ("canonical", "bytea"),
    ("record_sha256", "varchar"),
    ("recorded_at", "varchar"),
    ("actor", "varchar"),
    ("action", "varchar"),
    ("received_at", "timestamptz"),
)
RecordRow = tuple[str, int, bytes, str, str, str, str, datetime]


def _head(session: Session, chain: str) -> AuditHead:
    """The chain's head, locked until the transaction ends, so concurrent appends queue.

    ``FOR UPDATE`` locks the row on PostgreSQL; SQLite ignores it and reads outside any
    transaction until the first write, so a no-op UPDATE comes first: it takes SQLite's
    write lock (waiting its turn) and the read that follows sees the last commit."""
    session.execute(
        update(AuditHead).where(AuditHead.chain == chain).values(last_seq=AuditHead.last_seq)
    )
    head = session.execute(
        select(AuditHead).where(AuditHead.chain == chain).with_for_update()
    ).scalar_one_or_none()
    if head is None:
        head = AuditHead(chain=chain, last_seq=0, last_sha256=GENESIS_HASH, tamper_alert=False)
        session.add(head)
        session.flush()
    return head


def record_event(session: Session, event: AuditEvent) -> int:
    """Append ``event`` to the controller's chain inside the caller's transaction."""
    head = _head(session, CONTROLLER_CHAIN)
    seq = head.last_seq + 1
    now = datetime.now(UTC)
    recorded_at = format_time(now)
    canonical = encode_record(CONTROLLER_CHAIN, seq, recorded_at, event, head.last_sha256)
    digest = record_hash(canonical)
    session.add(
        AuditRecordRow(
            chain=CONTROLLER_CHAIN,
            seq=seq,
            canonical=canonical,
            record_sha256=digest,
            recorded_at=recorded_at,
            actor=event.actor[:128],
            action=event.action[:64],
            received_at=now,
        )
    )
    head.last_seq, head.last_sha256 = seq, digest
    return seq


@dataclass(frozen=True)
class IngestResult:
    """How a push went: the acknowledged sequence number and any tamper finding."""

    acked_seq: int
    stored: int
    tamper_reason: str = ""
    acked_sha256: str = ""


def record_alone(db: Database, event: AuditEvent) -> int:
    """Append ``event`` to the controller's chain in a transaction of its own."""
    with db.session() as session:
        return record_event(session, event)


def ingest(
    db: Database,
    device_id: str,
    records: Sequence[tuple[int, bytes]],
    checkpoints: Sequence[Envelope] = (),
) -> IngestResult:
    """Store a device's records once each, verifying every chain link; ack the verified head.

    Then check the device-signed checkpoints against the stored records they name (those
    beyond the stored head wait for their records and are sent again).
    """
    with db.session() as session:
        head = _head(session, device_id)
        if head.tamper_alert:
            return IngestResult(head.last_seq, 0, head.tamper_reason, head.last_sha256)
        verifier = ChainVerifier(device_id, head.last_seq, head.last_sha256)
        fresh: dict[int, tuple[bytes, str]] = {}  # accepted in this push: seq -> (bytes, hash)
        rows: list[RecordRow] = []
        reason, now = "", datetime.now(UTC)
        for seq, canonical in sorted(records):
            if seq <= verifier.last_seq:
                known = fresh[seq][0] if seq in fresh else _stored_bytes(session, device_id, seq)
                if known is not None and known != canonical:
                    reason = f"record {seq} differs from the copy already stored"
                    break
                continue  # a resend of what we already hold
            if seq > verifier.last_seq + 1:
                break  # a gap: ack what we have, the device resends from there
            try:
                record = verifier.add(canonical)
            except UntrustedInputError as e:
                reason = str(e)
                break
            fresh[seq] = (canonical, record.hash)
            f = record.fields
            rows.append(
                (
                    device_id,
                    seq,
                    canonical,
                    record.hash,
                    str(f["time"])[:20],
                    str(f["actor"])[:128],
                    str(f["action"])[:64],
                    now,
                )
            )
        _insert_records(session, rows)
        stored = len(rows)
        head.last_seq, head.last_sha256 = verifier.last_seq, verifier.last_hash
        if not reason:

            def hash_of(seq: int) -> str | None:
                if seq in fresh:
                    return fresh[seq][1]
                row = session.get(AuditRecordRow, (device_id, seq))
                return row.record_sha256 if row is not None else None

            reason = _check_checkpoints(session, device_id, checkpoints, head.last_seq, hash_of)
        if reason:
            head.tamper_alert, head.tamper_reason = True, reason
            record_event(
                session,
                AuditEvent(
                    "controller",
                    "audit.tamper_detected",
                    f"device:{device_id}",
                    "alert",
                    {"reason": reason},
                ),
            )
        return IngestResult(head.last_seq, stored, reason, head.last_sha256)


def _insert_records(session: Session, rows: list[RecordRow]) -> None:
    """Store a push's records: binary COPY on PostgreSQL (the ingest hot path), executemany
    elsewhere."""
    if not rows:
        return
    connection = session.connection()
    names = [name for name, _ in RECORD_COLUMNS]
    if connection.dialect.name != "postgresql":
        session.execute(
            insert(AuditRecordRow), [dict(zip(names, row, strict=True)) for row in rows]
        )
        return
    driver: Any = connection.connection.driver_connection
    statement = (
        f"COPY {AuditRecordRow.__tablename__} ({', '.join(names)}) FROM STDIN (FORMAT BINARY)"
    )
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        copy.set_types([kind for _, kind in RECORD_COLUMNS])
        for row in rows:
            copy.write_row(row)


def _stored_bytes(session: Session, chain: str, seq: int) -> bytes | None:
    row = session.get(AuditRecordRow, (chain, seq))
    return row.canonical if row is not None else None


def _check_checkpoints(
    session: Session,
    device_id: str,
    checkpoints: Sequence[Envelope],
    stored_seq: int,
    hash_of: Callable[[int], str | None],
) -> str:
    """Store checkpoints that match their records; return a tamper reason for one that does not."""
    device = session.get(Device, device_id)
    if device is None or not checkpoints:
        return ""
    for envelope in checkpoints[:MAX_CHECKPOINTS]:
        try:
            checkpoint = verify_checkpoint(envelope, device.audit_public_key, device_id)
        except UntrustedInputError as e:
            return f"checkpoint refused: {e}"
        if checkpoint.seq > stored_seq:
            continue
        if hash_of(checkpoint.seq) != checkpoint.sha256:
            return f"record {checkpoint.seq} does not match the device-signed checkpoint"
        session.merge(
            AuditCheckpointRow(chain=device_id, seq=checkpoint.seq, envelope=envelope.to_json())
        )
    return ""


def checkpoints_between(db: Database, chain: str, first: int, last: int) -> list[Envelope]:
    """Stored checkpoints of ``chain`` within [first, last]."""
    with db.session() as session:
        rows = session.execute(
            select(AuditCheckpointRow)
            .where(AuditCheckpointRow.chain == chain, AuditCheckpointRow.seq.between(first, last))
            .order_by(AuditCheckpointRow.seq)
        ).scalars()
        return [Envelope.from_json(row.envelope) for row in rows]


def tamper_reason(session: Session, chain: str) -> str:
    """Why ``chain`` was flagged as tampered, or "" if it was not."""
    head = session.get(AuditHead, chain)
    return head.tamper_reason if head is not None and head.tamper_alert else ""


def acked_seq(session: Session, chain: str) -> int:
    """The highest verified sequence number stored for ``chain``."""
    head = session.get(AuditHead, chain)
    return head.last_seq if head is not None else 0


@dataclass(frozen=True)
class ExportFilter:
    """Which records an export or query covers."""

    chain: str | None = None
    since: str = ""  # inclusive, YYYY-MM-DDTHH:MM:SSZ
    until: str = ""
    actor: str = ""
    action: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"device": self.chain or "", "since": self.since, "until": self.until}


def export_page(
    db: Database, where: ExportFilter, after: tuple[str, int] | None, limit: int = 1000
) -> list[tuple[str, int, bytes]]:
    """Up to ``limit`` (chain, seq, canonical bytes) after ``after``, verbatim, in order."""
    with db.session() as session:
        query = select(AuditRecordRow).order_by(AuditRecordRow.chain, AuditRecordRow.seq)
        if where.chain:
            query = query.where(AuditRecordRow.chain == where.chain)
        if where.since:
            query = query.where(AuditRecordRow.recorded_at >= where.since)
        if where.until:
            query = query.where(AuditRecordRow.recorded_at <= where.until)
        if where.actor:
            query = query.where(AuditRecordRow.actor == where.actor)
        if where.action:
            query = query.where(AuditRecordRow.action == where.action)
        if after is not None:
            query = query.where(
                tuple_(AuditRecordRow.chain, AuditRecordRow.seq) > tuple_(after[0], after[1])
            )
        rows = session.execute(query.limit(limit)).scalars()
        return [(row.chain, row.seq, row.canonical) for row in rows]


def audit_public_keys(db: Database) -> dict[str, str]:
    """Each device's audit public key (hex), for exports."""
    with db.session() as session:
        return {d.device_id: d.audit_public_key for d in session.execute(select(Device)).scalars()}
