"""`edgefleet-agent`: enroll the device, run the daemon, inspect the registry, chat locally.

Each command group is one module of this package that registers its parsers and their
handlers together (``edgefleet.cli_support.handled_by``); this module only puts them in
order (``GROUPS``), loads the one a command line names and runs its handler."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from edgefleet.agent.app import DEFAULT_DATA_DIR
from edgefleet.agent.cli import GROUPS, PROG
from edgefleet.cli_support import (
    add_command_groups,
    add_common_options,
    add_completion_command,
    command_named,
    run_command,
    run_handler,
)
from edgefleet.logging import configure_logging

DATA_DIR = "--data-dir"


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser, or only the group of ``command`` (see
    ``add_command_groups``)."""
    parser = argparse.ArgumentParser(prog=PROG, description="The edgefleet agent on a gateway.")
    add_common_options(parser)
    parser.add_argument(
        DATA_DIR,
        type=Path,
        default=Path(os.environ.get("EDGEFLEET_AGENT_DATA_DIR", DEFAULT_DATA_DIR)),
        help="state directory (env EDGEFLEET_AGENT_DATA_DIR)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_completion_command(commands)
    add_command_groups(commands, __package__ or "", GROUPS, command)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if args.command != "run":
        configure_logging("console", "WARNING")
    return run_handler(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `edgefleet-agent`."""
    given = sys.argv[1:] if argv is None else argv
    return run_command(PROG, _parser(command_named(given, [DATA_DIR])), argv, _dispatch)


if __name__ == "__main__":
    sys.exit(main())
