"""Controller audit ingest into PostgreSQL: the real ingest path vs row-by-row INSERTs.

Ours: `edgefleet.controller.audit.log.ingest` as PushAudit runs it — every record parsed, checked to
be canonical, chained to its predecessor and hashed, then the push stored with one binary
COPY in one transaction (batches of --batch records, as devices send them). Measured with
one pusher (pushes strictly one after another), and with --pushers devices pushing at once,
as a fleet does: PushAudit runs each push in a worker thread, so one push's verification
overlaps another's COPY and commit inside PostgreSQL.
Baseline: the same records, one INSERT and one commit each, with no verification at all.
Target (issue 6): ingest >= 50,000 records/s.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from sqlalchemy import insert, text

from edgefleet.audit import GENESIS_HASH, AuditEvent, encode_record, record_hash
from edgefleet.controller.audit.log import ingest
from edgefleet.controller.store.database import Database, reset_scratch_database
from edgefleet.controller.store.schema import AuditRecordRow

URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def make_chains(devices: int, per_device: int) -> dict[str, list[tuple[int, bytes]]]:
    chains = {}
    for d in range(devices):
        device, prev, records = f"dev-{d:04d}", GENESIS_HASH, []
        for seq in range(1, per_device + 1):
            event = AuditEvent("app:x", "inference.chat", "m@1", "success", {"prompt_tokens": seq})
            canonical = encode_record(device, seq, "2026-11-28T00:00:00Z", event, prev)
            prev = record_hash(canonical)
            records.append((seq, canonical))
        chains[device] = records
    return chains


def ours(
    db: Database, chains: dict[str, list[tuple[int, bytes]]], batch: int, pushers: int
) -> float:
    """Records/s through ingest, ``pushers`` devices pushing at once (each its own chain)."""
    reset_scratch_database(db)

    def push_all(device: str) -> None:
        records = chains[device]
        for i in range(0, len(records), batch):
            result = ingest(db, device, records[i : i + batch])
            assert not result.tamper_reason and result.stored == len(records[i : i + batch])

    started = time.perf_counter()
    with ThreadPoolExecutor(pushers) as pool:
        list(pool.map(push_all, chains))
    elapsed = time.perf_counter() - started
    with db.engine.connect() as connection:
        stored = connection.execute(text("select count(*) from audit_records")).scalar_one()
    assert stored == sum(map(len, chains.values())), stored
    return float(stored) / elapsed


def row_by_row(db: Database, chains: dict[str, list[tuple[int, bytes]]], limit: int) -> float:
    reset_scratch_database(db)
    rows = [
        (device, seq, canonical) for device, records in chains.items() for seq, canonical in records
    ]
    rows = rows[:limit]
    now = datetime.now(UTC)
    started = time.perf_counter()
    with db.engine.connect() as connection:
        for device, seq, canonical in rows:
            connection.execute(
                insert(AuditRecordRow).values(
                    chain=device,
                    seq=seq,
                    canonical=canonical,
                    record_sha256="",
                    recorded_at="",
                    actor="",
                    action="",
                    received_at=now,
                )
            )
            connection.commit()
    return len(rows) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=URL)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--records", type=int, default=5_000, help="per device")
    parser.add_argument("--batch", type=int, default=1_000, help="records per push")
    parser.add_argument("--pushers", type=int, default=4, help="devices pushing at once")
    parser.add_argument("--baseline-records", type=int, default=5_000)
    args = parser.parse_args()
    db = Database(args.url)
    with db.engine.connect() as connection:
        version = connection.execute(text("show server_version")).scalar_one()
    chains = make_chains(args.devices, args.records)
    total = args.devices * args.records
    one_pusher = ours(db, chains, args.batch, 1)
    ours_rate = ours(db, chains, args.batch, args.pushers)
    baseline = row_by_row(db, chains, args.baseline_records)
    reset_scratch_database(db)
    shape = f"{args.devices} devices x {args.records} records, pushes of {args.batch}"
    print(f"PostgreSQL {version}; {shape}")
    print(f"{'path':<48}{'records':>9}{'records/s':>12}")
    print(f"{'ingest, one pusher (verify chain, COPY per push)':<48}{total:>9}{one_pusher:>12.0f}")
    concurrent_label = f"ingest, {args.pushers} devices pushing at once"
    print(f"{concurrent_label:<48}{total:>9}{ours_rate:>12.0f}")
    row_label = "row-by-row INSERT + commit, no verification"
    print(f"{row_label:<48}{args.baseline_records:>9}{baseline:>12.0f}")
    print(
        f"ingest / row-by-row = {ours_rate:.0f} / {baseline:.0f} = {ours_rate / baseline:.1f}x "
        f"({one_pusher:.0f} / {baseline:.0f} = {one_pusher / baseline:.1f}x with one pusher); "
        "target: ingest >= 50,000 records/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
