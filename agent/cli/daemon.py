"""`edgefleet-agent run` and `status`: the daemon, and what it has done so far."""

from __future__ import annotations

import argparse

from edgefleet.cli_support import Subcommands, handled_by, positive_int
from edgefleet.logging import add_service_log_options


def register(commands: Subcommands) -> None:
    """`run` and `status`."""
    run_cmd = handled_by(
        commands.add_parser("run", help="serve the local API and sync with the controller"),
        _cmd_run,
    )
    run_cmd.add_argument("--api-listen", help="HOST:PORT of the local API (default 127.0.0.1:8080)")
    run_cmd.add_argument("--sync-interval", type=positive_int, help="seconds between syncs")
    add_service_log_options(run_cmd)
    handled_by(commands.add_parser("status", help="identity, registry and sync state"), _cmd_status)


def _cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from edgefleet.agent.app.config import load_agent_config
    from edgefleet.agent.app.service import run
    from edgefleet.agent.enrollment.enroll import AgentPaths
    from edgefleet.logging import configure_logging, service_renderer

    AgentPaths(args.data_dir).identity.load()  # not enrolled: say so before anything starts
    configure_logging(service_renderer(args.log_format), args.log_level)
    config = load_agent_config(
        args.data_dir, api_listen=args.api_listen, sync_interval_seconds=args.sync_interval
    )
    asyncio.run(run(config))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import shutil

    from edgefleet.agent.app.config import load_agent_config
    from edgefleet.agent.app.state import LocalState
    from edgefleet.agent.registry.offline import fresh_at
    from edgefleet.agent.sync.metering import USED_KEY
    from edgefleet.agent.sync.progress import load_board
    from edgefleet.agent.sync.worker import LAST_ERROR_KEY, LAST_SYNC_KEY, RECEIPT_KEY
    from edgefleet.trust.metadata import format_time

    state = LocalState.open(args.data_dir)
    try:
        enrollment = state.paths.identity.load()
        print(f"device:        {enrollment.device_id}")
        print(f"controller:    {enrollment.controller_host}:{enrollment.sync_port}")
        print(f"last sync:     {state.db.get_state(LAST_SYNC_KEY) or 'never'}")
        print(f"last error:    {state.db.get_state(LAST_ERROR_KEY) or '-'}")
        disk = shutil.disk_usage(args.data_dir)
        print(f"disk:          {disk.free >> 20} MiB free of {disk.total >> 20} MiB")
        trust = state.registry.load_trust(enrollment.root_fingerprint)
        fresh = fresh_at(state.db)
        print(
            f"trust:         root v{trust.root.version}, "
            f"timestamp v{trust.timestamp.version if trust.timestamp else 0}, "
            f"targets v{trust.targets.version if trust.targets else 0}, "
            f"fresh at {format_time(fresh) if fresh else 'never'}"
        )
        written, acked = state.audit.head_seq(), state.audit.acked_seq()
        receipt = "with the fleet's signed receipt" if state.db.get_state(RECEIPT_KEY) else ""
        print(f"audit:         {written} written, {acked} acknowledged {receipt}".rstrip())
        config = load_agent_config(args.data_dir)
        if written - acked >= config.audit_warn_unacknowledged:
            print(
                f"audit backlog: ALARM, {written - acked} records wait for the controller "
                f"(audit_warn_unacknowledged = {config.audit_warn_unacknowledged})"
            )
        print(f"audit key:     {state.paths.identity.keys()[1].public.keyid[:16]}")
        for download in load_board(state.db):
            percent = 100 * download.received / download.total if download.total else 0
            why = f": {download.reason}" if download.reason else ""
            print(
                f"download:      {download.name}@{download.version} {download.state} "
                f"{download.received}/{download.total} bytes ({percent:.0f} %){why}"
            )
        day, _, used = state.db.get_state(USED_KEY, "").partition(" ")
        if used.isdigit():
            print(f"data used:     {int(used) / 1048576:.1f} MiB on {day} (UTC)")
        for model in state.registry.installed():
            notes = [" (active)" if model.active else ""]
            if state.blobs.quarantined_of(model.sha256).exists():
                notes.append(" QUARANTINED")
            print(f"model:         {model.name}@{model.version}{''.join(notes)}")
    finally:
        state.db.dispose()
    return 0
