"""Audit on the controller: its own hash chain, device chain ingest, and export."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, asc, desc, func, insert, select, tuple_, update
from sqlalchemy.orm import Session

from edgefleet.audit import (
    CONTROLLER_CHAIN,
    GENESIS_HASH,
    AuditEvent,
    ChainVerifier,
    encode_record,
    record_hash,
    verify_checkpoint,
)
from edgefleet.controller.store.database import Database
from edgefleet.controller.store.schema import (
    AuditAlert,
    AuditCheckpointRow,
    AuditHead,
    AuditRecordRow,
    Device,
)
from edgefleet.errors import MalformedInputError, NotFoundError, UntrustedInputError
from edgefleet.trust.envelope import Envelope
from edgefleet.trust.metadata import format_time

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
        suspect: tuple[int, int] | None = None
        reason, now = "", datetime.now(UTC)
        for seq, canonical in sorted(records):
            if seq <= verifier.last_seq:
                known = fresh[seq][0] if seq in fresh else _stored_bytes(session, device_id, seq)
                if (
                    known is not None
                    and known != canonical
                    and not _cleared(session, device_id, seq)
                ):
                    reason, suspect = (
                        f"record {seq} differs from the copy already stored",
                        (seq, seq),
                    )
                    break
                continue  # a resend of what we already hold (or of a range already judged)
            if seq > verifier.last_seq + 1:
                break  # a gap: ack what we have, the device resends from there
            try:
                record = verifier.add(canonical)
            except UntrustedInputError as e:
                reason, suspect = str(e), (seq, seq)
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

            reason, suspect = _check_checkpoints(
                session, device_id, checkpoints, head.last_seq, hash_of
            )
        if reason and suspect is not None:
            head.tamper_alert, head.tamper_reason = True, reason
            session.add(
                AuditAlert(
                    chain=device_id,
                    first_seq=suspect[0],
                    last_seq=suspect[1],
                    reason=reason[:1024],
                    detected_at=now,
                    cleared_by="",
                    cleared_reason="",
                )
            )
            record_event(
                session,
                AuditEvent(
                    "controller",
                    "audit.tamper_detected",
                    f"device:{device_id}",
                    "alert",
                    {"reason": reason, "first_seq": suspect[0], "last_seq": suspect[1]},
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
) -> tuple[str, tuple[int, int] | None]:
    """Store checkpoints that match their records; for one that does not, return the
    tamper reason and the suspect range: the records after the last checkpoint that
    matched, up to the one that does not."""
    device = session.get(Device, device_id)
    if device is None or not checkpoints:
        return "", None
    for envelope in checkpoints[:MAX_CHECKPOINTS]:
        try:
            checkpoint = verify_checkpoint(envelope, device.audit_public_key, device_id)
        except UntrustedInputError as e:
            return f"checkpoint refused: {e}", None
        if checkpoint.seq > stored_seq:
            continue
        if hash_of(checkpoint.seq) != checkpoint.sha256:
            matched = session.execute(
                select(func.max(AuditCheckpointRow.seq)).where(
                    AuditCheckpointRow.chain == device_id,
                    AuditCheckpointRow.seq < checkpoint.seq,
                )
            ).scalar_one_or_none()
            return (
                f"record {checkpoint.seq} does not match the device-signed checkpoint",
                ((matched or 0) + 1, checkpoint.seq),
            )
        session.merge(
            AuditCheckpointRow(chain=device_id, seq=checkpoint.seq, envelope=envelope.to_json())
        )
    return "", None


def _cleared(session: Session, chain: str, seq: int) -> bool:
    """True when an operator cleared an alert whose range holds ``seq``."""
    return (
        session.execute(
            select(AuditAlert.id).where(
                AuditAlert.chain == chain,
                AuditAlert.first_seq <= seq,
                AuditAlert.last_seq >= seq,
                AuditAlert.cleared_by != "",
            )
        ).first()
        is not None
    )


def through_next_checkpoint(db: Database, chain: str, last: int) -> list[tuple[str, int, bytes]]:
    """The records after ``last`` up to the chain's next device-signed checkpoint: what an
    export ending at ``last`` adds so that its tail is attested by the device too."""
    with db.session() as session:
        until = session.execute(
            select(func.min(AuditCheckpointRow.seq)).where(
                AuditCheckpointRow.chain == chain, AuditCheckpointRow.seq > last
            )
        ).scalar_one_or_none()
        if until is None:
            return []
        rows = session.execute(
            select(AuditRecordRow.seq, AuditRecordRow.canonical)
            .where(AuditRecordRow.chain == chain, AuditRecordRow.seq.between(last + 1, until))
            .order_by(AuditRecordRow.seq)
        )
        return [(chain, seq, canonical) for seq, canonical in rows]


def alerts_of(db: Database, chains: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Every alert of ``chains``, for export manifests."""
    wanted = list(chains)
    with db.session() as session:
        rows = session.execute(
            select(AuditAlert).where(AuditAlert.chain.in_(wanted)).order_by(AuditAlert.id)
        ).scalars()
        found: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            found.setdefault(row.chain, []).append(
                {
                    "first_seq": row.first_seq,
                    "last_seq": row.last_seq,
                    "reason": row.reason,
                    "detected": format_time(row.detected_at),
                    "cleared_by": row.cleared_by,
                    "cleared_reason": row.cleared_reason,
                }
            )
        return found


