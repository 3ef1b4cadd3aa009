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
    add_common_options,
    add_completion_command,
    run_command,
    run_handler,
)
from edgefleet.controller.ctl import access, audit, devices, keys, models, rollouts, server
from edgefleet.controller.ctl.connect import CONFIG_ENV, talks_to_the_controller_only
from edgefleet.logging import configure_logging

PROG = "edgefleetctl"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Operate an edgefleet controller.")
    add_common_options(parser)
    parser.add_argument("--config", type=Path, help=f"operator config file (env {CONFIG_ENV})")
    parser.add_argument("--controller", help="override the controller HOST:PORT of the config")
    commands = parser.add_subparsers(dest="command", required=True)
    add_completion_command(commands)
    server.register(commands)  # init, serve, health
    keys.register(commands)
    devices.register_token(commands)
    models.register_models(commands)
    models.register_bundle(commands)
    models.register_agent_bundle(commands)
    rollouts.register(commands)
    devices.register_devices(commands)
    access.register_operator(commands)
    access.register_policy(commands)
    access.register_tokens(commands)
    audit.register(commands)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if not talks_to_the_controller_only(args.handler):
        configure_logging("console", "WARNING")  # `serve` switches to its own format
    return run_handler(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `edgefleetctl`."""
    return run_command(PROG, _parser(), argv, _dispatch)


if __name__ == "__main__":
    sys.exit(main())
