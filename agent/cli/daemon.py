"""`edgefleet-agent run` and `status`: the daemon, and what it has done so far."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgefleet.agent.cli import HELP
from edgefleet.cli_support import Subcommands, handled_by, positive_int
from edgefleet.logging import add_service_log_options
from edgefleet.output import add_output_option, download, print_documents, when


def register(commands: Subcommands) -> None:
    """`run` and `status`."""
    run_cmd = handled_by(
        commands.add_parser("run", help=HELP["run"]),
        _cmd_run,
    )
    run_cmd.add_argument("--api-listen", help="HOST:PORT of the local API (default 127.0.0.1:8080)")
    run_cmd.add_argument("--sync-interval", type=positive_int, help="seconds between syncs")
    add_service_log_options(run_cmd)
    status = handled_by(commands.add_parser("status", help=HELP["status"]), _cmd_status)
    status.add_argument(
        "--watch",
        action="store_true",
        help="then follow downloads: percent, rate and ETA, until interrupted (Ctrl-C)",
    )
    add_output_option(status)


def _cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from edgefleet.agent.app.config import load_agent_config
    from edgefleet.agent.app.paths import AgentPaths
    from edgefleet.agent.app.service import run
    from edgefleet.logging import configure_logging, service_renderer

    AgentPaths(args.data_dir).identity.load()  # not enrolled: say so before anything starts
    configure_logging(service_renderer(args.log_format), args.log_level)
    config = load_agent_config(
        args.data_dir, api_listen=args.api_listen, sync_interval_seconds=args.sync_interval
    )
    asyncio.run(run(config))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    document = _status_document(args.data_dir)
    if args.output in ("json", "yaml"):
        print_documents(document, args.output)
    else:
        _print_status(document)
    if args.watch:
        _watch_downloads(args.data_dir)
    return 0


WATCH_SECONDS = 1.0


def _watch_downloads(data_dir: Path) -> None:
    """One line per download each time its progress changes: percent, and the rate the
    download measured with the time left at that rate."""
    import time

    from edgefleet.agent.app.database import AgentDatabase
    from edgefleet.agent.app.paths import AgentPaths
    from edgefleet.agent.sync.progress import load_board

    db = AgentDatabase(AgentPaths(data_dir).database)
    shown: dict[str, str] = {}  # ref -> line shown last
    try:
        while True:
            for d in load_board(db):
                line = download(d)
                if shown.get(f"{d.name}@{d.version}") != line:
                    print(line, flush=True)
                shown[f"{d.name}@{d.version}"] = line
            time.sleep(WATCH_SECONDS)
    finally:
        db.dispose()


def _status_document(data_dir: Path) -> dict[str, Any]:
    """What `status -o json|yaml` prints (docs/cli.md): the device's own view of itself."""
    import shutil
    from dataclasses import asdict

    from edgefleet.agent.app.config import load_agent_config
    from edgefleet.agent.app.state import LocalState
    from edgefleet.agent.registry.offline import fresh_at
    from edgefleet.agent.sync.metering import USED_KEY
    from edgefleet.agent.sync.progress import load_board
    from edgefleet.agent.sync.state import LAST_ERROR_KEY, LAST_SYNC_KEY, RECEIPT_KEY
    from edgefleet.trust.metadata import format_time

    state = LocalState.open(data_dir)
    try:
        enrollment = state.paths.identity.load()
        disk = shutil.disk_usage(data_dir)
        trust = state.registry.load_trust(enrollment.root_fingerprint)
        fresh = fresh_at(state.db)
        written, acked = state.audit.head_seq(), state.audit.acked_seq()
        warn_at = load_agent_config(data_dir).audit_warn_unacknowledged
        day, _, used = state.db.get_state(USED_KEY, "").partition(" ")
        return {
            "device_id": enrollment.device_id,
            "controller": f"{enrollment.controller_host}:{enrollment.sync_port}",
            "last_sync": state.db.get_state(LAST_SYNC_KEY) or None,
            "last_error": state.db.get_state(LAST_ERROR_KEY) or None,
            "disk": {"free_bytes": disk.free, "total_bytes": disk.total},
            "trust": {
                "root_version": trust.root.version,
                "timestamp_version": trust.timestamp.version if trust.timestamp else 0,
                "targets_version": trust.targets.version if trust.targets else 0,
                "fresh_at": format_time(fresh) if fresh else None,
            },
            "audit": {
                "written": written,
                "acknowledged": acked,
                "receipt": bool(state.db.get_state(RECEIPT_KEY)),
                "backlog_alarm": written - acked >= warn_at,
                "warn_unacknowledged": warn_at,
                "key_id": state.paths.identity.keys()[1].public.keyid,
            },
            "downloads": [asdict(d) for d in load_board(state.db)],
            "data_used_today": ({"day": day, "bytes": int(used)} if used.isdigit() else None),
            "models": [
                {
                    "name": m.name,
                    "version": m.version,
                    "sha256": m.sha256,
                    "active": m.active,
                    "quarantined": state.blobs.quarantined_of(m.sha256).exists(),
                }
                for m in state.registry.installed()
            ],
        }
    finally:
        state.db.dispose()


def _print_status(doc: dict[str, Any]) -> None:
    def line(key: str, value: object) -> None:
        print(f"{key + ':':<15}{value}")

    line("device", doc["device_id"])
    line("controller", doc["controller"])
    line("last sync", when(doc["last_sync"]))
    line("last error", doc["last_error"] or "-")
    disk = doc["disk"]
    line("disk", f"{disk['free_bytes'] >> 20} MiB free of {disk['total_bytes'] >> 20} MiB")
    trust = doc["trust"]
    line(
        "trust",
        f"root v{trust['root_version']}, timestamp v{trust['timestamp_version']}, "
        f"targets v{trust['targets_version']}, fresh at {when(trust['fresh_at'])}",
    )
    audit = doc["audit"]
    receipt = " with the fleet's signed receipt" if audit["receipt"] else ""
    line("audit", f"{audit['written']} written, {audit['acknowledged']} acknowledged{receipt}")
    if audit["backlog_alarm"]:
        line(
            "audit backlog",
            f"ALARM, {audit['written'] - audit['acknowledged']} records wait for the "
            f"controller (audit_warn_unacknowledged = {audit['warn_unacknowledged']})",
        )
    line("audit key", audit["key_id"][:16])
    from edgefleet.fleet import DownloadProgress

    for d in doc["downloads"]:
        progress = DownloadProgress(**d)
        line("download", f"{download(progress)} ({progress.received}/{progress.total} bytes)")
    if doc["data_used_today"]:
        used = doc["data_used_today"]
        line("data used", f"{used['bytes'] / 1048576:.1f} MiB on {used['day']} (UTC)")
    for m in doc["models"]:
        notes = (" (active)" if m["active"] else "") + (" QUARANTINED" if m["quarantined"] else "")
        line("model", f"{m['name']}@{m['version']}{notes}")
