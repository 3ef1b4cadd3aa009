"""`edgefleet-agent audit export`: a signed export of the local log (air-gapped sites)."""

from __future__ import annotations

import argparse

from edgefleet.agent.cli import HELP
from edgefleet.cli_support import Subcommands, handled_by, output_file
from edgefleet.errors import ConfigError


def register(commands: Subcommands) -> None:
    """`audit export`."""
    audit = commands.add_parser("audit", help=HELP["audit"]).add_subparsers(
        dest="action", required=True
    )
    export = handled_by(
        audit.add_parser("export", help="a signed export of the local log (air-gapped sites)"),
        _cmd_audit_export,
    )
    export.add_argument("--out", type=output_file, required=True)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")


def _cmd_audit_export(args: argparse.Namespace) -> int:
    from edgefleet.agent.app.state import LocalState
    from edgefleet.audit_export import ExportBuilder, render
    from edgefleet.trust.envelope import Envelope

    state = LocalState.open(args.data_dir)
    try:
        identity = state.paths.identity
        enrollment = identity.load()
        if not identity.audit_attestation.exists():
            raise ConfigError("this device has no audit key attestation from the fleet")
        attestation = Envelope.from_json(identity.read(identity.audit_attestation))
        records = state.audit.all_records()
        trust = state.registry.load_trust(enrollment.root_fingerprint)
        builder = ExportBuilder()
        for record in records:
            builder.add(record)
        ranges = builder.ranges().get(enrollment.device_id)
        checkpoints = state.audit.checkpoints_after(ranges[0] - 1) if ranges else []
        _, audit_key = identity.keys()
        header = builder.header(
            trust.root_chain,
            audit_key,
            {enrollment.device_id: audit_key.public.hex},
            {"device": enrollment.device_id, "exported_by": "device"},
            {enrollment.device_id: checkpoints},
            attestation,
        )
    finally:
        state.db.dispose()
    partial = args.out.with_name(args.out.name + ".partial")
    with partial.open("wb") as out:
        for block in render(header, records, args.format):
            out.write(block)
    partial.replace(args.out)
    print(f"exported {len(records)} record(s) of {enrollment.device_id} to {args.out}")
    return 0
