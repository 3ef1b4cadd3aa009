"""`edgefleetctl audit export|query|clear-alert` against the controller, and `audit verify`,
which needs no controller: an auditor verifies an export offline."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.cli_support import TIME_HELP, Subcommands, handled_by, output_file, time_bound
from edgefleet.controller.ctl import HELP
from edgefleet.controller.ctl.connect import with_client
from edgefleet.errors import ConfigError, TransportError
from edgefleet.output import Column, print_list, when

if TYPE_CHECKING:
    from edgefleet.controller.ctl.client import OperatorClient


def register(commands: Subcommands) -> None:
    audit = commands.add_parser("audit", help=HELP["audit"]).add_subparsers(
        dest="action", required=True
    )
    export = handled_by(
        audit.add_parser("export", help="records verbatim with a signed manifest"),
        with_client(_audit_export),
    )
    export.add_argument("--out", type=output_file, required=True)
    export.add_argument("--device", help="only this device's chain (or `controller`)")
    export.add_argument("--since", type=time_bound, help="inclusive: " + TIME_HELP)
    export.add_argument("--until", type=time_bound, help="inclusive")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    query = handled_by(
        audit.add_parser("query", help="find records by device, actor, action and time"),
        with_client(_audit_query),
    )
    query.add_argument("--device", default="")
    query.add_argument("--actor", default="")
    query.add_argument("--action", dest="record_action", default="")
    query.add_argument("--since", type=time_bound, help="inclusive: " + TIME_HELP)
    query.add_argument("--until", type=time_bound, help="inclusive")
    query.add_argument(
        "--limit", type=int, default=100, help="at most this many records, the latest (100)"
    )
    query.add_argument(
        "--oldest-first", action="store_true", help="the earliest matching records, in order"
    )
    query.add_argument(
        "-o",
        "--output",
        choices=("table", "wide", "json", "yaml"),
        default="table",
        help="table (default), wide, json or yaml (the records as objects)",
    )
    query.add_argument(
        "--json",
        dest="output",
        action="store_const",
        const="jsonl",
        help="the records verbatim, one per line (the signed bytes)",
    )
    clear = handled_by(
        audit.add_parser("clear-alert", help="let a chain flagged as tampered take records again"),
        with_client(_audit_clear_alert),
    )
    clear.add_argument("device_id")
    clear.add_argument("--reason", required=True, help="what the investigation found")
    verify = handled_by(
        audit.add_parser("verify", help="verify an export offline, with the root fingerprint"),
        audit_verify,
    )
    verify.add_argument("file", type=Path)
    verify.add_argument("--root-fingerprint", required=True)


def _audit_export(client: OperatorClient, args: argparse.Namespace) -> int:
    spool = args.out.with_name(args.out.name + ".records")
    header, count = b"", 0
    try:
        with spool.open("w+b") as records:
            for record, trailer in client.export_audit(
                args.device, args.since or "", args.until or ""
            ):
                if trailer:
                    header = trailer
                else:
                    records.write(record + b"\n")
                    count += 1
            if not header:
                raise TransportError("the export ended without its signed manifest")
            records.seek(0)
            lines = (line.rstrip(b"\n") for line in records)
            partial = args.out.with_name(args.out.name + ".partial")
            with partial.open("wb") as out:
                from edgefleet.audit_export import render

                for block in render(header, lines, args.format):
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            partial.replace(args.out)
    finally:
        spool.unlink(missing_ok=True)
    print(f"exported {count} record(s) to {args.out} ({args.format}, signed manifest)")
    return 0


RECORD_COLUMNS: tuple[Column[dict[str, Any]], ...] = (
    Column("time", lambda r: when(r["time"])),
    Column("device", lambda r: r["device"]),
    Column("seq", lambda r: r["seq"]),
    Column("actor", lambda r: r["actor"]),
    Column("action", lambda r: r["action"]),
    Column("target", lambda r: r["target"]),
    Column("outcome", lambda r: r["outcome"]),
    Column("details", lambda r: json.dumps(r.get("details", {}), sort_keys=True), wide=True),
)


def _audit_query(client: OperatorClient, args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 10_000:
        raise ConfigError("--limit must be between 1 and 10000")
    records, truncated = client.query_audit(
        args.device,
        args.actor,
        args.record_action,
        args.since or "",
        args.until or "",
        args.limit,
        args.oldest_first,
    )
    if args.output == "jsonl":
        for raw in records:
            print(raw.decode("utf-8"))
    else:
        documents = [json.loads(raw) for raw in records]
        print_list(documents, RECORD_COLUMNS, args.output, dict, empty="no matching records")
    if truncated:
        print(
            f"(more than {args.limit} records matched; narrow the query or raise --limit)",
            file=sys.stderr,
        )
    return 0


def _audit_clear_alert(client: OperatorClient, args: argparse.Namespace) -> int:
    cleared = client.clear_audit_alert(args.device_id, args.reason)
    print(
        f"{args.device_id}: {cleared} alert(s) cleared; the chain takes records again "
        "(exports of the flagged ranges still say so)"
    )
    return 0


# `audit verify` exits 0 when every record verifies and every device record is covered by
# its device's own signature; 1 on any problem; 3 when the records verify but some are
# vouched for by the controller's audit key alone (or lie in a cleared tamper alert).
QUALIFIED_EXIT = 3


def audit_verify(args: argparse.Namespace) -> int:
    try:
        data = args.file.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {args.file}: {e.strerror}") from e
    from edgefleet.audit_export import verify_export

    report = verify_export(data, args.root_fingerprint.strip().lower())
    for problem in report.problems:
        print(f"FAIL {problem}")
    for qualification in report.qualifications:
        print(f"NOTE {qualification}")
    for chain, keyid in sorted(report.device_keys.items()):
        print(f"key  {chain}: device audit key {keyid[:16]}")
    chains = ", ".join(f"{c}: {n}" for c, n in sorted(report.chains.items()))
    if not report.ok:
        verdict = f"{len(report.problems)} problem(s)"
    elif report.qualifications:
        verdict = f"verified with {len(report.qualifications)} note(s)"
    else:
        verdict = "verified"  # and every device record is attested by its device
    print(f"{report.records} record(s) in {len(report.chains)} chain(s) ({chains}): {verdict}")
    if not report.ok:
        return 1
    return QUALIFIED_EXIT if report.qualifications else 0
