"""What both command-line tools share: `k=v` parsing, shell completion and the one-line
error exit."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import shtab
import structlog

from edgefleet.errors import ConfigError, EdgefleetError
from edgefleet.terminal import PrintableStream

EXIT_FAILURE = 1
PRIVATE_UMASK = 0o077


def key_value(text: str) -> tuple[str, str]:
    """argparse type for ``key=value``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    return key, value


def split_ref(ref: str) -> tuple[str, str]:
    """``NAME@VERSION`` -> (name, version); ConfigError otherwise."""
    name, sep, version = ref.partition("@")
    if not sep or not name or not version:
        raise ConfigError(f"{ref!r} is not NAME@VERSION")
    return name, version


COMPLETION = "completion"


def add_completion_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`completion bash|zsh|tcsh`: print a completion script generated from the parser."""
    completion = commands.add_parser(
        COMPLETION, help="print a shell completion script (e.g. > /etc/bash_completion.d/NAME)"
    )
    completion.add_argument("shell", choices=shtab.SUPPORTED_SHELLS)


def run_command(
    prog: str,
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    dispatch: Callable[[argparse.Namespace], int],
) -> int:
    """Parse, run, and turn any edgefleet error into ``prog: error: reason`` and exit 1.

    Everything the command prints goes through `PrintableStream`: names and reasons from
    devices, model files and policies may hold terminal escape sequences. Files and
    folders it creates are private (umask 077)."""
    if not isinstance(sys.stdout, PrintableStream):
        sys.stdout = PrintableStream(sys.stdout)
        sys.stderr = PrintableStream(sys.stderr)
    # Databases, keys, audit logs and data directories are this user's alone, however the
    # command was started (the systemd unit sets UMask=0077; a shell usually 0022).
    os.umask(PRIVATE_UMASK)
    args = parser.parse_args(argv)
    if getattr(args, "command", None) == COMPLETION:
        print(shtab.complete(parser, shell=args.shell))
        return 0
    try:
        return dispatch(args)
    except EdgefleetError as e:
        structlog.get_logger(prog).debug("command.failed", error=type(e).__name__)
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`… | head`): stop quietly, as Unix tools do, and keep the
        # interpreter from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
