"""`edgefleetctl`: initialize and serve a controller, and operate it over gRPC.

Each command group is one module of this package that registers its parsers and their
handlers together (``edgefleet.cli_support.handled_by``); this module only puts them in
order and runs the handler of the command given."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from edgefleet.cli_support import (
    add_command_groups,
    add_common_options,
    add_completion_command,
    command_named,
    run_command,
    run_handler,
)
from edgefleet.controller.ctl import GROUPS, PROG
from edgefleet.controller.ctl.connect import CONFIG_ENV, talks_to_the_controller_only
from edgefleet.logging import configure_logging

OWN_OPTIONS = ("--config", "--controller")  # the options of edgefleetctl itself take a value


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser, or only the group of ``command`` (see
    ``add_command_groups``)."""
    parser = argparse.ArgumentParser(prog=PROG, description="Operate an edgefleet controller.")
    add_common_options(parser)
    parser.add_argument(OWN_OPTIONS[0], type=Path, help=f"operator config file (env {CONFIG_ENV})")
    parser.add_argument(OWN_OPTIONS[1], help="override the controller HOST:PORT of the config")
    commands = parser.add_subparsers(dest="command", required=True)
    add_completion_command(commands)
    add_command_groups(commands, __package__ or "", GROUPS, command)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if not talks_to_the_controller_only(args.handler):
        configure_logging("console", "WARNING")  # `serve` switches to its own format
    return run_handler(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `edgefleetctl`."""
    given = sys.argv[1:] if argv is None else argv
    return run_command(PROG, _parser(command_named(given, OWN_OPTIONS)), argv, _dispatch)


if __name__ == "__main__":
    sys.exit(main())
