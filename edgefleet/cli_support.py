"""What both command-line tools share: `k=v` parsing, shell completion and the one-line
error exit."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

from edgefleet import __version__
from edgefleet.errors import ConfigError, EdgefleetError
from edgefleet.terminal import PrintableStream

if TYPE_CHECKING:
    from datetime import datetime

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


_RELATIVE = re.compile(r"^-(\d{1,6})([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
TIME_HELP = (
    "a time as journalctl takes it: 2026-11-29, 2026-11-29T14:00[:00][Z|+01:00], "
    "-30m, -1h, -2d, -1w, today, yesterday or now (UTC unless a zone is given)"
)


def time_bound(text: str, now: datetime | None = None) -> str:
    """argparse type for ``--since``/``--until``: an absolute date or time, a time
    relative to now (``-1h``), or ``today``/``yesterday``/``now``; returned as the
    ``YYYY-MM-DDTHH:MM:SSZ`` the audit trail stores. A bare date is its midnight, UTC."""
    from datetime import UTC, datetime, timedelta  # the commands that take times load it

    current = (now or datetime.now(UTC)).replace(microsecond=0)
    midnight = current.replace(hour=0, minute=0, second=0)
    word = text.strip().lower()
    named = {"now": current, "today": midnight, "yesterday": midnight - timedelta(days=1)}
    if word in named:
        moment = named[word]
    elif match := _RELATIVE.match(word):
        try:
            moment = current - timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])
        except OverflowError:
            raise argparse.ArgumentTypeError(f"{text!r} reaches before the year 1") from None
    else:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {TIME_HELP}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


TIME_OPTIONS = ("--since", "--until")


def _relative_times_joined(argv: Sequence[str]) -> list[str]:
    """``--since -1h`` as ``--since=-1h``: argparse would take ``-1h`` for an option."""
    joined: list[str] = []
    for token in argv:
        if joined and joined[-1] in TIME_OPTIONS and _RELATIVE.match(token.lower()):
            joined[-1] = f"{joined[-1]}={token}"
        else:
            joined.append(token)
    return joined


def split_ref(ref: str) -> tuple[str, str]:
    """``NAME@VERSION`` -> (name, version); ConfigError otherwise."""
    name, sep, version = ref.partition("@")
    if not sep or not name or not version:
        raise ConfigError(f"{ref!r} is not NAME@VERSION")
    return name, version


COMPLETION = "completion"
# shtab's shells (tests/deploy/test_completion.py checks); shtab loads only to print one.
COMPLETION_SHELLS = ("bash", "zsh", "tcsh")
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


class CommandGroup(NamedTuple):
    """Top-level commands one module of a CLI registers (its function ``register``), with
    the line ``--help`` shows for each: the module is imported only when a command line
    names one of them, and the CLI's own ``--help`` lists them from here."""

    module: str  # under the CLI's package
    register: str
    commands: Mapping[str, str]  # command -> its line in --help (the module passes it on)
    aliases: Mapping[str, tuple[str, ...]] = {}

    def names(self) -> set[str]:
        """Every word that runs one of its commands."""
        return {*self.commands, *(a for names in self.aliases.values() for a in names)}


def command_help(groups: Sequence[CommandGroup]) -> dict[str, str]:
    """Each command's line in --help, for the modules to register their parsers with."""
    return {name: text for group in groups for name, text in group.commands.items()}


def command_named(argv: Sequence[str], options_with_values: Sequence[str]) -> str:
    """The top-level command a command line names: its first word that is neither an
    option nor the value of one of the CLI's own options; "" when it names none (help,
    ``--version``, nothing at all)."""
    first = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    for option in options_with_values:
        first.add_argument(option)
    try:
        _, rest = first.parse_known_args(list(argv))
    except argparse.ArgumentError:  # e.g. an option without its value: the whole parser
        return ""  # says so, with the whole usage
    return next((word for word in rest if not word.startswith("-")), "")


def add_command_groups(
    commands: Subcommands, package: str, groups: Sequence[CommandGroup], named: str | None
) -> None:
    """Register the group of the command ``named`` alone; every group when ``named`` is
    None or `completion` (the whole parser); and when the command line names no command
    of ours (``--help``, a mistake: ``named`` is "" or unknown), only each command's name
    and line, importing no module — all that the top-level help and argparse's "invalid
    choice" need."""
    wanted = [group for group in groups if named in group.names()]
    if named is not None and named != COMPLETION and not wanted:
        for group in groups:
            for name, text in group.commands.items():
                aliases = group.aliases.get(name, ())
                commands.add_parser(name, aliases=aliases, help=text, add_help=False)
        return
    for group in wanted or groups:
        module = importlib.import_module(f"{package}.{group.module}")
        getattr(module, group.register)(commands)


def add_completion_command(commands: Subcommands) -> None:
    """`completion bash|zsh|tcsh`: print a completion script generated from the parser."""
    completion = commands.add_parser(
        COMPLETION, help="print a shell completion script (e.g. > /etc/bash_completion.d/NAME)"
    )
    completion.add_argument("shell", choices=COMPLETION_SHELLS)


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--version`` and ``--debug``, on both command-line tools."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of an unexpected error"
    )


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
    args = parser.parse_args(_relative_times_joined(sys.argv[1:] if argv is None else argv))
    if getattr(args, "command", None) == COMPLETION:
        import shtab

        print(shtab.complete(parser, shell=args.shell))
        return 0
    try:
        return dispatch(args)
    except EdgefleetError as e:
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
    except Exception as e:
        # A bug, not a mistake of the user's: one line saying so, the traceback on request.
        if getattr(args, "debug", False):
            raise
        reason = str(e).splitlines()[0][:300] if str(e) else ""
        print(
            f"{prog}: error: unexpected {type(e).__name__}{': ' + reason if reason else ''} "
            f"(a bug: rerun with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