def clear_alert(db: Database, operator: str, chain: str, reason: str) -> int:
    """After an investigation: the chain takes records again. Its alerts stay on record as
    cleared (by whom, why) and keep qualifying exports of their ranges; returns how many."""
    reason = reason.strip()
    if not 3 <= len(reason) <= 1024:
        raise MalformedInputError("say why the alert is cleared (3 to 1024 characters)")
    with db.session() as session:
        head = _head(session, chain)
        open_alerts = list(
            session.execute(
                select(AuditAlert).where(AuditAlert.chain == chain, AuditAlert.cleared_by == "")
            ).scalars()
        )
        if not head.tamper_alert and not open_alerts:
            raise NotFoundError(f"chain {chain} has no open tamper alert")
        now = datetime.now(UTC)
        for alert in open_alerts:
            alert.cleared_by, alert.cleared_reason, alert.cleared_at = (
                f"operator:{operator}",
                reason,
                now,
            )
        head.tamper_alert, head.tamper_reason = False, ""
        record_event(
            session,
            AuditEvent(
                f"operator:{operator}",
                "audit.alert_cleared",
                chain,
                "success",
                {"alerts": len(open_alerts), "reason": reason},
            ),
        )
        return len(open_alerts)


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
    query = _matching(where).order_by(AuditRecordRow.chain, AuditRecordRow.seq)
    if after is not None:
        query = query.where(
            tuple_(AuditRecordRow.chain, AuditRecordRow.seq) > tuple_(after[0], after[1])
        )
    with db.session() as session:
        rows = session.execute(query.limit(limit)).scalars()
        return [(row.chain, row.seq, row.canonical) for row in rows]


def query_page(
    db: Database, where: ExportFilter, limit: int, oldest_first: bool = False
) -> list[tuple[str, int, bytes]]:
    """Up to ``limit`` matching records by their own time: the latest first (what an
    operator looking into an incident wants), or the earliest first."""
    direction = asc if oldest_first else desc
    order = (
        direction(AuditRecordRow.recorded_at),
        AuditRecordRow.chain,
        direction(AuditRecordRow.seq),
    )
    with db.session() as session:
        rows = session.execute(_matching(where).order_by(*order).limit(limit)).scalars()
        return [(row.chain, row.seq, row.canonical) for row in rows]


def _matching(where: ExportFilter) -> Select[AuditRecordRow]:
    query = select(AuditRecordRow)
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
    return query


def audit_public_keys(db: Database) -> dict[str, str]:
    """Each device's audit public key (hex), for exports."""
    with db.session() as session:
        return {d.device_id: d.audit_public_key for d in session.execute(select(Device)).scalars()}
