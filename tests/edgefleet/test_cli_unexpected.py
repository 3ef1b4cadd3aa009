"""An unexpected exception (a bug) is one line saying so and how to see more; --debug shows
the traceback. Ordinary mistakes have their own one-line messages (tests/attacks)."""

from __future__ import annotations

import argparse

import pytest

from edgefleet.cli_support import add_common_options, handled_by, run_command, run_handler


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tool")
    add_common_options(parser)
    commands = parser.add_subparsers(dest="command", required=True)

    def crash(args: argparse.Namespace) -> int:
        raise KeyError("slot\nsecond line")

    handled_by(commands.add_parser("crash"), crash)
    return parser


def test_a_bug_is_one_line_with_the_hint(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command("tool", _parser(), ["crash"], run_handler) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tool: error: unexpected KeyError: 'slot")
    assert err.endswith("(a bug: rerun with --debug for the traceback and report it)\n")


def test_debug_shows_the_traceback() -> None:
    with pytest.raises(KeyError):
        run_command("tool", _parser(), ["--debug", "crash"], run_handler)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        run_command("tool", _parser(), ["--version"], run_handler)
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("tool 0.")
