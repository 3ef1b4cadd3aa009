"""The `edgefleetctl` entry point, installed with every edgefleet package: on a gateway
(the agent alone, without the `controller` extra) it says what to install instead of
failing with a traceback or a usage error."""

from __future__ import annotations

import importlib.util
import os
import sys

# Imported only by the controller and the operator CLI (the `controller` extra).
CONTROLLER_ONLY = ("sqlalchemy", "alembic", "grpc_health", "grpc_reflection")


def _missing_controller_extra() -> str | None:
    """The first module of the `controller` extra this installation lacks, if any. Looked
    up before anything runs: the CLI imports server code only when a command needs it."""
    for name in CONTROLLER_ONLY:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except ModuleNotFoundError:
            return name
    return None


def _agent_only(name: str | None) -> int:
    print(
        f"edgefleetctl: error: this installation holds the agent only ({name} is "
        "missing): install the controller with pip install 'edgefleet[controller]'",
        file=sys.stderr,
    )
    return 1


def edgefleetctl() -> int:
    if "serve" not in sys.argv[1:]:
        # gRPC's core logs a failed TLS handshake to stderr by itself (before grpc is
        # imported, or not at all), beside the one line the command prints for it; the
        # server keeps gRPC's own log for its journal.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    missing = _missing_controller_extra()
    if missing is not None:
        return _agent_only(missing)
    try:
        from edgefleet.controller.ctl.main import main

        return main()
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in CONTROLLER_ONLY:
            raise
        return _agent_only(e.name)
