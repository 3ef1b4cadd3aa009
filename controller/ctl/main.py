"""`edgefleetctl`: initialize and serve a controller, and operate it over gRPC.

Each command group is one module of this package that registers its parsers and their
handlers together (``edgefleet.cli_support.handled_by``); this module only puts them in
order and runs the handler of the command given."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from edgefleet.cli_support import (
    add_common_options,
    add_completion_command,
    run_command,
    run_handler,
)
from edgefleet.controller.ctl.connect import CONFIG_ENV, talks_to_the_controller_only
from edgefleet.logging import configure_logging

PROG = "edgefleetctl"
# Each command group's module and the function that registers it, in --help's order; the
# commands each adds. A command line naming one loads that module alone.
GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("server", "register", ("init", "serve", "health")),
    ("keys", "register", ("keys",)),
    ("devices", "register_token", ("token",)),
    ("models", "register_models", ("models",)),
    ("models", "register_bundle", ("bundle",)),
    ("models", "register_agent_bundle", ("agent-bundle",)),
    ("rollouts", "register", ("rollout",)),
    ("devices", "register_devices", ("devices",)),
    ("access", "register_operator", ("operator", "operators")),
    ("access", "register_policy", ("policy",)),
    ("access", "register_tokens", ("tokens",)),
    ("audit", "register", ("audit",)),
)


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser, or (``command`` given) only its group's."""
    parser = argparse.ArgumentParser(prog=PROG, description="Operate an edgefleet controller.")
    add_common_options(parser)
    parser.add_argument("--config", type=Path, help=f"operator config file (env {CONFIG_ENV})")
    parser.add_argument("--controller", help="override the controller HOST:PORT of the config")
    commands = parser.add_subparsers(dest="command", required=True)
    add_completion_command(commands)
    for module, register, names in GROUPS:
        if command is None or command in names:
            group = importlib.import_module(f"edgefleet.controller.ctl.{module}")
            getattr(group, register)(commands)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command a command line names (its first word that is no option or option
    value), when it is one of ours: only its group needs loading. None otherwise (help,
    completion, a mistake: the whole parser answers those)."""
    first = argparse.ArgumentParser(add_help=False)
    for option in ("--config", "--controller"):
        first.add_argument(option)
    known, rest = first.parse_known_args(list(argv))
    words = [word for word in rest if not word.startswith("-")]
    names = {name for _, _, group in GROUPS for name in group}
    if not words or words[0] not in names or "-h" in rest or "--help" in rest:
        return None
    return words[0]


def _dispatch(args: argparse.Namespace) -> int:
    if not talks_to_the_controller_only(args.handler):
        configure_logging("console", "WARNING")  # `serve` switches to its own format
    return run_handler(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `edgefleetctl`."""
    given = sys.argv[1:] if argv is None else argv
    return run_command(PROG, _parser(_command_of(given)), argv, _dispatch)


if __name__ == "__main__":
    sys.exit(main())
