"""What both command-line tools share: `k=v` parsing, shell completion and the one-line
error exit."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

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


MAX_UINT63 = 2**63 - 1


def positive_int(text: str) -> int:
    """argparse type for a count, an id or a number of seconds: 1 or more (what a protobuf
    field holds); 0 is refused rather than silently meaning a default."""
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from e
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not 1 or more")
    if value > MAX_UINT63:
        raise argparse.ArgumentTypeError(f"{text} is too large")
    return value


def output_file(text: str) -> Path:
    """argparse type for a file to write: its folder must exist, and it is no folder."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder: name a file to write")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder of {text} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write in the folder of {text}")
    return path


def split_ref(ref: str) -> tuple[str, str]:
    """``NAME@VERSION`` -> (name, version); ConfigError otherwise."""
    name, sep, version = ref.partition("@")
    if not sep or not name or not version:
        raise ConfigError(f"{ref!r} is not NAME@VERSION")
    return name, version


COMPLETION = "completion"
Handler = Callable[[argparse.Namespace], int]
# What a command module's ``register`` is given: the subcommands of its parent parser.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def handled_by(parser: argparse.ArgumentParser, handler: Handler) -> argparse.ArgumentParser:
    """Register what runs when this (sub)command is given, beside its arguments: every
    command module of both CLIs adds its parsers and their handlers together."""
    parser.set_defaults(handler=handler)
    return parser


def run_handler(args: argparse.Namespace) -> int:
    """Run the handler the parsed (sub)command registered with :func:`handled_by`."""
    handler: Handler = args.handler
    return handler(args)


def add_completion_command(commands: Subcommands) -> None:
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
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        # A path on the command line that cannot be read or written: one line, no traceback.
        print(f"{prog}: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        # The reader went away (`… | head`): stop quietly, as Unix tools do, and keep the
        # interpreter from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
