"""`edgefleet-agent enroll` and `fingerprint`: join the fleet, show this device's key."""

from __future__ import annotations

import argparse
import sys
import time

from edgefleet.agent.cli import HELP
from edgefleet.cli_support import Subcommands, handled_by

EXIT_PENDING = 3
PENDING_POLL_SECONDS = 5.0


def register(commands: Subcommands) -> None:
    """`enroll` and `fingerprint`."""
    enroll_cmd = handled_by(
        commands.add_parser("enroll", help=HELP["enroll"]),
        _cmd_enroll,
    )
    enroll_cmd.add_argument("--controller", required=True, help="enrollment HOST:PORT")
    enroll_cmd.add_argument("--token", default="", help="omit to ask an operator for approval")
    enroll_cmd.add_argument("--root-fingerprint", required=True)
    enroll_cmd.add_argument(
        "--wait", type=int, default=0, help="seconds to keep asking while approval is pending"
    )
    handled_by(
        commands.add_parser("fingerprint", help=HELP["fingerprint"]),
        _cmd_fingerprint,
    )


def _cmd_enroll(args: argparse.Namespace) -> int:
    from edgefleet.agent.app.paths import AgentPaths
    from edgefleet.agent.cli import PROG
    from edgefleet.agent.enrollment.enroll import EnrollmentPending, enroll

    deadline = time.monotonic() + max(0, args.wait)
    while True:
        try:
            enrollment = enroll(
                AgentPaths(args.data_dir), args.controller, args.token, args.root_fingerprint
            )
            break
        except EnrollmentPending as e:
            if time.monotonic() >= deadline:
                print(f"{PROG}: pending: {e}", file=sys.stderr)
                return EXIT_PENDING
            time.sleep(min(PENDING_POLL_SECONDS, max(0.1, deadline - time.monotonic())))
    controller = f"{enrollment.controller_host}:{enrollment.sync_port}"
    print(f"enrolled as {enrollment.device_id}; controller {controller}")
    return 0


def _cmd_fingerprint(args: argparse.Namespace) -> int:
    from edgefleet.agent.app.paths import AgentPaths
    from edgefleet.tls import key_fingerprint

    key, _ = AgentPaths(args.data_dir).identity.keys()
    print(key_fingerprint(key))
    return 0
