"""One CLI structure for both tools: every command a user can type has the handler its
module registered beside its arguments (``edgefleet.cli_support.handled_by``); there is
no dispatch table to forget."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from edgefleet.agent.cli import GROUPS as AGENT_GROUPS
from edgefleet.agent.cli.main import _parser as agent_parser
from edgefleet.cli_support import COMPLETION
from edgefleet.controller.ctl import GROUPS as CTL_GROUPS
from edgefleet.controller.ctl.main import _parser as ctl_parser


def _leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield path, parser
        return
    for group in groups:
        for name, child in group.choices.items():
            yield from _leaves(child, (*path, name))


@pytest.mark.parametrize("make", [ctl_parser, agent_parser], ids=["edgefleetctl", "agent"])
def test_every_command_has_its_handler(make: object) -> None:
    leaves = list(_leaves(make()))
    assert len(leaves) > 8
    missing = [
        " ".join(path)
        for path, parser in leaves
        if path[0] != COMPLETION and not callable(parser.get_default("handler"))
    ]
    assert not missing


def test_operator_client_commands_do_not_load_the_server() -> None:
    """`edgefleetctl devices list` parses and finds its handler without importing the
    store, the rollout engine or the service (they load only for `serve`, `init`…)."""
    import subprocess
    import sys

    code = (
        "import sys; from edgefleet.controller.ctl.main import _parser; "
        "_parser().parse_args(['devices', 'list']); "
        "print(sorted(m for m in sys.modules if m.startswith(('edgefleet.controller.app.service', "
        "'edgefleet.controller.store', 'edgefleet.controller.rollouts.engine', "
        "'sqlalchemy', 'alembic'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


SERVER_SIDE = ("sqlalchemy", "alembic", "aiohttp", "apscheduler", "llama_cpp", "structlog")


def _modules_loaded(*argv: str) -> set[str]:
    """Every module a command line imports, through to its failure on a config that does
    not exist (after the client has loaded: that is where a client verb's cost is)."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], capture_output=True, text=True
    )
    return {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.mark.parametrize(
    "verb",
    [("devices", "list"), ("rollout", "list"), ("audit", "query"), ("policy", "show")],
    ids=" ".join,
)
def test_a_client_verb_loads_no_server_code_and_no_logging(verb: tuple[str, ...]) -> None:
    """Issue 21: client verbs import what a client needs (the client, gRPC, protobuf),
    not SQLAlchemy, Alembic, aiohttp, APScheduler or llama.cpp; they print and do not log,
    so structlog is not loaded either."""
    command = ("-m", "edgefleet.controller.ctl.main", "--config", "/nonexistent.toml", *verb)
    loaded = _modules_loaded(*command)
    assert "edgefleet.controller.ctl.client" in loaded  # the verb got as far as the client
    assert {m.split(".")[0] for m in loaded} & set(SERVER_SIDE) == set()
    assert not [m for m in loaded if m.startswith("edgefleet.controller.store")]


@pytest.mark.parametrize(
    "entry", ["edgefleet.controller.ctl.main", "edgefleet.agent.cli.main"], ids=["ctl", "agent"]
)
def test_help_loads_no_command_s_dependencies(entry: str) -> None:
    """`--help` loads no command module (it lists each command from the CLI's table of
    groups), let alone gRPC, protobuf, SQLAlchemy or cryptography."""
    loaded = _modules_loaded("-m", entry, "--help")
    assert {m.split(".")[0] for m in loaded} & {
        *SERVER_SIDE,
        "grpc",
        "google",
        "cryptography",
    } == set()
    groups = CTL_GROUPS if "controller" in entry else AGENT_GROUPS
    package = entry.rsplit(".", 1)[0]
    assert loaded & {f"{package}.{group.module}" for group in groups} == set()


@pytest.mark.parametrize("make", [ctl_parser, agent_parser], ids=["edgefleetctl", "agent"])
def test_help_from_the_table_is_the_help_of_the_commands(make: object) -> None:
    """What `--help` lists without loading the commands (names, aliases, lines) is what
    the loaded commands register: one table is the source of both."""
    assert callable(make)
    assert make("").format_help() == make().format_help()


@pytest.mark.parametrize(
    ("make", "command", "group"),
    [(ctl_parser, "devices", {"devices"}), (agent_parser, "status", {"run", "status"})],
    ids=["edgefleetctl", "agent"],
)
def test_a_named_command_loads_its_group_alone(make: object, command: str, group: set[str]) -> None:
    assert callable(make)
    handled = {path[0] for path, parser in _leaves(make(command)) if parser.get_default("handler")}
    assert handled == group


def test_an_option_missing_its_value_is_left_to_the_whole_parser() -> None:
    """`edgefleetctl --config` names no command: the whole parser answers, with the whole
    usage, not the pre-parser that looks for the command."""
    from edgefleet.cli_support import command_named

    assert command_named(["--config"], ["--config"]) == ""
    assert command_named(["--config", "x.toml", "devices", "list"], ["--config"]) == "devices"
