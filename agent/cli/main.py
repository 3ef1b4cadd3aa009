"""`edgefleet-agent`: enroll the device, run the daemon, inspect the registry, chat locally.

Each command group is one module of this package that registers its parsers and their
handlers together (``edgefleet.cli_support.handled_by``); this module only puts them in
order and runs the handler of the command given."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from edgefleet.agent.app import DEFAULT_DATA_DIR
from edgefleet.agent.cli import PROG, audit, bench, chat, daemon, enrollment, models, tokens
from edgefleet.cli_support import (
    add_common_options,
    add_completion_command,
    run_command,
    run_handler,
)
from edgefleet.logging import configure_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="The edgefleet agent on a gateway.")
    add_common_options(parser)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("EDGEFLEET_AGENT_DATA_DIR", DEFAULT_DATA_DIR)),
        help="state directory (env EDGEFLEET_AGENT_DATA_DIR)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_completion_command(commands)
    enrollment.register(commands)  # enroll, fingerprint
    daemon.register(commands)  # run, status
    models.register(commands)
    chat.register(commands)
    tokens.register(commands)
    audit.register(commands)
    bench.register(commands)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if args.command != "run":
        configure_logging("console", "WARNING")
    return run_handler(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `edgefleet-agent`."""
    return run_command(PROG, _parser(), argv, _dispatch)


if __name__ == "__main__":
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
